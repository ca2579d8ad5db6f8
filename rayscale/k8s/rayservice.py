"""The RayService: a head without GPUs, one-GPU workers, KubeRay's Serve Service and our ingress Service.

With the default ingress (``direct``) clients reach rayscale's HAProxy on the head pod through
the ``rayscale-ingress`` Service; with ``proxy``, KubeRay's Serve Service fronts Serve's proxies
on the workers.
"""

from __future__ import annotations

from typing import Any

from rayscale.config import ServeConfig
from rayscale.k8s.blocks import (
    GRPC_PORT,
    GRPC_PORT_NAME,
    MODELS_MOUNT,
    MODELS_PVC,
    RAY_METRICS_PORT,
    RAY_NODE_HEALTH_PORT,
    RAY_USER,
    RAY_VERSION,
    SERVE_PORT,
    SERVE_PORT_NAME,
    container_port,
    gpu_tolerations,
    labels,
    meta,
    resources,
    shm_volume,
    volume_pvc,
    wait_for_model,
)
from rayscale.k8s.exporters import EXPORTER_PORT
from rayscale.k8s.ray_head import ray_head
from rayscale.k8s.serve_config import serve_config_v2
from rayscale.k8s.sizing import WORKER_MEMORY, head_cpus, worker_cpus_for

__all__ = [
    "HEAD_SELECTOR",
    "INGRESS_SERVICE_NAME",
    "RAYSERVICE_NAME",
    "SERVE_SERVICE_NAME",
    "ingress_service",
    "rayservice",
    "serve_url",
]

RAYSERVICE_NAME = "rayscale"
SERVE_SERVICE_NAME = "rayscale-serve-svc"  # KubeRay's Serve Service (named by us)
INGRESS_SERVICE_NAME = "rayscale-ingress"  # ours: the head pod's HAProxy (ingress "direct")


def _worker_readiness(serve: ServeConfig) -> dict[str, Any]:
    timing = {"initialDelaySeconds": 10, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 10}
    if serve.ingress == "direct":
        # No Serve proxy on the workers: the pod is ready when its Ray node is. (Left unset, KubeRay
        # would add a check of Serve's proxy on port 8000, which never passes here.)
        return {"httpGet": {"path": "/api/healthz", "port": RAY_NODE_HEALTH_PORT}, **timing}
    # Serve's proxy answers /-/healthz once it can route; KubeRay adds the matching liveness probe.
    return {"httpGet": {"path": "/-/healthz", "port": SERVE_PORT}, **timing}


def _serve_service(serve: ServeConfig) -> dict[str, Any]:
    """KubeRay's Serve Service (KubeRay always creates one for a RayService and sets its selector).

    With "direct" it targets the head's named ports, which no worker declares, so only the head
    can be an endpoint: KubeRay adds it when the head answers Serve's health check (/-/healthz).
    """
    metadata = {"name": SERVE_SERVICE_NAME, "labels": labels("rayscale", "serve")}
    if serve.ingress != "direct":
        return {"metadata": metadata, "spec": {"type": "ClusterIP", "ports": [{"name": "serve", "port": SERVE_PORT, "targetPort": SERVE_PORT}]}}
    # KubeRay keeps only ports named "serve" or "serve-*" in its Serve Service.
    return {"metadata": metadata, "spec": {"type": "ClusterIP", "ports": _ingress_ports(SERVE_PORT_NAME, GRPC_PORT_NAME)}}


def _ingress_ports(http_name: str = "http", grpc_name: str = "grpc") -> list[dict[str, Any]]:
    # Named target ports: only the head container declares them, so no worker is ever an endpoint.
    return [
        {"name": http_name, "port": SERVE_PORT, "targetPort": SERVE_PORT_NAME, "protocol": "TCP"},
        {"name": grpc_name, "port": GRPC_PORT, "targetPort": GRPC_PORT_NAME, "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
    ]


# KubeRay labels every Ray pod with its node type; the rest are the head template's own labels,
# which the RayJob's cluster ("rayscale-bench") does not share. A RayService's RayCluster name
# (ray.io/cluster) carries a random suffix, so it cannot be part of a fixed selector.
HEAD_SELECTOR = {"ray.io/node-type": "head", "app.kubernetes.io/name": "rayscale", "app.kubernetes.io/component": "ray-head"}


def ingress_service(namespace: str) -> dict[str, Any]:
    """The clients' way in with the default ingress: the head pod's HAProxy, HTTP and gRPC (h2c)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(INGRESS_SERVICE_NAME, namespace, "ingress"),
        "spec": {"type": "ClusterIP", "selector": dict(HEAD_SELECTOR), "ports": _ingress_ports()},
    }


def serve_url(serve: ServeConfig) -> str:
    """Where clients inside the cluster reach the app over HTTP."""
    service = INGRESS_SERVICE_NAME if serve.ingress == "direct" else SERVE_SERVICE_NAME
    return f"http://{service}:{SERVE_PORT}"


def rayservice(image: str, namespace: str, serve: ServeConfig, workers: int) -> dict[str, Any]:
    """The RayService running ``serve`` (as in the pod) on ``workers`` one-GPU workers."""
    direct = serve.ingress == "direct"
    models_ro = {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}
    models_volume = volume_pvc("models", MODELS_PVC, read_only=True)
    head = ray_head(
        image,
        namespace_labels=labels("rayscale", "ray-head"),
        mounts=[models_ro],
        volumes=[models_volume],
        exporters=True,
        grpc=direct,
        cpus=head_cpus(serve, workers),
    )
    # With "direct" the replica processes listen on the pod IP on ephemeral ports (HAProxy on the
    # head reaches them there, with a token): no fixed port of theirs to declare.
    worker_ports = [] if direct else [container_port("serve", SERVE_PORT)]
    worker = {
        "groupName": "gpu",
        "replicas": workers,
        "minReplicas": workers,
        "maxReplicas": workers,
        "rayStartParams": {"metrics-export-port": str(RAY_METRICS_PORT)},
        "template": {
            "metadata": {"labels": labels("rayscale", "gpu-worker")},
            "spec": {
                "securityContext": dict(RAY_USER),
                "initContainers": [wait_for_model(image)],
                "containers": [
                    {
                        "name": "ray-worker",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "ports": [
                            *worker_ports,
                            container_port("metrics", RAY_METRICS_PORT),
                            container_port("exporter", EXPORTER_PORT),
                        ],
                        "resources": resources(worker_cpus_for(serve), WORKER_MEMORY, gpus=1),
                        "readinessProbe": _worker_readiness(serve),
                        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, models_ro],
                    }
                ],
                "tolerations": gpu_tolerations(),
                "volumes": [shm_volume(), models_volume],
            },
        },
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": meta(RAYSERVICE_NAME, namespace, "serve"),
        "spec": {
            "serveConfigV2": serve_config_v2(serve),
            # proxy: traffic goes to the GPU workers' proxies, not through the head. direct: the
            # head is where HAProxy listens, so KubeRay may put it behind its Serve Service.
            "excludeHeadPodFromServeSvc": not direct,
            "serveService": _serve_service(serve),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": False,
                "headGroupSpec": head,
                "workerGroupSpecs": [worker],
            },
        },
    }


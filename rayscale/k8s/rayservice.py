"""The RayService: a head without GPUs, one-GPU workers, KubeRay's Serve Service and our ingress Service.

With the default ingress (``direct``) every GPU worker pod runs its own rayscale HAProxy (started
by its replicas) and clients reach them through the ``rayscale-ingress`` Service, which selects
every serving pod whose ingress answers ``/-/healthz``; with ``proxy``, KubeRay's Serve Service
fronts Serve's proxies on the workers. The head holds no replica, so it serves nothing.
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
from rayscale.k8s.sizing import WORKER_MEMORY, worker_cpus_for

__all__ = [
    "HEALTH_PATH",
    "INGRESS_SERVICE_NAME",
    "RAYSERVICE_NAME",
    "SERVE_SERVICE_NAME",
    "SERVING_SELECTOR",
    "ingress_service",
    "rayservice",
    "serve_url",
]

RAYSERVICE_NAME = "rayscale"
SERVE_SERVICE_NAME = "rayscale-serve-svc"  # KubeRay's Serve Service (named by us)
INGRESS_SERVICE_NAME = "rayscale-ingress"  # ours: every serving pod's HAProxy (ingress "direct")
HEALTH_PATH = "/-/healthz"  # 200 while the pod's ingress has a ready replica to route to, 503 otherwise

# Pods that serve: KubeRay labels a RayService's pods ray.io/serve, "true" on every worker (their
# readiness probe gates traffic) and, on the head, "true" only while excludeHeadPodFromServeSvc is
# false and the head answers /-/healthz. The template's own labels keep out any other RayService
# in the namespace; the benchmark RayJob's pods never carry ray.io/serve. The RayService's
# RayCluster name (ray.io/cluster) carries a random suffix, so it cannot be part of a fixed selector.
SERVING_SELECTOR = {"ray.io/serve": "true", "app.kubernetes.io/name": "rayscale", "app.kubernetes.io/part-of": "rayscale"}


def _worker_readiness() -> dict[str, Any]:
    # The pod's ingress (rayscale's HAProxy, or Serve's proxy) answers /-/healthz itself, without a
    # token: a failing pod leaves the Services' endpoints after two misses (~4 s) and joins again at
    # the first success. Set here, KubeRay adds no readiness probe of its own; it still adds the
    # liveness probe on the Ray node's health.
    return {
        "httpGet": {"path": HEALTH_PATH, "port": SERVE_PORT_NAME},
        "initialDelaySeconds": 10,
        "periodSeconds": 2,
        "timeoutSeconds": 2,
        "successThreshold": 1,
        "failureThreshold": 2,
    }


def _worker_ports(serve: ServeConfig) -> list[dict[str, Any]]:
    # Named as KubeRay names Serve's ports ("serve", "serve-*"): the Services target them by name.
    if serve.ingress == "direct":
        return [container_port(SERVE_PORT_NAME, SERVE_PORT), container_port(GRPC_PORT_NAME, GRPC_PORT)]
    return [container_port(SERVE_PORT_NAME, SERVE_PORT)]


def _serve_service(serve: ServeConfig) -> dict[str, Any]:
    """KubeRay's Serve Service (KubeRay always creates one for a RayService and sets its selector).

    It selects the serving cluster's pods labelled ray.io/serve=true, the same pods as
    rayscale-ingress but of the active cluster only, so the RayService counts them as its serve
    endpoints. KubeRay keeps only ports named "serve" or "serve-*" (before KubeRay 1.6: "serve" alone).
    """
    metadata = {"name": SERVE_SERVICE_NAME, "labels": labels("rayscale", "serve")}
    if serve.ingress != "direct":
        return {
            "metadata": metadata,
            "spec": {"type": "ClusterIP", "ports": [{"name": "serve", "port": SERVE_PORT, "targetPort": SERVE_PORT}]},
        }
    return {"metadata": metadata, "spec": {"type": "ClusterIP", "ports": _ingress_ports(SERVE_PORT_NAME, GRPC_PORT_NAME)}}


def _ingress_ports(http_name: str = "http", grpc_name: str = "grpc") -> list[dict[str, Any]]:
    return [
        {"name": http_name, "port": SERVE_PORT, "targetPort": SERVE_PORT_NAME, "protocol": "TCP"},
        {
            "name": grpc_name,
            "port": GRPC_PORT,
            "targetPort": GRPC_PORT_NAME,
            "protocol": "TCP",
            "appProtocol": "kubernetes.io/h2c",
        },
    ]


def ingress_service(namespace: str) -> dict[str, Any]:
    """The clients' way in with the default ingress: every ready serving pod's HAProxy, HTTP and gRPC (h2c)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(INGRESS_SERVICE_NAME, namespace, "ingress"),
        "spec": {"type": "ClusterIP", "selector": dict(SERVING_SELECTOR), "ports": _ingress_ports()},
    }


def serve_url(serve: ServeConfig) -> str:
    """Where clients inside the cluster reach the app over HTTP."""
    service = INGRESS_SERVICE_NAME if serve.ingress == "direct" else SERVE_SERVICE_NAME
    return f"http://{service}:{SERVE_PORT}"


def rayservice(image: str, namespace: str, serve: ServeConfig, workers: int) -> dict[str, Any]:
    """The RayService running ``serve`` (as in the pod) on ``workers`` one-GPU workers."""
    models_ro = {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}
    models_volume = volume_pvc("models", MODELS_PVC, read_only=True)
    head = ray_head(
        image,
        namespace_labels=labels("rayscale", "ray-head"),
        mounts=[models_ro],
        volumes=[models_volume],
        exporters=True,
    )
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
                            *_worker_ports(serve),
                            container_port("metrics", RAY_METRICS_PORT),
                            container_port("exporter", EXPORTER_PORT),
                        ],
                        "resources": resources(worker_cpus_for(serve), WORKER_MEMORY, gpus=1),
                        "readinessProbe": _worker_readiness(),
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
            # The head has no GPU, so no replica and no ingress: it never serves. A head given GPUs
            # (and replicas) would set this to false and declare the serve ports; KubeRay then labels
            # it serving while it answers /-/healthz.
            "excludeHeadPodFromServeSvc": True,
            "serveService": _serve_service(serve),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": False,
                "headGroupSpec": head,
                "workerGroupSpecs": [worker],
            },
        },
    }

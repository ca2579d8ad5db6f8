"""Kubernetes manifests for a GPU cluster with the KubeRay operator, sized like a local sweep point.

``render_manifests(replicas=N)`` returns the objects ``kubectl apply -k k8s/overlays/<N>gpu``
creates (the files under ``k8s/`` are these objects with comments; tests/test_k8s.py keeps the
two equal):

* ``Namespace``, two ``PersistentVolumeClaim``s: the exported model and the benchmark results;
* a ``Job`` that exports the model once into the model volume (never into git or the image);
* a ``RayService``: a head without GPUs and ``ceil(N / replicas_per_gpu)`` one-GPU workers
  running the application builder ``rayscale.serve.app:build_app`` with ``ServeConfig`` args;
* with the default ingress (``direct``), a ``Service`` ``rayscale-ingress`` in front of the
  head pod, where rayscale's HAProxy listens (8000 HTTP, 8001 gRPC) and routes to the replica
  processes' own servers on the GPU workers; with ``proxy``, KubeRay's Serve Service in front of
  Serve's proxies on the workers;
* a Triton ``Deployment`` + ``Service`` serving the same ONNX file on the same number of GPUs;
* a ``RayJob`` that sweeps concurrency against the RayService and writes a results file;
* monitoring: ``PodMonitor``/``ServiceMonitor`` objects and the Grafana dashboard ``ConfigMap``.

Every Service is ClusterIP: nothing is reachable from outside the cluster unless the user
port-forwards. The Ray dashboard and job API (8265) are never put behind a Service of ours.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any


from rayscale import __version__
from rayscale.config import MODEL_NAME, ServeConfig
from rayscale.errors import ConfigError
from rayscale.files import write_text_atomic

__all__ = [
    "BENCH_CONCURRENCY",
    "DEFAULT_IMAGE",
    "MONITORING_KINDS",
    "RAY_IMAGE",
    "RAY_VERSION",
    "TRITON_IMAGE",
    "K8S_INGRESSES",
    "gpu_workers_for",
    "keep_node_exporters",
    "packaged_dashboard",
    "render_manifests",
    "worker_cpus_for",
    "write_manifests",
]

log = logging.getLogger(__name__)

RAY_VERSION = "2.60.0"
RAY_IMAGE = f"rayproject/ray:{RAY_VERSION}-py311-gpu"  # the base of k8s/Dockerfile
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51
DEFAULT_IMAGE = f"rayscale:{__version__}"
DEFAULT_NAMESPACE = "rayscale"

SERVE_APP_IMPORT_PATH = "rayscale.serve.app:build_app"
RAYSERVICE_NAME = "rayscale"
SERVE_SERVICE_NAME = "rayscale-serve-svc"  # KubeRay's Serve Service (named by us)
INGRESS_SERVICE_NAME = "rayscale-ingress"  # ours: the head pod's HAProxy (ingress "direct")
TRITON_NAME = "triton"
MODELS_PVC = "rayscale-models"
RESULTS_PVC = "rayscale-results"
MODELS_MOUNT = "/models"
RESULTS_MOUNT = "/results"
MODEL_DIR_IN_POD = f"{MODELS_MOUNT}/{MODEL_NAME}"
MODEL_REPOSITORY = "/model_repository"

SERVE_PORT = 8000
GRPC_PORT = 8001
# The head container's names for them: KubeRay's conventions ("serve", "serve-*") for Serve's ports.
SERVE_PORT_NAME, GRPC_PORT_NAME = "serve", "serve-grpc"
RAY_NODE_HEALTH_PORT = 52365  # Ray's dashboard agent: /api/healthz answers for the node (Ray ≥ 2.53)
DASHBOARD_PORT = 8265
RAY_METRICS_PORT = 8080
EXPORTER_PORT = 9400  # rayscale.metrics exporter actors: GPU metrics per node, serving statistics on the head
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}

BENCH_CONCURRENCY = (1, 4, 16, 64, 128, 256)
BENCH_IMAGES_PER_REQUEST = 32
MONITORING_KINDS = ("PodMonitor", "ServiceMonitor", "ConfigMap")

# Ingresses the manifests run: "direct" (rayscale's HAProxy on the head, the default) or "proxy"
# (Serve's proxy on every worker). Serve's own HAProxy mode ("haproxy") is not offered here.
K8S_INGRESSES = ("direct", "proxy")

# One GPU worker pod: a CPU for each replica process it holds (Ray schedules them by CPU too) plus
# this much for the raylet, the dashboard agent, the exporter and, with "proxy", Serve's proxy.
WORKER_HEADROOM_CPUS = 4
WORKER_MEMORY = "32Gi"
HEAD_CPUS = 4  # GCS, dashboard, Serve controller; the default ingress adds a core per GPU worker
RAY_USER = {"runAsUser": 1000, "runAsGroup": 100, "fsGroup": 100}  # the ray user of rayproject/ray

_DASHBOARD_SOURCE = Path(__file__).resolve().parent.parent / "dashboards" / "rayscale.json"
_DASHBOARD_KEY = "rayscale.json"
DASHBOARD_FILE = "rayscale-dashboard.json"  # the copy kustomize reads (it cannot read outside its root)


# ---------------------------------------------------------------------------------------- sizing


def gpu_workers_for(replicas: int, gpus_per_replica: float) -> int:
    """GPU worker pods (one GPU each) that fit ``replicas`` Serve replicas of ``gpus_per_replica``.

    Equal to ``ceil(replicas * gpus_per_replica)`` whenever ``1 / gpus_per_replica`` is a whole
    number (1, 0.5, 0.25...); otherwise replicas do not pack exactly and the count is rounded up
    so that every replica has a place (0.4 GPU: two replicas per GPU, not two and a half).
    """
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ConfigError(f"replicas must be an integer ≥ 1, got {replicas!r}")
    if not 0 < gpus_per_replica <= 1:
        raise ConfigError(
            f"gpus_per_replica must be in (0, 1] on Kubernetes (each worker pod has one GPU), got {gpus_per_replica:g}"
        )
    per_gpu = math.floor(1 / gpus_per_replica + 1e-9)
    return math.ceil(replicas / per_gpu)


def worker_cpus_for(serve: ServeConfig) -> int:
    """CPUs of one GPU worker pod: every replica process that fits on its GPU, plus headroom.

    ``processes_per_replica`` auto is 4 processes per GPU, each reserving ``cpus_per_replica``.
    """
    replicas_per_gpu = math.floor(1 / serve.gpus_per_replica + 1e-9)
    processes = replicas_per_gpu * serve.resolved().processes_per_replica
    return math.ceil(processes * serve.cpus_per_replica - 1e-9) + WORKER_HEADROOM_CPUS


def _head_cpus(serve: ServeConfig, workers: int) -> int:
    # With "direct", every request crosses HAProxy on the head, in and out: a core per GPU worker.
    return HEAD_CPUS + (workers if serve.ingress == "direct" else 0)


def _serve_config(serve: ServeConfig | None, replicas: int, gpus_per_replica: float) -> ServeConfig:
    serve = serve or ServeConfig()
    if serve.api_token:
        raise ConfigError(
            "api_token would be stored in plain text in the RayService: leave it unset "
            "(the Services are ClusterIP, reachable only inside the cluster)"
        )
    if serve.ingress not in K8S_INGRESSES:
        raise ConfigError(f"ingress must be one of {', '.join(K8S_INGRESSES)} on Kubernetes, got {serve.ingress!r}")
    # In the pod: the model volume's path, CUDA or a loud failure (never a silent CPU fallback), and
    # 0.0.0.0 because a ClusterIP Service fronts the ingress (HAProxy on the head, or Serve's proxies
    # on the workers) and the pod IP is not reachable otherwise: the pod network is the boundary.
    return dataclasses.replace(
        serve,
        model_dir=MODEL_DIR_IN_POD,
        replicas=replicas,
        gpus_per_replica=float(gpus_per_replica),
        host="0.0.0.0",
        port=SERVE_PORT,
        grpc_port=GRPC_PORT,
        provider="cuda",
    )


EXPORTER_KEEPER_COMMAND = (
    "nohup python -c 'from rayscale.k8s import keep_node_exporters; keep_node_exporters()' "
    ">/tmp/rayscale-exporters.log 2>&1 &"
)


def keep_node_exporters(
    *, port: int = EXPORTER_PORT, app_name: str = "rayscale", interval_s: float = 30.0, rounds: int | None = None
) -> int:
    """Keep an exporter actor on every node of the local Ray cluster; returns the exporters last seen.

    Runs on the head pod: joins the Ray node started there (waiting for it), then calls
    ``start_node_exporters`` every ``interval_s`` so that workers that join or restart later get
    theirs too (it reuses running ones). The exporters listen on the pod IP because Prometheus
    scrapes them there; they serve metrics only. ``rounds=None`` runs until the pod stops.
    """
    import time

    import ray

    from rayscale.metrics import EXPORTER_NAMESPACE, start_node_exporters

    while not ray.is_initialized():
        try:
            ray.init(address="auto", namespace=EXPORTER_NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError):
            time.sleep(5)
    count, done = 0, 0
    while rounds is None or done < rounds:
        try:
            count = len(start_node_exporters(host="0.0.0.0", port=port, app_name=app_name))
        except Exception as e:  # a node going away mid-call: try again next round
            log.warning("starting node exporters failed: %s", e)
        done += 1
        if rounds is None or done < rounds:
            time.sleep(interval_s)
    return count


def proxy_env_vars() -> dict[str, str]:
    from rayscale.serve.app import proxy_env_vars as serve_proxy_env_vars

    return serve_proxy_env_vars()


def serve_config_v2(serve: ServeConfig) -> str:
    """The RayService's ``serveConfigV2``: a Serve config file (YAML; JSON is valid YAML)."""
    if serve.ingress == "direct":
        # No Serve proxy: the first replica starts rayscale's HAProxy on the head (the Ingress actor),
        # listening on host:port and host:grpc_port, so Serve must leave port 8000 free there.
        head: dict[str, Any] = {"proxy_location": "Disabled"}
    else:
        head = {
            "proxy_location": "EveryNode",
            "http_options": {"host": serve.host, "port": serve.port},
            # Serve's proxy answers its own errors (queue full, timeout, dead replica) in the protocol's JSON.
            "controller_options": {"runtime_env": {"env_vars": proxy_env_vars()}},
        }
    config = {
        **head,
        "applications": [
            {
                "name": serve.app_name,
                "route_prefix": serve.route_prefix,
                "import_path": SERVE_APP_IMPORT_PATH,
                "args": serve.to_dict(),
            }
        ],
    }
    return _dump(config)


# ------------------------------------------------------------------------------- building blocks


def _labels(name: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component, "app.kubernetes.io/part-of": "rayscale"}


def _meta(name: str, namespace: str, component: str, app: str = "rayscale") -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": _labels(app, component)}


def _pvc(name: str, namespace: str, size: str, component: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(name, namespace, component),
        # ReadWriteMany: one pod writes, pods on other nodes read. Needs a storage class that offers it.
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": size}}},
    }


def _volume_pvc(name: str, claim: str, read_only: bool) -> dict[str, Any]:
    return {"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}


def _shm_volume() -> dict[str, Any]:
    # Ray's object store and Triton's shared memory live in /dev/shm; a container's default is 64 MiB.
    return {"name": "dshm", "emptyDir": {"medium": "Memory"}}


def _wait_for_model(image: str) -> dict[str, Any]:
    """An init container that holds a pod until the export Job has written model.json."""
    return {
        "name": "wait-for-model",
        "image": image,
        "command": [
            "sh",
            "-c",
            f"until [ -f {MODEL_DIR_IN_POD}/model.json ]; do "
            f"echo 'waiting for the rayscale-export Job to write {MODEL_DIR_IN_POD}'; sleep 10; done",
        ],
        "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "128Mi"}},
    }


def _gpu_tolerations() -> list[dict[str, Any]]:
    # GPU node pools are usually tainted so that only pods asking for GPUs land there.
    return [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def _resources(cpu: int | str, memory: str, gpus: int = 0) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": str(cpu), "memory": memory}
    if gpus:
        amounts["nvidia.com/gpu"] = gpus
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _port(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "containerPort": port, "protocol": "TCP"}


def _ray_head(image: str, *, namespace_labels: dict[str, str], mounts: list[dict[str, Any]],
              volumes: list[dict[str, Any]], exporters: bool = False, grpc: bool = False, cpus: int = HEAD_CPUS) -> dict[str, Any]:
    ports = [
        _port("gcs", 6379),
        _port("dashboard", DASHBOARD_PORT),
        _port("client", 10001),
        _port(SERVE_PORT_NAME, SERVE_PORT),
        *([_port(GRPC_PORT_NAME, GRPC_PORT)] if grpc else []),
        _port("metrics", RAY_METRICS_PORT),
    ]
    extra: dict[str, Any] = {}
    if exporters:
        ports.append(_port("exporter", EXPORTER_PORT))
        # KubeRay owns the container's command (`ray start`); the exporter keeper runs beside it,
        # in the same container so that it joins the local Ray node.
        extra["lifecycle"] = {"postStart": {"exec": {"command": ["sh", "-c", EXPORTER_KEEPER_COMMAND]}}}
    return {
        "rayStartParams": {
            "num-gpus": "0",
            # The operator deploys serveConfigV2 and submits jobs through the dashboard on the
            # head Service (ClusterIP, created by KubeRay), so it listens on the pod IP; no Service
            # of ours exposes it, and nothing reaches it from outside the cluster.
            "dashboard-host": "0.0.0.0",
            "metrics-export-port": str(RAY_METRICS_PORT),
        },
        "template": {
            "metadata": {"labels": namespace_labels},
            "spec": {
                "securityContext": dict(RAY_USER),
                "containers": [
                    {
                        "name": "ray-head",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "ports": ports,
                        "resources": _resources(cpus, "16Gi"),
                        "readinessProbe": {
                            "httpGet": {"path": "/api/gcs_healthz", "port": DASHBOARD_PORT},
                            "initialDelaySeconds": 10,
                            "periodSeconds": 5,
                            "timeoutSeconds": 2,
                            "failureThreshold": 10,
                        },
                        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, *mounts],
                        **extra,
                    }
                ],
                "volumes": [_shm_volume(), *volumes],
            },
        },
    }


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
    meta = {"name": SERVE_SERVICE_NAME, "labels": _labels("rayscale", "serve")}
    if serve.ingress != "direct":
        return {"metadata": meta, "spec": {"type": "ClusterIP", "ports": [{"name": "serve", "port": SERVE_PORT, "targetPort": SERVE_PORT}]}}
    # KubeRay keeps only ports named "serve" or "serve-*" in its Serve Service.
    return {"metadata": meta, "spec": {"type": "ClusterIP", "ports": _ingress_ports(SERVE_PORT_NAME, GRPC_PORT_NAME)}}


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


def _ingress_service(namespace: str) -> dict[str, Any]:
    """The clients' way in with the default ingress: the head pod's HAProxy, HTTP and gRPC (h2c)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(INGRESS_SERVICE_NAME, namespace, "ingress"),
        "spec": {"type": "ClusterIP", "selector": dict(HEAD_SELECTOR), "ports": _ingress_ports()},
    }


def serve_url(serve: ServeConfig) -> str:
    """Where clients inside the cluster reach the app over HTTP."""
    service = INGRESS_SERVICE_NAME if serve.ingress == "direct" else SERVE_SERVICE_NAME
    return f"http://{service}:{SERVE_PORT}"


def _rayservice(image: str, namespace: str, serve: ServeConfig, workers: int) -> dict[str, Any]:
    direct = serve.ingress == "direct"
    models_ro = {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}
    models_volume = _volume_pvc("models", MODELS_PVC, read_only=True)
    head = _ray_head(
        image,
        namespace_labels=_labels("rayscale", "ray-head"),
        mounts=[models_ro],
        volumes=[models_volume],
        exporters=True,
        grpc=direct,
        cpus=_head_cpus(serve, workers),
    )
    # With "direct" the replica processes listen on the pod IP on ephemeral ports (HAProxy on the
    # head reaches them there, with a token): no fixed port of theirs to declare.
    worker_ports = [] if direct else [_port("serve", SERVE_PORT)]
    worker = {
        "groupName": "gpu",
        "replicas": workers,
        "minReplicas": workers,
        "maxReplicas": workers,
        "rayStartParams": {"metrics-export-port": str(RAY_METRICS_PORT)},
        "template": {
            "metadata": {"labels": _labels("rayscale", "gpu-worker")},
            "spec": {
                "securityContext": dict(RAY_USER),
                "initContainers": [_wait_for_model(image)],
                "containers": [
                    {
                        "name": "ray-worker",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "ports": [
                            *worker_ports,
                            _port("metrics", RAY_METRICS_PORT),
                            _port("exporter", EXPORTER_PORT),
                        ],
                        "resources": _resources(worker_cpus_for(serve), WORKER_MEMORY, gpus=1),
                        "readinessProbe": _worker_readiness(serve),
                        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, models_ro],
                    }
                ],
                "tolerations": _gpu_tolerations(),
                "volumes": [_shm_volume(), models_volume],
            },
        },
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": _meta(RAYSERVICE_NAME, namespace, "serve"),
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


def _export_job(image: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta("rayscale-export", namespace, "export"),
        "spec": {
            "backoffLimit": 2,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": _labels("rayscale", "export")},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": dict(RAY_USER),
                    "containers": [
                        {
                            "name": "export",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            # An existing export is kept: delete the directory to export again.
                            "command": [
                                "sh",
                                "-c",
                                f"if [ -f {MODEL_DIR_IN_POD}/model.json ]; then "
                                f"echo 'model already exported at {MODEL_DIR_IN_POD}'; "
                                f"else exec rayscale export --out {MODEL_DIR_IN_POD}; fi",
                            ],
                            "resources": _resources(4, "16Gi"),
                            "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT}],
                        }
                    ],
                    "volumes": [_volume_pvc("models", MODELS_PVC, read_only=False)],
                },
            },
        },
    }


def _triton(image: str, namespace: str, gpus: int, serve: ServeConfig) -> list[dict[str, Any]]:
    labels = _labels(TRITON_NAME, "inference-server")
    models_ro = {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}
    repo = {"name": "model-repository", "mountPath": MODEL_REPOSITORY}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(TRITON_NAME, namespace, "inference-server", app=TRITON_NAME),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # the GPUs cannot hold two servers during a rollout
            "selector": {"matchLabels": {"app.kubernetes.io/name": TRITON_NAME}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "initContainers": [
                        {
                            "name": "model-repository",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            # Working directory / makes the default model path models/<name> the volume.
                            "workingDir": "/",
                            "command": [
                                "sh",
                                "-c",
                                f"until [ -f {MODEL_DIR_IN_POD}/model.json ]; do "
                                f"echo 'waiting for the rayscale-export Job to write {MODEL_DIR_IN_POD}'; sleep 10; done; "
                                f"exec rayscale triton repo --gpus {gpus} --out {MODEL_REPOSITORY}",
                            ],
                            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}},
                            "volumeMounts": [models_ro, repo],
                        }
                    ],
                    "containers": [
                        {
                            "name": "triton",
                            "image": TRITON_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["tritonserver"],
                            "args": [
                                f"--model-repository={MODEL_REPOSITORY}",
                                f"--http-port={TRITON_PORTS['http']}",
                                f"--grpc-port={TRITON_PORTS['grpc']}",
                                f"--metrics-port={TRITON_PORTS['metrics']}",
                                "--exit-on-error=true",
                                "--strict-readiness=true",
                            ],
                            "ports": [_port(name, port) for name, port in TRITON_PORTS.items()],
                            # The same CPU and memory per GPU as a Ray worker: a like-for-like cost.
                            "resources": _resources(worker_cpus_for(serve) * gpus, f"{32 * gpus}Gi", gpus=gpus),
                            "startupProbe": {
                                "httpGet": {"path": "/v2/health/ready", "port": TRITON_PORTS["http"]},
                                "periodSeconds": 5,
                                "failureThreshold": 120,
                            },
                            "readinessProbe": {
                                "httpGet": {"path": "/v2/health/ready", "port": TRITON_PORTS["http"]},
                                "periodSeconds": 5,
                                "timeoutSeconds": 2,
                            },
                            "livenessProbe": {
                                "httpGet": {"path": "/v2/health/live", "port": TRITON_PORTS["http"]},
                                "periodSeconds": 10,
                                "timeoutSeconds": 2,
                                "failureThreshold": 6,
                            },
                            "volumeMounts": [repo, models_ro, {"name": "dshm", "mountPath": "/dev/shm"}],
                        }
                    ],
                    "tolerations": _gpu_tolerations(),
                    "volumes": [
                        _volume_pvc("models", MODELS_PVC, read_only=True),
                        {"name": "model-repository", "emptyDir": {}},
                        _shm_volume(),
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(TRITON_NAME, namespace, "inference-server", app=TRITON_NAME),
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/name": TRITON_NAME},
            "ports": [{"name": name, "port": port, "targetPort": name, "protocol": "TCP"} for name, port in TRITON_PORTS.items()],
        },
    }
    return [deployment, service]


def bench_entrypoint(replicas: int, workers: int, url: str) -> str:
    """One command, no shell operators: KubeRay's submitter pastes it into `ray job submit -- ...`."""
    levels = ",".join(str(c) for c in BENCH_CONCURRENCY)
    return (
        f"rayscale bench --url {url} --replicas {replicas} "
        f"--concurrency {levels} --images-per-request {BENCH_IMAGES_PER_REQUEST} "
        f"--out {RESULTS_MOUNT}/rayserve-{workers}gpu.json"
    )


def _bench_rayjob(image: str, namespace: str, replicas: int, workers: int, url: str, cpus: int) -> dict[str, Any]:
    results_mount = {"name": "results", "mountPath": RESULTS_MOUNT}
    head = _ray_head(
        image,
        namespace_labels=_labels("rayscale-bench", "ray-head"),
        mounts=[results_mount],
        volumes=[_volume_pvc("results", RESULTS_PVC, read_only=False)],
    )
    loadgen = {
        "groupName": "loadgen",
        "replicas": workers,  # one client pod per GPU under test, so the clients are never the limit
        "minReplicas": workers,
        "maxReplicas": workers,
        "rayStartParams": {"num-gpus": "0"},
        "template": {
            "metadata": {"labels": _labels("rayscale-bench", "loadgen-worker")},
            "spec": {
                "securityContext": dict(RAY_USER),
                "containers": [
                    {
                        "name": "ray-worker",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "resources": _resources(cpus, "16Gi"),
                        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
                    }
                ],
                "volumes": [_shm_volume()],
            },
        },
    }
    ready_url = f"{url}/v2/health/ready"
    submitter = {
        "metadata": {"labels": _labels("rayscale-bench", "submitter")},
        "spec": {
            "restartPolicy": "Never",
            # The job is submitted only once the RayService answers, so a fresh deployment and a
            # benchmark can be applied together.
            "initContainers": [
                {
                    "name": "wait-for-serve",
                    "image": image,
                    "command": [
                        "python",
                        "-c",
                        "import time, urllib.request\n"
                        "while True:\n"
                        "    try:\n"
                        f"        urllib.request.urlopen({ready_url!r}, timeout=5); break\n"
                        "    except Exception as e:\n"
                        f"        print('waiting for {ready_url}:', e, flush=True); time.sleep(10)\n",
                    ],
                    "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
                }
            ],
            "containers": [
                {
                    "name": "ray-job-submitter",
                    "image": image,
                    "resources": {"requests": {"cpu": "200m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
                }
            ],
        },
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": _meta("rayscale-bench", namespace, "bench", app="rayscale-bench"),
        "spec": {
            "entrypoint": bench_entrypoint(replicas, workers, url),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "activeDeadlineSeconds": 3 * 3600,  # includes the wait for the RayService
            "backoffLimit": 0,
            "submitterPodTemplate": submitter,
            "rayClusterSpec": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": False,
                "headGroupSpec": head,
                "workerGroupSpecs": [loadgen],
            },
        },
    }


def packaged_dashboard() -> str | None:
    """The Grafana dashboard JSON shipped in the package, or None where it is not there."""
    return _DASHBOARD_SOURCE.read_text() if _DASHBOARD_SOURCE.is_file() else None


def _monitoring(namespace: str, dashboard: str | None) -> list[dict[str, Any]]:
    # Prometheus Operator objects; kube-prometheus-stack only picks up monitors carrying its
    # release label by default.
    monitor_labels = {**_labels("rayscale", "monitoring"), "release": "kube-prometheus-stack"}
    objs: list[dict[str, Any]] = [
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": {"name": "ray-metrics", "namespace": namespace, "labels": dict(monitor_labels)},
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/name": "rayscale"}},
                "namespaceSelector": {"matchNames": [namespace]},
                "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
            },
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": {"name": "rayscale-exporter", "namespace": namespace, "labels": dict(monitor_labels)},
            "spec": {
                # GPU metrics from every GPU worker, serving statistics from the head.
                "selector": {"matchLabels": {"app.kubernetes.io/name": "rayscale"}},
                "namespaceSelector": {"matchNames": [namespace]},
                "podMetricsEndpoints": [{"port": "exporter", "path": "/metrics", "interval": "5s"}],
            },
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {"name": TRITON_NAME, "namespace": namespace, "labels": dict(monitor_labels)},
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/name": TRITON_NAME}},
                "namespaceSelector": {"matchNames": [namespace]},
                "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "5s"}],
            },
        },
    ]
    if dashboard is not None:
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "rayscale-grafana-dashboard",
                    "namespace": namespace,
                    # Grafana's dashboard sidecar loads every ConfigMap with this label.
                    "labels": {"grafana_dashboard": "1"},
                },
                "data": {_DASHBOARD_KEY: dashboard},
            }
        )
    return objs


# ------------------------------------------------------------------------------------ public API


def render_manifests(
    *,
    replicas: int,
    gpus_per_replica: float = 1,
    image: str = DEFAULT_IMAGE,
    namespace: str = DEFAULT_NAMESPACE,
    serve: ServeConfig | None = None,
) -> list[dict[str, Any]]:
    """The Kubernetes objects for ``replicas`` Serve replicas (and the same GPUs for Triton).

    ``serve`` supplies the remaining Serve settings (batching, queue limits, ``ingress``,
    ``processes_per_replica``...); ``replicas`` and ``gpus_per_replica`` override its own, and the
    model path, host, ports and provider are those of the pod.
    """
    workers = gpu_workers_for(replicas, gpus_per_replica)
    if not image or any(c.isspace() for c in image):
        raise ConfigError(f"image must be an image reference like registry.example.com/rayscale:{__version__}, got {image!r}")
    _check_dns_label(namespace)
    cfg = _serve_config(serve, replicas, gpus_per_replica)
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": _labels("rayscale", "namespace")}},
        _pvc(MODELS_PVC, namespace, "4Gi", "models"),
        _pvc(RESULTS_PVC, namespace, "1Gi", "results"),
        _export_job(image, namespace),
        _rayservice(image, namespace, cfg, workers),
        *([_ingress_service(namespace)] if cfg.ingress == "direct" else []),
        *_triton(image, namespace, workers, cfg),
        _bench_rayjob(image, namespace, replicas, workers, serve_url(cfg), worker_cpus_for(cfg)),
        *_monitoring(namespace, packaged_dashboard()),
    ]


def _check_dns_label(namespace: str) -> None:
    import re

    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", namespace or ""):
        raise ConfigError(
            f"namespace must be a DNS label (lower-case letters, digits and '-', at most 63), got {namespace!r}"
        )


def _file_name(obj: dict[str, Any]) -> str:
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def _dump(obj: Any) -> str:
    """YAML in the order the objects were built, multi-line strings as readable ``|`` blocks."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # a manifest reads top to bottom, no &anchors
            return True

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def write_manifests(
    out_dir: str | os.PathLike,
    *,
    replicas: int,
    gpus_per_replica: float = 1,
    image: str = DEFAULT_IMAGE,
    namespace: str = DEFAULT_NAMESPACE,
    serve: ServeConfig | None = None,
) -> list[Path]:
    """Write the manifests as two kustomizations and return the files written.

    ``out_dir`` gets one file per object and a ``kustomization.yaml`` (``kubectl apply -k``);
    ``out_dir/monitoring`` gets the Prometheus Operator objects and a fresh copy of the
    packaged Grafana dashboard, applied separately because they need the Prometheus Operator.
    """
    objs = render_manifests(
        replicas=replicas, gpus_per_replica=gpus_per_replica, image=image, namespace=namespace, serve=serve
    )
    out = Path(out_dir)
    monitoring_dir = out / "monitoring"
    try:
        monitoring_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {out} ({e.strerror}): choose a writable --out directory") from None
    if not os.access(out, os.W_OK) or not os.access(monitoring_dir, os.W_OK):
        raise ConfigError(f"{out} is not writable: choose a writable --out directory")

    written: list[Path] = []

    def put(path: Path, text: str) -> None:
        written.append(write_text_atomic(path, text))

    core = [o for o in objs if not _is_monitoring(o)]
    monitors = [o for o in objs if _is_monitoring(o) and o["kind"] != "ConfigMap"]
    ingress = (serve or ServeConfig()).ingress
    header = (
        f"# rayscale {__version__}: `rayscale k8s render --replicas {replicas} --gpus-per-replica {gpus_per_replica:g}"
        f" --ingress {ingress}`\n"
    )
    try:
        for obj in core:
            put(out / _file_name(obj), header + _dump(obj))
        put(out / "kustomization.yaml", header + _dump(_kustomization([_file_name(o) for o in core])))
        for obj in monitors:
            put(monitoring_dir / _file_name(obj), header + _dump(obj))
        generators = []
        dashboard = packaged_dashboard()
        if dashboard is None:
            log.warning("no dashboard at %s: the Grafana ConfigMap is left out", _DASHBOARD_SOURCE)
        else:
            put(monitoring_dir / DASHBOARD_FILE, dashboard)
            generators = [_dashboard_generator()]
        kust = _kustomization([_file_name(o) for o in monitors], namespace=namespace)
        if generators:
            kust["generatorOptions"] = {"disableNameSuffixHash": True}
            kust["configMapGenerator"] = generators
        put(monitoring_dir / "kustomization.yaml", header + _dump(kust))
    except OSError as e:
        raise ConfigError(f"cannot write to {out} ({e.strerror}): choose a writable --out directory") from None
    return written


def _is_monitoring(obj: dict[str, Any]) -> bool:
    return obj["kind"] in ("PodMonitor", "ServiceMonitor") or obj["metadata"].get("labels", {}).get("grafana_dashboard") == "1"


def _kustomization(resources: list[str], namespace: str | None = None) -> dict[str, Any]:
    k: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    if namespace:
        k["namespace"] = namespace
    k["resources"] = resources
    return k


def _dashboard_generator() -> dict[str, Any]:
    return {
        "name": "rayscale-grafana-dashboard",
        "files": [f"{_DASHBOARD_KEY}={DASHBOARD_FILE}"],
        "options": {"labels": {"grafana_dashboard": "1"}},
    }

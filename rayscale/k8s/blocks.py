"""What every manifest shares: images, names, volume paths, ports, and the small objects built from them.

Labels, metadata, volumes, resources, container ports and GPU tolerations are spelled once here,
so that the RayService, the Triton deployment and the Jobs say the same numbers.
"""

from __future__ import annotations

from typing import Any

from rayscale import __version__
from rayscale.config import MODEL_NAME

__all__ = [
    "DASHBOARD_PORT",
    "DEFAULT_IMAGE",
    "DEFAULT_NAMESPACE",
    "GRPC_PORT",
    "GRPC_PORT_NAME",
    "MODELS_MOUNT",
    "MODELS_PVC",
    "MODEL_DIR_IN_POD",
    "RAY_IMAGE",
    "RAY_METRICS_PORT",
    "RAY_USER",
    "RAY_VERSION",
    "RESULTS_MOUNT",
    "RESULTS_PVC",
    "SERVE_PORT",
    "SERVE_PORT_NAME",
    "container_port",
    "gpu_tolerations",
    "labels",
    "meta",
    "pvc",
    "resources",
    "shm_volume",
    "volume_pvc",
    "wait_for_model",
]

RAY_VERSION = "2.60.0"
RAY_IMAGE = f"rayproject/ray:{RAY_VERSION}-py311-gpu"  # the base of k8s/Dockerfile
DEFAULT_IMAGE = f"rayscale:{__version__}"
DEFAULT_NAMESPACE = "rayscale"
RAY_USER = {"runAsUser": 1000, "runAsGroup": 100, "fsGroup": 100}  # the ray user of rayproject/ray

MODELS_PVC = "rayscale-models"
RESULTS_PVC = "rayscale-results"
MODELS_MOUNT = "/models"
RESULTS_MOUNT = "/results"
MODEL_DIR_IN_POD = f"{MODELS_MOUNT}/{MODEL_NAME}"

SERVE_PORT = 8000
GRPC_PORT = 8001
# A serving container's names for them: KubeRay's conventions ("serve", "serve-*") for Serve's ports.
SERVE_PORT_NAME, GRPC_PORT_NAME = "serve", "serve-grpc"
DASHBOARD_PORT = 8265
RAY_METRICS_PORT = 8080


def labels(name: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component, "app.kubernetes.io/part-of": "rayscale"}


def meta(name: str, namespace: str, component: str, app: str = "rayscale") -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels(app, component)}


def pvc(name: str, namespace: str, size: str, component: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta(name, namespace, component),
        # ReadWriteMany: one pod writes, pods on other nodes read. Needs a storage class that offers it.
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": size}}},
    }


def volume_pvc(name: str, claim: str, read_only: bool) -> dict[str, Any]:
    return {"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}


def shm_volume() -> dict[str, Any]:
    # Ray's object store and Triton's shared memory live in /dev/shm; a container's default is 64 MiB.
    return {"name": "dshm", "emptyDir": {"medium": "Memory"}}


def wait_for_model(image: str) -> dict[str, Any]:
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


def gpu_tolerations() -> list[dict[str, Any]]:
    # GPU node pools are usually tainted so that only pods asking for GPUs land there.
    return [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def resources(cpu: int | str, memory: str, gpus: int = 0) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": str(cpu), "memory": memory}
    if gpus:
        amounts["nvidia.com/gpu"] = gpus
    return {"requests": dict(amounts), "limits": dict(amounts)}


def container_port(name: str, number: int) -> dict[str, Any]:
    return {"name": name, "containerPort": number, "protocol": "TCP"}

"""Triton's Deployment and Service: the same ONNX file on the same number of GPUs as the RayService."""

from __future__ import annotations

from typing import Any

from rayscale.config import ServeConfig
from rayscale.k8s.blocks import (
    MODEL_DIR_IN_POD,
    MODELS_MOUNT,
    MODELS_PVC,
    container_port,
    gpu_tolerations,
    labels,
    meta,
    resources,
    shm_volume,
    volume_pvc,
)
from rayscale.k8s.sizing import worker_cpus_for

__all__ = ["MODEL_REPOSITORY", "TRITON_IMAGE", "TRITON_NAME", "TRITON_PORTS", "triton_objects"]

TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51
TRITON_NAME = "triton"
MODEL_REPOSITORY = "/model_repository"
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


def triton_objects(image: str, namespace: str, gpus: int, serve: ServeConfig) -> list[dict[str, Any]]:
    """Triton's Deployment on ``gpus`` GPUs and its Service; ``serve`` sizes its CPUs like the Ray workers."""
    pod_labels = labels(TRITON_NAME, "inference-server")
    models_ro = {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}
    repo = {"name": "model-repository", "mountPath": MODEL_REPOSITORY}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(TRITON_NAME, namespace, "inference-server", app=TRITON_NAME),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # the GPUs cannot hold two servers during a rollout
            "selector": {"matchLabels": {"app.kubernetes.io/name": TRITON_NAME}},
            "template": {
                "metadata": {"labels": pod_labels},
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
                            "ports": [container_port(name, port) for name, port in TRITON_PORTS.items()],
                            # The same CPU and memory per GPU as a Ray worker: a like-for-like cost.
                            "resources": resources(worker_cpus_for(serve) * gpus, f"{32 * gpus}Gi", gpus=gpus),
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
                    "tolerations": gpu_tolerations(),
                    "volumes": [
                        volume_pvc("models", MODELS_PVC, read_only=True),
                        {"name": "model-repository", "emptyDir": {}},
                        shm_volume(),
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(TRITON_NAME, namespace, "inference-server", app=TRITON_NAME),
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/name": TRITON_NAME},
            "ports": [{"name": name, "port": port, "targetPort": name, "protocol": "TCP"} for name, port in TRITON_PORTS.items()],
        },
    }
    return [deployment, service]

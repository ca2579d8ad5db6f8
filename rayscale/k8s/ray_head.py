"""The Ray head group shared by the RayService and the benchmark RayJob's cluster."""

from __future__ import annotations

from typing import Any

from rayscale.k8s.blocks import DASHBOARD_PORT, RAY_METRICS_PORT, RAY_USER, container_port, resources, shm_volume
from rayscale.k8s.exporters import EXPORTER_KEEPER_COMMAND, EXPORTER_PORT
from rayscale.k8s.sizing import HEAD_CPUS

__all__ = ["ray_head"]


def ray_head(
    image: str,
    *,
    namespace_labels: dict[str, str],
    mounts: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    exporters: bool = False,
    cpus: int = HEAD_CPUS,
) -> dict[str, Any]:
    """A ``headGroupSpec`` without GPUs; ``exporters`` adds the node-exporter keeper and its port.

    A head without GPUs holds no replica, so no ingress listens there and it declares no serving port.
    """
    ports = [
        container_port("gcs", 6379),
        container_port("dashboard", DASHBOARD_PORT),
        container_port("client", 10001),
        container_port("metrics", RAY_METRICS_PORT),
    ]
    extra: dict[str, Any] = {}
    if exporters:
        ports.append(container_port("exporter", EXPORTER_PORT))
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
                        "resources": resources(cpus, "16Gi"),
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
                "volumes": [shm_volume(), *volumes],
            },
        },
    }

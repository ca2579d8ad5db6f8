"""The benchmark RayJob: a concurrency sweep against the RayService that writes a results file."""

from __future__ import annotations

from typing import Any

from rayscale.k8s.blocks import (
    RAY_USER,
    RAY_VERSION,
    RESULTS_MOUNT,
    RESULTS_PVC,
    labels,
    meta,
    resources,
    shm_volume,
    volume_pvc,
)
from rayscale.k8s.ray_head import ray_head

__all__ = ["BENCH_CONCURRENCY", "BENCH_IMAGES_PER_REQUEST", "bench_entrypoint", "bench_rayjob", "bench_target"]

BENCH_CONCURRENCY = (1, 4, 16, 64, 128, 256)
BENCH_IMAGES_PER_REQUEST = 32


def bench_target(url: str) -> str:
    """The sweep's target arguments: every client actor sends to ``url``, the serving Service.

    kube-proxy spreads the actors' connections over the ready serving pods and each pod serves on
    its own GPU first. These arguments are the one place that says where the load goes.
    """
    return f"--url {url}"


def bench_entrypoint(replicas: int, workers: int, url: str) -> str:
    """One command, no shell operators: KubeRay's submitter pastes it into `ray job submit -- ...`."""
    levels = ",".join(str(c) for c in BENCH_CONCURRENCY)
    return (
        f"rayscale bench {bench_target(url)} --replicas {replicas} "
        f"--concurrency {levels} --images-per-request {BENCH_IMAGES_PER_REQUEST} "
        f"--out {RESULTS_MOUNT}/rayserve-{workers}gpu.json"
    )


def bench_rayjob(image: str, namespace: str, replicas: int, workers: int, url: str, cpus: int) -> dict[str, Any]:
    """A RayJob with one load-generator pod per GPU under test that sweeps ``url`` once the RayService answers."""
    results_mount = {"name": "results", "mountPath": RESULTS_MOUNT}
    head = ray_head(
        image,
        namespace_labels=labels("rayscale-bench", "ray-head"),
        mounts=[results_mount],
        volumes=[volume_pvc("results", RESULTS_PVC, read_only=False)],
    )
    loadgen = {
        "groupName": "loadgen",
        "replicas": workers,  # one client pod per GPU under test, so the clients are never the limit
        "minReplicas": workers,
        "maxReplicas": workers,
        "rayStartParams": {"num-gpus": "0"},
        "template": {
            "metadata": {"labels": labels("rayscale-bench", "loadgen-worker")},
            "spec": {
                "securityContext": dict(RAY_USER),
                "containers": [
                    {
                        "name": "ray-worker",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "resources": resources(cpus, "16Gi"),
                        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
                    }
                ],
                "volumes": [shm_volume()],
            },
        },
    }
    ready_url = f"{url}/v2/health/ready"
    submitter = {
        "metadata": {"labels": labels("rayscale-bench", "submitter")},
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
        "metadata": meta("rayscale-bench", namespace, "bench", app="rayscale-bench"),
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

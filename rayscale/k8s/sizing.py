"""How big the pods are: GPU workers for a number of replicas, and the CPUs of workers and head."""

from __future__ import annotations

import math

from rayscale.config import ServeConfig
from rayscale.errors import ConfigError

__all__ = ["HEAD_CPUS", "WORKER_HEADROOM_CPUS", "WORKER_MEMORY", "gpu_workers_for", "worker_cpus_for"]

# One GPU worker pod: a CPU for each replica process it holds (Ray schedules them by CPU too) plus
# this much for the raylet, the dashboard agent, the exporter and the pod's own ingress (rayscale's
# HAProxy, or with "proxy" Serve's proxy), which carries that pod's requests in and out.
WORKER_HEADROOM_CPUS = 4
WORKER_MEMORY = "32Gi"
# GCS, dashboard, Serve controller. No request crosses the head: it holds no replica, so no ingress.
HEAD_CPUS = 4


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

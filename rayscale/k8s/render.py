"""``render_manifests``: every object for one size, in the order ``kubectl apply`` should meet them."""

from __future__ import annotations

from typing import Any

from rayscale import __version__
from rayscale.config import ServeConfig
from rayscale.errors import ConfigError
from rayscale.k8s.bench_job import bench_rayjob
from rayscale.k8s.blocks import DEFAULT_IMAGE, DEFAULT_NAMESPACE, MODELS_PVC, RESULTS_PVC, labels, pvc
from rayscale.k8s.export_job import export_job
from rayscale.k8s.monitoring import monitoring_objects, packaged_dashboard
from rayscale.k8s.rayservice import ingress_service, rayservice, serve_url
from rayscale.k8s.serve_config import pod_serve_config
from rayscale.k8s.sizing import gpu_workers_for, worker_cpus_for
from rayscale.k8s.triton import triton_objects

__all__ = ["render_manifests"]


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
    cfg = pod_serve_config(serve, replicas, gpus_per_replica)
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels("rayscale", "namespace")}},
        pvc(MODELS_PVC, namespace, "4Gi", "models"),
        pvc(RESULTS_PVC, namespace, "1Gi", "results"),
        export_job(image, namespace),
        rayservice(image, namespace, cfg, workers),
        *([ingress_service(namespace)] if cfg.ingress == "direct" else []),
        *triton_objects(image, namespace, workers, cfg),
        bench_rayjob(image, namespace, replicas, workers, serve_url(cfg), worker_cpus_for(cfg)),
        *monitoring_objects(namespace, packaged_dashboard()),
    ]


def _check_dns_label(namespace: str) -> None:
    import re

    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", namespace or ""):
        raise ConfigError(f"namespace must be a DNS label (lower-case letters, digits and '-', at most 63), got {namespace!r}")

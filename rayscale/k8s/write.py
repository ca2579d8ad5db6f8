"""``write_manifests``: the rendered objects as two kustomizations (core, and monitoring) on disk."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from rayscale import __version__
from rayscale.config import ServeConfig
from rayscale.errors import ConfigError
from rayscale.files import write_text_atomic
from rayscale.k8s.blocks import DEFAULT_IMAGE, DEFAULT_NAMESPACE
from rayscale.k8s.monitoring import DASHBOARD_FILE, DASHBOARD_SOURCE, dashboard_generator, is_monitoring, packaged_dashboard
from rayscale.k8s.render import render_manifests
from rayscale.k8s.yaml_text import dump_yaml

__all__ = ["write_manifests"]

log = logging.getLogger(__name__)


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
    objs = render_manifests(replicas=replicas, gpus_per_replica=gpus_per_replica, image=image, namespace=namespace, serve=serve)
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

    core = [o for o in objs if not is_monitoring(o)]
    monitors = [o for o in objs if is_monitoring(o) and o["kind"] != "ConfigMap"]
    ingress = (serve or ServeConfig()).ingress
    header = (
        f"# rayscale {__version__}: `rayscale k8s render --replicas {replicas} --gpus-per-replica {gpus_per_replica:g}"
        f" --ingress {ingress}`\n"
    )
    try:
        for obj in core:
            put(out / _file_name(obj), header + dump_yaml(obj))
        put(out / "kustomization.yaml", header + dump_yaml(_kustomization([_file_name(o) for o in core])))
        for obj in monitors:
            put(monitoring_dir / _file_name(obj), header + dump_yaml(obj))
        generators = []
        dashboard = packaged_dashboard()
        if dashboard is None:
            log.warning("no dashboard at %s: the Grafana ConfigMap is left out", DASHBOARD_SOURCE)
        else:
            put(monitoring_dir / DASHBOARD_FILE, dashboard)
            generators = [dashboard_generator()]
        kust = _kustomization([_file_name(o) for o in monitors], namespace=namespace)
        if generators:
            kust["generatorOptions"] = {"disableNameSuffixHash": True}
            kust["configMapGenerator"] = generators
        put(monitoring_dir / "kustomization.yaml", header + dump_yaml(kust))
    except OSError as e:
        raise ConfigError(f"cannot write to {out} ({e.strerror}): choose a writable --out directory") from None
    return written


def _file_name(obj: dict[str, Any]) -> str:
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def _kustomization(resources: list[str], namespace: str | None = None) -> dict[str, Any]:
    k: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    if namespace:
        k["namespace"] = namespace
    k["resources"] = resources
    return k

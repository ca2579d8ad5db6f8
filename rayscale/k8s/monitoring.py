"""Monitoring: Prometheus Operator monitors for Ray, the exporters and Triton, and the Grafana dashboard.

The dashboard is package data (``rayscale/dashboards/rayscale.json``); the written manifests
carry a copy of it that kustomize turns into the ConfigMap Grafana's sidecar loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rayscale.k8s.blocks import labels
from rayscale.k8s.triton import TRITON_NAME

__all__ = [
    "DASHBOARD_FILE",
    "DASHBOARD_KEY",
    "DASHBOARD_SOURCE",
    "MONITORING_KINDS",
    "dashboard_generator",
    "is_monitoring",
    "monitoring_objects",
    "packaged_dashboard",
]

MONITORING_KINDS = ("PodMonitor", "ServiceMonitor", "ConfigMap")

DASHBOARD_SOURCE = Path(__file__).resolve().parent.parent / "dashboards" / "rayscale.json"
DASHBOARD_KEY = "rayscale.json"
DASHBOARD_FILE = "rayscale-dashboard.json"  # the copy kustomize reads (it cannot read outside its root)


def packaged_dashboard() -> str | None:
    """The Grafana dashboard JSON shipped in the package, or None where it is not there."""
    return DASHBOARD_SOURCE.read_text() if DASHBOARD_SOURCE.is_file() else None


def monitoring_objects(namespace: str, dashboard: str | None) -> list[dict[str, Any]]:
    # Prometheus Operator objects; kube-prometheus-stack only picks up monitors carrying its
    # release label by default.
    monitor_labels = {**labels("rayscale", "monitoring"), "release": "kube-prometheus-stack"}
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
                "data": {DASHBOARD_KEY: dashboard},
            }
        )
    return objs


def is_monitoring(obj: dict[str, Any]) -> bool:
    """Whether ``obj`` belongs in the monitoring kustomization (it needs the Prometheus Operator)."""
    return obj["kind"] in ("PodMonitor", "ServiceMonitor") or obj["metadata"].get("labels", {}).get("grafana_dashboard") == "1"


def dashboard_generator() -> dict[str, Any]:
    """The kustomize ``configMapGenerator`` entry that turns the dashboard copy into its ConfigMap."""
    return {
        "name": "rayscale-grafana-dashboard",
        "files": [f"{DASHBOARD_KEY}={DASHBOARD_FILE}"],
        "options": {"labels": {"grafana_dashboard": "1"}},
    }

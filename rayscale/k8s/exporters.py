"""The node-exporter keeper: runs on the RayService's head pod beside ``ray start``.

The head container's postStart hook runs ``EXPORTER_KEEPER_COMMAND``, which imports
``keep_node_exporters`` from ``rayscale.k8s``: that import path is part of the manifests.
"""

from __future__ import annotations

import logging

__all__ = ["EXPORTER_KEEPER_COMMAND", "EXPORTER_PORT", "keep_node_exporters"]

log = logging.getLogger(__name__)

EXPORTER_PORT = 9400  # rayscale.metrics exporter actors: GPU metrics per node, serving statistics on the head

EXPORTER_KEEPER_COMMAND = (
    "nohup python -c 'from rayscale.k8s import keep_node_exporters; keep_node_exporters()' >/tmp/rayscale-exporters.log 2>&1 &"
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

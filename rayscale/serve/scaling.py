"""Rescaling and reconfiguring the running rayscale app, and asking it what it runs.

``rayscale bench --replicas 1,2,4`` measures the app at each size: ``rescale`` redeploys it with
the same settings and another replica count, and returns once every replica is ready.
``reconfigure`` changes the batching settings of the running processes (``rayscale tune``).
"""

from __future__ import annotations

from typing import Any

from rayscale.errors import ConfigError, ServerError
from rayscale.serve import registry

__all__ = ["cluster_started_by_rayscale", "reconfigure", "rescale", "running_app_config"]


def cluster_started_by_rayscale() -> bool:
    """Whether ``rayscale up`` recorded a Ray cluster it started (it may since have stopped)."""
    from rayscale.serve.cluster import read_state

    return read_state() is not None


def running_app_config(app_name: str) -> dict[str, Any] | None:
    """The running app's config, with ``replicas`` set to the replicas up now (processes running ÷
    processes per replica); None if none runs."""
    records = registry.replica_records(app_name, live_only=True)
    if not records:
        return None
    config = dict(records[0].config)
    return dict(config, replicas=len(records) // max(int(config.get("processes_per_replica") or 1), 1))


def rescale(
    app_name: str, replicas: int, *, current: dict[str, Any] | None = None, api_token: str | None = None
) -> dict[str, Any]:
    """Redeploy the running app with ``replicas`` replicas and wait until all are ready; returns its config
    (the token aside).

    ``current`` is the app's config as ``running_app_config`` gave it (read again when not given).
    """
    import ray
    from ray import serve

    from rayscale.serve.app import build_app
    from rayscale.serve.cluster import wait_for_replicas

    current = current if current is not None else running_app_config(app_name)
    if current is None:
        raise ServerError(f"no running rayscale app {app_name!r} in this Ray cluster to rescale: start it with `rayscale up`")
    if current["replicas"] == replicas:  # running_app_config counted the replicas up now
        return current
    need = replicas * float(current.get("gpus_per_replica", 0))
    have = float(ray.cluster_resources().get("GPU", 0))
    if need > have + 1e-9:
        raise ConfigError(f"{replicas} replicas need {need:g} GPUs but the cluster has {have:g}: drop it from --replicas")
    scaled = dict(current, replicas=replicas)
    args = dict(scaled, api_token=api_token) if api_token else scaled
    if replicas < current["replicas"]:
        # Scaling down in place keeps whichever processes Serve picks, which may leave a share of every
        # GPU busy: N replicas must mean N GPUs, so the app starts afresh, packed onto the first GPUs.
        serve.delete(app_name, _blocking=True)
    serve.run(build_app(args), name=app_name, route_prefix=scaled.get("route_prefix", "/"), blocking=False)
    processes = replicas * max(int(scaled.get("processes_per_replica") or 1), 1)
    wait_for_replicas(app_name, processes, routed=scaled.get("ingress") == "direct", exact=True)
    return scaled  # without the token: the config goes into results files


def reconfigure(
    app_name: str, changes: dict[str, Any], *, version: str, api_token: str | None = None, timeout_s: float = 120.0
) -> dict[str, Any]:
    """Change the running app's ``RECONFIGURABLE`` settings (e.g. ``{"batch_wait_ms": 0}``) without new
    processes: Serve's lightweight update through user_config. The app must have been deployed with
    ``up(..., version=version)``. Returns its config once every process reports the new settings."""
    import time

    from ray import serve

    from rayscale.serve.app import RECONFIGURABLE, app_for, parse_app_args

    unknown = sorted(set(changes) - set(RECONFIGURABLE))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)} need new processes: only {', '.join(RECONFIGURABLE)} change in place")
    current = running_app_config(app_name)
    if current is None:
        raise ServerError(f"no running rayscale app {app_name!r} to reconfigure: start it with `rayscale up`")
    args = dict(current, **changes) | ({"api_token": api_token} if api_token else {})
    cfg = parse_app_args(args)
    serve.run(app_for(cfg, version=version), name=app_name, route_prefix=cfg.route_prefix, blocking=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = registry.replica_records(app_name, live_only=True)
        if len(records) == cfg.serve_replicas and all(
            all(record.config.get(k) == getattr(cfg, k) for k in RECONFIGURABLE) for record in records
        ):
            return dict(current, **changes)
        time.sleep(0.1)
    raise ServerError(f"app {app_name} did not take the new settings {changes} within {timeout_s:.0f} s")

"""``rayscale bench``: the sweep driven by rayscale's own client actors in Ray.

A rayscale app in the Ray cluster (whatever ``--target`` calls it) is measured at the replica
count it runs, or rescaled to each ``--replicas`` value; another server is measured as it runs.
Client actors are sized from each point's load (``rayscale.loadgen.sizing``) unless ``--clients``
fixes them; a point whose busiest actor still saturates its core is measured once more with twice
the actors, where the cluster has the CPUs, and stays flagged if it saturates again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rayscale.errors import ConfigError, RayscaleError, ServerError
from rayscale.loadgen.config import BenchConfig
from rayscale.loadgen.events import EventCallback, PointRetried, Rescaling, ignore_events
from rayscale.loadgen.point import run_point
from rayscale.loadgen.pool import ClientPool, connect_ray, root_cause
from rayscale.loadgen.sizing import client_cap, plan_clients
from rayscale.loadgen.sweep import PointRunner, ResultsFile, bench_result, model_record, run_sweep
from rayscale.loadgen.target import ServerInfo, ServerProbe, preflight, replicas_from_config
from rayscale.metrics.gpu import GpuSamplers
from rayscale.results import BenchResult, PointResult, PointStatus

__all__ = ["RayLoadEngine", "run_bench"]


def run_bench(cfg: BenchConfig, *, on_event: EventCallback | None = None) -> BenchResult:
    """Run the whole sweep; returns the result (also written to ``cfg.out``)."""
    from rayscale.serve.scaling import running_app_config

    emit = on_event or ignore_events
    server = preflight(cfg.url, cfg.model, cfg.api_token, transport=cfg.transport) if cfg.url else None
    target = cfg.target if cfg.target != "auto" else ("rayscale" if server is None else server.label)
    file = ResultsFile.open(cfg, target)
    connect_ray(cfg)
    running = running_app_config(cfg.app_name) if server is None or server.is_rayscale else None
    if running is None and server is None:
        raise ServerError(
            f"no rayscale app {cfg.app_name!r} runs in this Ray cluster: start it with `rayscale up` "
            "(or pass --address of its cluster), or aim at another server with --url"
        )
    replicas = _replica_sweep(cfg, server, running)
    result = bench_result(
        cfg, file,
        model=model_record(cfg, server, running_model_dir=(running or {}).get("model_dir")),
        serve_config=running if running is not None else (server.config if server else None),
    )  # fmt: skip
    with RayLoadEngine(cfg, running=running, result=result, emit=emit) as engine:
        return run_sweep(cfg, engine, result=result, file=file, target=target, replicas=replicas, emit=emit)


def _replica_sweep(cfg: BenchConfig, server: ServerInfo | None, running: dict[str, Any] | None) -> list[int]:
    if cfg.replicas is not None and len(cfg.replicas) > 1 and running is None:
        raise ConfigError(
            "sweeping --replicas needs the rayscale app in a reachable Ray cluster (pass --address if it is remote); "
            "for another server, restart it at each size and pass its GPU count as a single --replicas value"
        )
    if cfg.replicas:
        return list(cfg.replicas)
    if running is not None:
        return [int(running["replicas"])]
    return [replicas_from_config((server.config if server else None) or {})]


class RayLoadEngine:
    """rayscale's load engine: the app rescaled per replica count, a pool of client actors, ``run_point``."""

    def __init__(self, cfg: BenchConfig, *, running: dict[str, Any] | None, result: BenchResult, emit: EventCallback):
        self.cfg = cfg
        self.transport = cfg.transport_label
        self.running = running  # the rayscale app's config, None for another server
        self.result = result
        self.emit = emit
        self.pool = ClientPool(cfg)
        # rayscale's own ingress counts what each node carried (over HTTP or gRPC; a handle call skips it)
        direct = running is not None and running.get("ingress") == "direct" and not cfg.handle
        self.server = ServerProbe(cfg, rayscale_app=running is not None, ingress_app=cfg.app_name if direct else None)
        self.metrics = _load_metrics(cfg)
        self.gpus = GpuSamplers(cfg.gpu_sample_interval_s)  # the sweep's: made at its first point, kept to its end

    def __enter__(self) -> RayLoadEngine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.pool.close()
        self.gpus.close()
        if self.metrics is not None:
            self.metrics.close()

    @contextlib.contextmanager
    def deployment(self, replicas: int) -> Iterator[None]:
        if self.running is not None and self.cfg.replicas is not None:
            from rayscale.serve.scaling import rescale

            self.emit(Rescaling(replicas))
            self.running = rescale(self.cfg.app_name, replicas, current=self.running, api_token=self.cfg.api_token)
            self.result.serve_config = self.running
        yield

    @contextlib.contextmanager
    def clients(self, images_per_request: int, *, replicas: int) -> Iterator[PointRunner]:
        cfg = self.cfg
        n = plan_clients(cfg, load=max(cfg.loads), images_per_request=images_per_request, replicas=replicas,
                         cpus_free=self.pool.free_cpus())  # fmt: skip
        self.pool.ready(n, images_per_request)
        yield self._run_point

    def _run_point(self, point: PointResult, load: int | float) -> PointResult:
        """Measure the point; measure it again with twice the actors if its actors were CPU-saturated."""
        measured = self._measure(_copy(point), load)
        more = self._more_clients(measured, load)
        if more is None:
            return measured
        self.emit(PointRetried(point=measured, clients=more))
        self.pool.ready(more, point.images_per_request)
        return self._measure(_copy(point), load)

    def _more_clients(self, measured: PointResult, load: int | float) -> int | None:
        """Twice the actors, within the cluster's CPUs, for an automatically sized pool that saturated."""
        if self.cfg.clients or not measured.client_cpu_saturated or measured.status == PointStatus.FAILED:
            return None
        more = min(2 * self.pool.size, client_cap(self.cfg, load=load, cpus_free=self.pool.free_cpus()))
        return more if more > self.pool.size else None

    def _measure(self, point: PointResult, load: int | float) -> PointResult:
        cfg = self.cfg
        if self.metrics is not None:
            self.metrics.set_point(target=point.target, transport=point.transport, replicas=point.replicas,
                                   concurrency=point.concurrency, rate_rps=point.rate_rps,
                                   images_per_request=point.images_per_request)  # fmt: skip
        try:
            return run_point(
                cfg, self.pool, point, load, server=self.server, emit=self.emit, metrics=self.metrics, gpus=self.gpus
            )
        except RayscaleError:
            raise
        except Exception as e:  # a dead client actor or similar: record it, and the sweep goes on
            point.status, point.error = PointStatus.FAILED, root_cause(e)
            self.pool.restart()
            return point


def _copy(point: PointResult) -> PointResult:
    from dataclasses import replace

    return replace(point)


def _load_metrics(cfg: BenchConfig) -> Any:
    if cfg.metrics_port is None:
        return None
    from rayscale.metrics import LoadMetrics

    m = LoadMetrics()
    m.serve(port=cfg.metrics_port)
    return m

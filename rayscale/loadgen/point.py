"""One point measured by rayscale's client actors: warm-up, windows until stable, finish.

1. the pool's actors start the load (closed loop: N slots; open loop: a schedule) and run a
   warm-up whose samples are discarded (its requests are still counted);
2. consecutive windows of ``window_s`` are measured until the last three agree within
   ``stability`` on throughput and p95 (perf_analyzer's rule: max/min ≤ 1 + stability), or
   ``max_windows`` / ``duration_s`` is reached (then the point is flagged ``unstable``);
3. the point's figures come from the last three windows: latencies pooled from every actor
   (exact percentiles, and a histogram from which goodput under any SLO is read), the server's
   queue/compute split from its statistics and the CPU time of its processes and of the client
   actors (deltas over the same span), what each node's ingress carried and how much of it crossed
   to another node (rayscale's own ingress), GPU samples, the busiest actor's CPU;
4. the actors stop and drain; sent = ok + failed + incomplete over the whole point.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from rayscale.environment import now_iso
from rayscale.loadgen.config import BenchConfig
from rayscale.loadgen.events import EventCallback, WindowMeasured
from rayscale.loadgen.ingresses import traffic_delta
from rayscale.loadgen.pool import ClientPool
from rayscale.loadgen.stats import ClientTake, is_stable, latency_stats
from rayscale.loadgen.target import ServerProbe, ServerReading, host_cpu_over, server_stats_delta
from rayscale.metrics.gpu import GpuSamplers, summarize_gpu_samples
from rayscale.results import LatencyHistogram, PointResult, PointStatus, WindowStats

__all__ = ["run_point"]

log = logging.getLogger(__name__)

USED_WINDOWS = 3  # a point's figures come from its last three windows, as perf_analyzer's do


@dataclass
class _Measurement:
    """What the windows of one point collected (the warm-up's counts included)."""

    windows: list[WindowStats] = field(default_factory=list)
    takes: list[ClientTake] = field(default_factory=list)  # one per window, pooled over the actors
    readings: list[ServerReading] = field(default_factory=list)  # the server at each window edge
    warmup: ClientTake = field(default_factory=ClientTake)
    started: float = field(default_factory=time.perf_counter)  # the load's start: windows' start_s count from it


def run_point(cfg: BenchConfig, pool: ClientPool, point: PointResult, load: int | float, *, server: ServerProbe,
              emit: EventCallback, metrics: Any = None, gpus: GpuSamplers | None = None) -> PointResult:  # fmt: skip
    """Measure ``point`` at ``load`` (a concurrency, or a rate in requests/s) with the pool's actors,
    reading ``server`` at each window edge and sampling the GPUs with ``gpus`` (the sweep's; None:
    samplers of this point's own)."""
    import ray

    point.started_at = now_iso()
    active = pool.start_load(load)
    point.clients = len(active)
    measured = _Measurement(started=time.perf_counter())
    own = gpus is None
    samplers = GpuSamplers(cfg.gpu_sample_interval_s) if gpus is None else gpus
    sampling = False
    try:
        time.sleep(cfg.warmup_s)
        # Start the GPU samplers (the first start makes the actors: ~0.5-1 s) before the warm-up's
        # last take, so the first window's requests and its duration both start at that take.
        sampling = _start_sampling(samplers)
        _measure_windows(cfg, active, point, measured, server, emit, metrics)
    finally:
        finals = ray.get([c.stop.remote(cfg.drain_timeout_s) for c in active])
        point.gpus, point.gpu_samples = _gpu_results(samplers) if sampling else ([], [])
        if own:
            samplers.close()
    totals = ClientTake.pooled([measured.warmup, *(t.counts_only() for t in measured.takes), *finals])
    return _finish(cfg, point, load, measured, totals, pool.nodes)


def _take_all(actors: list[Any]) -> ClientTake:
    import ray

    return ClientTake.pooled(ray.get([c.take.remote() for c in actors]))


def _measure_windows(cfg: BenchConfig, active: list[Any], point: PointResult, measured: _Measurement,
                     server: ServerProbe, emit: EventCallback, metrics: Any) -> None:  # fmt: skip
    """Windows from the end of the warm-up until three agree, or the caps are reached."""
    measured.warmup = _take_all(active).counts_only()
    t_last = measured_start = time.perf_counter()
    measured.readings.append(server.read())
    while True:
        time.sleep(max(0.0, cfg.window_s - (time.perf_counter() - t_last)))
        take = _take_all(active)
        now = time.perf_counter()
        measured.readings.append(server.read())
        latency = latency_stats(take.latencies_s)
        window = WindowStats(
            start_s=round(t_last - measured.started, 3),
            duration_s=now - t_last,
            requests=take.ok,
            images_per_s=take.ok * point.images_per_request / (now - t_last),
            p95_ms=latency.p95_ms,
            errors=take.failed,
        )
        measured.windows.append(window)
        measured.takes.append(take)
        t_last = now
        stable = is_stable(measured.windows, cfg.stability)
        emit(WindowMeasured(point=point, window=window, index=len(measured.windows), stable=stable, p99_ms=latency.p99_ms))
        if metrics is not None:
            metrics.record_window(requests_ok=take.ok, errors=take.errors, latencies_s=take.latencies_s,
                                  duration_s=window.duration_s, offered_rps=point.rate_rps)  # fmt: skip
        if stable or len(measured.windows) >= cfg.max_windows or now - measured_start >= cfg.duration_s:
            return


def _finish(cfg: BenchConfig, point: PointResult, load: int | float, measured: _Measurement, totals: ClientTake,
            nodes: dict[str, str]) -> PointResult:  # fmt: skip
    """The point's figures: rates and latencies from its last windows, counts from all of it."""
    used_windows = measured.windows[-USED_WINDOWS:]
    used = ClientTake.pooled(measured.takes[-USED_WINDOWS:])
    span = sum(w.duration_s for w in used_windows)
    point.ended_at = now_iso()
    point.windows = measured.windows
    point.stable = is_stable(measured.windows, cfg.stability)
    point.status = PointStatus.OK if point.stable else PointStatus.UNSTABLE
    point.measured_s = span
    point.latency = latency_stats(used.latencies_s)
    point.latency_histogram = LatencyHistogram.from_latencies_s(used.latencies_s)
    point.requests_per_s = used.ok / span if span else 0.0
    point.images_per_s = point.requests_per_s * point.images_per_request
    point.requests_sent = totals.sent
    point.requests_ok = totals.ok
    point.requests_failed = totals.failed
    point.requests_incomplete = totals.incomplete
    point.errors = totals.errors
    point.late_sends = totals.late
    point.offered_rps = float(load) if cfg.mode == "open" else None
    point.error_timeline = _timeline(totals.error_events)
    point.client_cpu_pct = used.cpu_pct
    point.client_cpu_saturated = point.client_cpu_pct >= cfg.client_cpu_saturated_pct
    if len(measured.readings) >= 2:
        first, last = measured.readings[-1 - len(used_windows)], measured.readings[-1]
        point.server = server_stats_delta(first.stats, last.stats, cfg.model)
        point.host_cpu = host_cpu_over(first, last, measured_s=span, images=used.ok * point.images_per_request,
                                       client_cpu_s=used.cpu_s)  # fmt: skip
        point.ingress_traffic = traffic_delta(first.ingresses, last.ingresses, nodes)
    if point.requests_ok == 0:
        point.status = PointStatus.FAILED
        point.error = "no request succeeded: " + ", ".join(f"{k}={v}" for k, v in sorted(totals.errors.items()))
    return point


def _timeline(events: list[tuple[float, str]]) -> list[dict[str, Any]]:
    """Errors per second and kind: when a fault happened and how long it lasted."""
    buckets: dict[tuple[int, str], int] = {}
    for t, kind in events:
        key = (int(t), kind)
        buckets[key] = buckets.get(key, 0) + 1
    return [{"t": t, "kind": k, "count": n} for (t, k), n in sorted(buckets.items())]


def _start_sampling(samplers: GpuSamplers) -> bool:
    try:
        samplers.start()
        return True
    except Exception as e:  # GPU figures are extra: a point is measured without them
        log.warning("GPU sampling unavailable: %s", e)
        samplers.close()
        return False


def _gpu_results(samplers: GpuSamplers) -> tuple[list[Any], list[dict[str, Any]]]:
    if not samplers.handles:
        return [], []
    samples = samplers.collect()
    return summarize_gpu_samples(samples), samples

"""Figures read from one group's points: its knee, its likely bottleneck and its engine ceiling.

* **Knee**: walking a group's usable points in order of load, the first step i-1 → i where
  ``Δp99/p99 > k × max(Δthroughput/throughput, 0)`` and ``Δp99/p99 ≥ m`` (k = ``knee_factor``,
  default 2; m = ``knee_min_p99_growth``, default 10 %, so jitter in a flat region is no knee).
  The knee is the load of point i-1: past it, latency grows much faster than throughput.
* **Bottleneck** of a group, read at its peak point, first rule that fires:
  client CPU saturated → ``client``; busiest GPUs ≥ 85 % utilised → ``gpu``;
  queue ≥ 50 % of server time → ``queueing``; GPUs < 50 % utilised with little queueing →
  ``serving-path``; otherwise ``undetermined``.
* **Engine fraction**: peak ÷ (N × engine images/s) at the engine batch size matching the
  server's max batch size (the largest measured batch size not above it).
"""

from __future__ import annotations

import itertools

from rayscale.report.config import DEFAULT_KNEE_FACTOR, DEFAULT_KNEE_MIN_P99_GROWTH
from rayscale.report.types import Bottleneck, Knee, PointRow
from rayscale.results import EngineBenchResult

__all__ = ["GPU_BUSY_PCT", "GPU_IDLE_PCT", "QUEUE_DOMINANT_SHARE", "diagnose", "engine_ceiling", "find_knee"]

GPU_BUSY_PCT = 85.0
GPU_IDLE_PCT = 50.0
QUEUE_DOMINANT_SHARE = 0.5


def find_knee(
    rows: list[PointRow], *, factor: float = DEFAULT_KNEE_FACTOR, min_p99_growth: float = DEFAULT_KNEE_MIN_P99_GROWTH
) -> Knee | None:
    """The first load step where p99 grows > factor × throughput's relative growth (and ≥ min_p99_growth)."""
    usable = sorted(((r.load, r) for r in rows if r.usable and r.load is not None), key=lambda pair: pair[0])
    for (load, prev), (next_load, cur) in itertools.pairwise(usable):
        if not prev.latency_p99_ms or cur.latency_p99_ms is None or prev.images_per_s <= 0:
            continue
        p99_growth = (cur.latency_p99_ms - prev.latency_p99_ms) / prev.latency_p99_ms
        thr_growth = (cur.images_per_s - prev.images_per_s) / prev.images_per_s
        if p99_growth >= min_p99_growth and p99_growth > factor * max(thr_growth, 0.0):
            return Knee(load=load, next_load=next_load, p99_growth=p99_growth, throughput_growth=thr_growth)
    return None


def diagnose(row: PointRow) -> Bottleneck:
    """Name the likely limit at one point from client CPU, GPU utilisation and the server's queue share."""
    util, share = row.gpu_util_mean_pct, row.queue_share
    figures = []
    if util is not None:
        figures.append(f"GPU {util:.0f}% busy")
    if share is not None:
        figures.append(f"queue {share:.0%} of server time")
    if row.server_queue_ms is not None and row.server_compute_ms is not None and row.latency_mean_ms:
        outside = max(row.latency_mean_ms - row.server_queue_ms - row.server_compute_ms, 0.0)
        figures.append(f"{outside / row.latency_mean_ms:.0%} of client latency outside the server's queue+compute")
    figures.append(f"client CPU {row.client_cpu_pct:.0f}%")
    seen = "; ".join(figures)
    if row.client_cpu_saturated:
        return Bottleneck(
            "client",
            f"the load generator is the limit ({seen}): "
            "add client actors or client machines before reading this as a server limit",
        )
    if util is not None and util >= GPU_BUSY_PCT:
        return Bottleneck("gpu", f"GPU-bound ({seen}): more GPUs, or a faster engine (fp16, TensorRT), raise this ceiling")
    if share is not None and share >= QUEUE_DOMINANT_SHARE:
        return Bottleneck(
            "queueing",
            f"requests wait in the server queue while the GPUs are not saturated ({seen}): "
            "raise max batch size or batches in flight, shorten the batch wait, or add replicas",
        )
    if util is not None and util < GPU_IDLE_PCT and (share is None or share < QUEUE_DOMINANT_SHARE):
        return Bottleneck(
            "serving-path",
            f"GPUs mostly idle with little queueing ({seen}): time goes to the serving path "
            "(HTTP proxy, request decode, serialisation); use binary tensors, more proxies or more CPU per replica",
        )
    return Bottleneck("undetermined", f"no rule fired ({seen})" if util is not None else f"no GPU samples ({seen})")


def engine_ceiling(engine: EngineBenchResult, max_batch_size: int | None) -> tuple[int, float] | None:
    """(batch size, images/s) of one engine at the batch matching the server's max batch size.

    The ceiling is the engine with its input already on the GPU (what the card itself can do)
    where the file measured it; a server that overlaps its copies with compute can reach it,
    so the host-input figure would be no ceiling. Older files without that row use host input.
    """
    points = [p for p in engine.points if p.images_per_s > 0]
    ort = [p for p in points if p.backend == "onnxruntime"] or points
    chosen = [p for p in ort if p.input_location == "device"] or [p for p in ort if p.input_location == "host"] or ort
    if not chosen:
        return None
    sizes = sorted({p.batch_size for p in chosen})
    fitting = [s for s in sizes if max_batch_size is None or s <= max_batch_size]
    batch = fitting[-1] if fitting else sizes[0]
    return batch, max(p.images_per_s for p in chosen if p.batch_size == batch)

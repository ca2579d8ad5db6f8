"""Groups: one series at one size, summarised, scaled against its smallest size and compared like for like.

* A **group** is a series at one size: its GPU count, or its replica count for a series that ran
  on CPU.
* **Peak throughput** of a group: the highest images/s among its usable points.
* **Scaling efficiency** at N GPUs: ``peak(N) / (N × peak(1))``. Where a series has no 1-GPU
  peak, the smallest GPU count B with a peak is the base: ``(peak(N) / N) / (peak(B) / B)``.
* **Like for like**: a leader and its ratio compare series with the same transport (http, grpc,
  handle) and images per request, at the same size and hardware. Other series stay in the
  tables but are never ranked against each other.
"""

from __future__ import annotations

from rayscale.report.config import ReportConfig
from rayscale.report.costs import cost_per_1000_images_usd
from rayscale.report.figures import diagnose, engine_ceiling, find_knee
from rayscale.report.types import Comparison, GroupSummary, PointRow
from rayscale.results import EngineBenchResult

__all__ = ["compare_like_for_like", "set_scaling_efficiency", "summarise_group"]


def summarise_group(
    rows: list[PointRow],
    config: ReportConfig,
    engine: EngineBenchResult | None,
    max_batch_size: int | None,
) -> GroupSummary:
    """One group from its rows in order of load: peak, best under the SLO, goodput, knee, bottleneck, engine ceiling."""
    first = rows[0]
    usable = [r for r in rows if r.usable]
    g = GroupSummary(
        series=first.series,
        target=first.target,
        transport=first.transport,
        transport_kind=first.transport_kind,
        ingress=first.ingress,
        processes_per_gpu=first.processes_per_gpu,
        hardware=first.hardware,
        mode=first.mode,
        images_per_request=first.images_per_request,
        gpus=first.gpus,
        units=first.units,
        replicas=first.replicas,
        points=len(rows),
        usable_points=len(usable),
        hourly_cost_usd=config.hourly_cost_usd(first.hardware, first.units),
        max_batch_size=max_batch_size,
        flags=sorted({f for r in rows for f in r.flags}),
    )
    if not usable:
        return g
    peak = max(usable, key=lambda r: r.images_per_s)
    g.peak_images_per_s, g.peak_load = peak.images_per_s, peak.load
    g.peak_latency_p50_ms, g.peak_latency_p99_ms = peak.latency_p50_ms, peak.latency_p99_ms
    g.mean_batch_images_at_peak = peak.mean_batch_images
    g.peak_server_cpu_s_per_1000_images, g.peak_server_cores_per_gpu = (
        peak.server_cpu_s_per_1000_images,
        peak.server_cores_per_gpu,
    )
    g.cost_per_1000_images_usd = cost_per_1000_images_usd(g.hourly_cost_usd, peak.images_per_s)
    slo_p99_ms = config.slo_p99_ms
    if slo_p99_ms is not None:
        meeting = [r for r in usable if r.latency_p99_ms is not None and r.latency_p99_ms <= slo_p99_ms]
        if meeting:
            best = max(meeting, key=lambda r: r.images_per_s)
            g.slo_images_per_s, g.slo_load, g.slo_latency_p99_ms = best.images_per_s, best.load, best.latency_p99_ms
        g.peak_goodput_images_per_s, g.peak_goodput_method = peak.goodput_images_per_s, peak.goodput_method
        rated = [(r.goodput_images_per_s, r) for r in usable if r.goodput_images_per_s is not None]
        if rated:
            g.goodput_images_per_s, best_goodput = max(rated, key=lambda pair: pair[0])
            g.goodput_load, g.goodput_method = best_goodput.load, best_goodput.goodput_method
    g.knee = find_knee(rows, factor=config.knee_factor, min_p99_growth=config.knee_min_p99_growth)
    g.bottleneck = diagnose(peak)
    if engine is not None:
        ceiling = engine_ceiling(engine, max_batch_size)
        if ceiling is not None:
            g.engine_batch_size = ceiling[0]
            g.engine_ceiling_images_per_s = ceiling[1] * g.units
            g.engine_fraction = peak.images_per_s / g.engine_ceiling_images_per_s
    return g


def set_scaling_efficiency(groups: list[GroupSummary], series: list[str]) -> None:
    """Fill each group's efficiency against its series' smallest size (GPUs, or CPU replicas) with a peak."""
    for label in series:
        peaked = sorted(((g.peak_images_per_s, g) for g in groups if g.series == label and g.peak_images_per_s),
                        key=lambda pair: pair[1].units)  # fmt: skip
        if not peaked:
            continue
        base_peak, base = peaked[0]
        per_unit_base = base_peak / base.units
        for peak, g in peaked:
            g.efficiency = (peak / g.units) / per_unit_base
            g.efficiency_base_gpus = base.units


def compare_like_for_like(groups: list[GroupSummary], series: list[str]) -> list[Comparison]:
    """One comparison per (hardware, size, transport, images per request): leaders never cross them."""
    order = {s: i for i, s in enumerate(series)}
    classes = sorted(
        {(g.hardware, g.units, g.transport_kind, g.images_per_request) for g in groups},
        key=lambda c: (c[0] != "GPU", c[1], c[2], c[3]),
    )
    out = []
    for hardware, units, transport, ipr in classes:
        at = sorted(
            (
                g
                for g in groups
                if (g.hardware, g.units, g.transport_kind, g.images_per_request) == (hardware, units, transport, ipr)
            ),
            key=lambda g: order[g.series],
        )
        peaks = {g.series: g.peak_images_per_s for g in at if g.peak_images_per_s}
        ranked = sorted(peaks.items(), key=lambda kv: kv[1], reverse=True)
        ranked_ok = len(ranked) > 1
        out.append(
            Comparison(
                gpus=at[0].gpus,
                peak_images_per_s=peaks,
                peak_latency_p99_ms={g.series: g.peak_latency_p99_ms for g in at if g.series in peaks},
                slo_images_per_s={g.series: g.slo_images_per_s for g in at if g.slo_images_per_s},
                leader=ranked[0][0] if ranked_ok else None,
                lead_ratio=ranked[0][1] / ranked[1][1] if ranked_ok else None,
                runner_up=ranked[1][0] if ranked_ok else None,
                hardware=hardware,
                units=units,
                transport_kind=transport,
                images_per_request=ipr,
                goodput_images_per_s={g.series: g.goodput_images_per_s for g in at if g.goodput_images_per_s is not None},
                goodput_method={g.series: g.goodput_method for g in at if g.goodput_method is not None},
            )
        )
    return out

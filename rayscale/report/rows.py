"""One measured point as one row of the report (and of summary.csv): its size, load, flags, cost and goodput.

* A point ran on **CPU** when its server's record says so (``gpus_per_replica`` 0, provider
  ``cpu``, Triton instances of kind CPU) or no hardware record shows a GPU. CPU points are
  labelled CPU, sized by replicas and priced only at ``cpu_hour_cost_usd``, never at a GPU price.
* A point is **usable** when its status is ``ok``, its windows were stable and it served images.
  Unstable, incomplete and failed points are listed and flagged, never used as peaks or picks.
* **Host CPU**: the server's processes' and the client actors' CPU-seconds per 1000 images over
  the point's windows, and the server's cores per GPU (its CPU-seconds per second ÷ GPUs) at the
  point's rate; None where not measured.
"""

from __future__ import annotations

import math

from rayscale.report.config import ReportConfig
from rayscale.report.costs import cost_per_1000_images_usd
from rayscale.report.goodput import goodput_images_per_s, goodput_method
from rayscale.report.layout import Layout, layout_of
from rayscale.report.types import PointRow
from rayscale.results import BenchResult, PointResult

__all__ = ["CLIENT_SATURATED_PCT", "USABLE_STATUS", "load_of", "point_row", "size_of"]

USABLE_STATUS = "ok"
CLIENT_SATURATED_PCT = 95.0


def _gpus_of(point: PointResult, result: BenchResult) -> int:
    """GPUs a GPU point used: replicas × gpus_per_replica where the serve config says, else replicas."""
    per_replica = (result.serve_config or {}).get("gpus_per_replica")
    try:
        per_replica = float(per_replica) if per_replica is not None else None
    except (TypeError, ValueError):
        per_replica = None
    if per_replica and per_replica > 0:
        return max(1, math.ceil(point.replicas * per_replica - 1e-9))
    return max(1, point.replicas)


def size_of(point: PointResult, result: BenchResult, layout: Layout) -> tuple[int, int]:
    """(GPUs used, the size its series scales over): on CPU no GPUs, and replicas are the size."""
    if layout.hardware == "CPU":
        return 0, max(1, point.replicas)
    gpus = _gpus_of(point, result)
    return gpus, gpus


def load_of(point: PointResult) -> float | None:
    """Offered requests/s of an open-loop point (the rate set, else the rate offered), concurrency of a closed one."""
    if point.mode == "open":
        return point.rate_rps if point.rate_rps is not None else point.offered_rps
    return float(point.concurrency) if point.concurrency is not None else None


def _gpu_util(point: PointResult, gpus: int) -> float | None:
    """Mean utilisation of the `gpus` busiest sampled GPUs (idle GPUs on a bigger host don't dilute it)."""
    sampled = [g for g in point.gpus if g.samples > 0 or g.util_mean_pct > 0]
    if not sampled:
        return None
    busiest = sorted((g.util_mean_pct for g in sampled), reverse=True)[: max(1, gpus)]
    return sum(busiest) / len(busiest)


def _flags(point: PointResult) -> list[str]:
    flags = []
    if point.status != USABLE_STATUS:
        flags.append(point.status + (f": {point.error}" if point.error else ""))
    elif not point.stable:
        flags.append("unstable windows")
    elif point.images_per_s <= 0:
        flags.append("no images served")
    if point.requests_failed:
        flags.append(f"{point.requests_failed} failed requests")
    if point.requests_incomplete and point.status == USABLE_STATUS:
        flags.append(f"{point.requests_incomplete} incomplete requests")
    if _client_saturated(point):
        flags.append(f"client CPU saturated ({point.client_cpu_pct:.0f}% of a core): throughput is a lower bound")
    if point.late_sends and point.mode == "open":
        flags.append(f"{point.late_sends} late sends")
    return flags


def _client_saturated(point: PointResult) -> bool:
    return bool(point.client_cpu_saturated) or point.client_cpu_pct >= CLIENT_SATURATED_PCT


def _usable(point: PointResult) -> bool:
    return point.status == USABLE_STATUS and point.stable and point.images_per_s > 0


def point_row(point: PointResult, result: BenchResult, source: str, series: str, config: ReportConfig) -> PointRow:
    """One point from ``source`` as a row of ``series``, priced and rated against the SLO by ``config``."""
    layout = layout_of(point, result)
    gpus, units = size_of(point, result, layout)
    hourly = config.hourly_cost_usd(layout.hardware, units)
    slo_p99_ms = config.slo_p99_ms
    usable = _usable(point)
    server = point.server
    queue = compute = share = batch = None
    if server is not None and server.requests > 0:
        queue, compute = server.queue_ms_per_request, server.compute_ms_per_request
        share = queue / (queue + compute) if queue + compute > 0 else None
        batch = server.mean_batch_images or None
    lat = point.latency
    row = PointRow(
        source=source,
        series=series,
        target=point.target,
        transport=point.transport,
        transport_kind=layout.transport,
        ingress=layout.ingress,
        processes_per_gpu=layout.processes_per_gpu,
        hardware=layout.hardware,
        mode=point.mode,
        images_per_request=point.images_per_request,
        replicas=point.replicas,
        gpus=gpus,
        units=units,
        load=load_of(point),
        concurrency=point.concurrency,
        rate_rps=point.rate_rps,
        status=point.status if point.status != USABLE_STATUS or point.stable else "unstable",
        usable=usable,
        flags=_flags(point),
        images_per_s=point.images_per_s,
        goodput_images_per_s=None,
        requests_per_s=point.requests_per_s,
        latency_mean_ms=lat.measured("mean_ms"),
        latency_p50_ms=lat.measured("p50_ms"),
        latency_p90_ms=lat.measured("p90_ms"),
        latency_p95_ms=lat.measured("p95_ms"),
        latency_p99_ms=lat.measured("p99_ms"),
        latency_p999_ms=lat.measured("p999_ms"),
        latency_max_ms=lat.measured("max_ms"),
        requests_ok=point.requests_ok,
        requests_failed=point.requests_failed,
        requests_incomplete=point.requests_incomplete,
        server_queue_ms=queue,
        server_compute_ms=compute,
        queue_share=share,
        mean_batch_images=batch,
        gpu_util_mean_pct=_gpu_util(point, gpus) if gpus else None,
        client_cpu_pct=point.client_cpu_pct,
        client_cpu_saturated=_client_saturated(point),
        hourly_cost_usd=hourly,
        cost_per_1000_images_usd=cost_per_1000_images_usd(hourly, point.images_per_s) if usable else None,
        meets_slo=(usable and lat.p99_ms <= slo_p99_ms) if slo_p99_ms is not None else None,
    )
    _set_host_cpu(row, point)
    row.goodput_images_per_s = goodput_images_per_s(row, slo_p99_ms, point.latency_histogram)
    if row.goodput_images_per_s is not None:
        row.goodput_method = goodput_method(point.latency_histogram)
    return row


def _set_host_cpu(row: PointRow, point: PointResult) -> None:
    """The host CPU figures of a point that measured them: per 1000 images, and the server's cores per GPU."""
    cpu = point.host_cpu
    if cpu is None:
        return
    row.server_cpu_s_per_1000_images = cpu.server_cpu_s_per_1000_images
    row.client_cpu_s_per_1000_images = cpu.client_cpu_s_per_1000_images
    row.server_cores = cpu.server_cores
    row.server_cores_per_gpu = cpu.server_cores / row.gpus if cpu.server_cores is not None and row.gpus else None
    row.server_cpu_parts = " + ".join(cpu.server_parts) or None

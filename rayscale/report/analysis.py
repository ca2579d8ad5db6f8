"""The report's figures, computed from results files with no plotting and no I/O.

Definitions (the report's "Definitions" section repeats them):

* A **series** is one way of serving measured at several loads: (target, transport, mode,
  images per request, and the layout: hardware, ingress, processes per GPU). A **group** is a
  series at one size: its GPU count, or its replica count for a series that ran on CPU.
* A point ran on **CPU** when its server's record says so (``gpus_per_replica`` 0, provider
  ``cpu``, Triton instances of kind CPU) or no hardware record shows a GPU. CPU points are
  labelled CPU and priced only at ``cpu_hour_cost_usd``, never at a GPU price.
* A point is **usable** when its status is ``ok``, its windows were stable and it served images.
  Unstable, incomplete and failed points are listed and flagged, never used as peaks or picks.
* **Peak throughput** of a group: the highest images/s among its usable points.
* **Scaling efficiency** at N GPUs: ``peak(N) / (N × peak(1))``. Where a series has no 1-GPU
  peak, the smallest GPU count B with a peak is the base: ``(peak(N) / N) / (peak(B) / B)``.
* **Cost per 1000 images**: ``hourly cost of N GPUs / (3600 × images/s) × 1000``.
* **Goodput** (with an SLO): images/s from requests that met it. Where a point's results keep a
  latency histogram (rayscale's load generator writes one), goodput is its throughput × the share
  of requests in buckets whose upper edge is within the SLO (method ``histogram``: exact when the
  SLO is a bucket edge, otherwise low by at most the one bucket straddling it). Elsewhere
  (perf_analyzer imports, older files) only percentiles are kept, so goodput is the point's
  throughput when its p99 meets the SLO (≥ 99 % of its requests did) and 0 otherwise (method
  ``p99-estimate``).
* **Like for like**: a leader and its ratio compare series with the same transport (http, grpc,
  handle) and images per request, at the same size and hardware. Other series stay in the
  tables but are never ranked against each other.
* **Knee**: walking a group's usable points in order of load, the first step i-1 → i where
  ``Δp99/p99 > k × max(Δthroughput/throughput, 0)`` and ``Δp99/p99 ≥ m`` (k = ``knee_factor``,
  default 2; m = ``knee_min_p99_growth``, default 10 %, so jitter in a flat region is no knee).
  The knee is the load of point i-1: past it, latency grows much faster than throughput.
* **Best under the SLO**: the usable point with the highest images/s whose p99 ≤ the SLO.
* **Cheapest meeting the throughput target**: among groups whose capacity (the best images/s
  under the SLO when one is given, else the peak) reaches the target, the lowest hourly cost;
  without prices, the fewest GPUs. Ties go to the higher capacity.
* **Bottleneck** of a group, read at its peak point, first rule that fires:
  client CPU saturated → ``client``; busiest GPUs ≥ 85 % utilised → ``gpu``;
  queue ≥ 50 % of server time → ``queueing``; GPUs < 50 % utilised with little queueing →
  ``serving-path``; otherwise ``undetermined``.
* **Engine fraction**: peak ÷ (N × engine images/s) at the engine batch size matching the
  server's max batch size (the largest measured batch size not above it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from rayscale.errors import ConfigError, ResultsError
from rayscale.report.config import DEFAULT_KNEE_FACTOR, DEFAULT_KNEE_MIN_P99_GROWTH, ReportConfig
from rayscale.report.layout import Layout, layout_of
from rayscale.results import BenchResult, EngineBenchResult, LatencyHistogram, PointResult

__all__ = [
    "Bottleneck",
    "Comparison",
    "GroupSummary",
    "Knee",
    "Mismatch",
    "Pick",
    "PointRow",
    "Report",
    "build_report",
    "check_comparable",
    "cost_per_1000_images_usd",
    "find_knee",
    "format_load",
    "goodput_images_per_s",
    "goodput_method",
    "parse_costs",
    "size_label",
]

USABLE_STATUS = "ok"
GPU_BUSY_PCT = 85.0
GPU_IDLE_PCT = 50.0
QUEUE_DOMINANT_SHARE = 0.5
CLIENT_SATURATED_PCT = 95.0
GOODPUT_HISTOGRAM = "histogram"  # throughput × share of requests within the SLO, from the point's latency histogram
GOODPUT_P99_ESTIMATE = "p99-estimate"  # throughput where p99 ≤ SLO, else 0: the point kept percentiles only
GOODPUT_MIXED = "mixed"  # a report's points used both methods (each row names its own)
_COSTS_EXAMPLE = "e.g. --costs '1gpu:1.5,2gpu:3.0,4gpu:6.0'"


def format_load(load: float | None) -> str:
    """A concurrency or rate as people write it: 16, 250.5, or '–' when unknown."""
    if load is None:
        return "–"
    return str(int(load)) if float(load).is_integer() else f"{load:g}"


def size_label(hardware: str, units: int) -> str:
    """'2 GPU(s)', or 'CPU, 2 replica(s)' for a run without GPUs."""
    return f"CPU, {units} replica(s)" if hardware == "CPU" else f"{units} GPU(s)"


# ---- inputs ------------------------------------------------------------------------------------


def parse_costs(text: str) -> dict[int, float]:
    """'1gpu:1.5,2gpu:3' -> {1: 1.5, 2: 3.0}: hourly price in dollars of N GPUs together."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"--costs is empty: give the hourly price of each GPU count, {_COSTS_EXAMPLE}")
    costs: dict[int, float] = {}
    for part in parts:
        count_text, sep, price_text = part.partition(":")
        if not sep:
            raise ConfigError(f"--costs entry {part!r} has no ':': write GPUS:PRICE_PER_HOUR, {_COSTS_EXAMPLE}")
        count_text = count_text.strip().lower()
        for suffix in ("gpus", "gpu"):
            if count_text.endswith(suffix):
                count_text = count_text[: -len(suffix)].strip()
                break
        try:
            gpus = int(count_text)
        except ValueError:
            raise ConfigError(f"--costs entry {part!r}: GPU count must be an integer, {_COSTS_EXAMPLE}") from None
        try:
            price = float(price_text.strip().lstrip("$"))
        except ValueError:
            raise ConfigError(
                f"--costs entry {part!r}: price must be a number of dollars per hour, {_COSTS_EXAMPLE}"
            ) from None
        if gpus < 1:
            raise ConfigError(f"--costs entry {part!r}: GPU count must be ≥ 1, got {gpus}")
        if not math.isfinite(price) or price <= 0:
            raise ConfigError(f"--costs entry {part!r}: price must be > 0 dollars per hour, got {price_text.strip()}")
        if gpus in costs:
            raise ConfigError(f"--costs gives {gpus} GPU(s) twice: keep one price per GPU count")
        costs[gpus] = price
    return costs


def cost_per_1000_images_usd(hourly_cost_usd: float | None, images_per_s: float | None) -> float | None:
    """Dollars per 1000 images at a sustained rate: hourly / (3600 × images/s) × 1000."""
    if hourly_cost_usd is None or not images_per_s or images_per_s <= 0:
        return None
    return hourly_cost_usd / (3600.0 * images_per_s) * 1000.0


# ---- typed report --------------------------------------------------------------------------------


@dataclass
class Mismatch:
    """A setting that differs between the compared files: value -> files that have it."""

    setting: str
    values: dict[str, list[str]]

    def describe(self, max_files: int = 3) -> str:
        def names(files: list[str]) -> str:
            more = f" and {len(files) - max_files} more" if len(files) > max_files else ""
            return ", ".join(files[:max_files]) + more

        parts = [f"{value} in {names(files)}" for value, files in self.values.items()]
        return f"{self.setting} differs: " + "; ".join(parts)


@dataclass
class PointRow:
    """One measured point, flattened (one row of summary.csv)."""

    source: str
    series: str
    target: str
    transport: str  # as the load generator recorded it: http-binary, http-json, handle, perf_analyzer
    transport_kind: str  # http | grpc | handle: what like-for-like comparisons match on
    ingress: str | None  # direct | proxy | haproxy (a rayscale app over HTTP/gRPC), else None
    processes_per_gpu: float | None
    hardware: str  # GPU | CPU
    mode: str
    images_per_request: int
    replicas: int
    gpus: int  # GPUs used; 0 on CPU
    units: int  # the size a series scales over: GPUs, or replicas on CPU
    load: float | None  # concurrency (closed loop) or offered requests/s (open loop)
    concurrency: int | None
    rate_rps: float | None
    status: str
    usable: bool
    flags: list[str]
    images_per_s: float
    goodput_images_per_s: float | None  # images/s from requests within the SLO (None: no SLO given)
    requests_per_s: float
    latency_mean_ms: float | None
    latency_p50_ms: float | None
    latency_p90_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    latency_p999_ms: float | None
    latency_max_ms: float | None
    requests_ok: int
    requests_failed: int
    requests_incomplete: int
    server_queue_ms: float | None
    server_compute_ms: float | None
    queue_share: float | None  # queue / (queue + compute), server side
    mean_batch_images: float | None
    gpu_util_mean_pct: float | None  # mean over the `gpus` busiest GPUs sampled
    client_cpu_pct: float
    client_cpu_saturated: bool
    hourly_cost_usd: float | None
    cost_per_1000_images_usd: float | None
    meets_slo: bool | None
    goodput_method: str | None = None  # histogram | p99-estimate: how goodput_images_per_s was computed


@dataclass
class Knee:
    load: float  # the last load before latency runs away
    next_load: float
    p99_growth: float  # Δp99/p99 over the step
    throughput_growth: float  # Δthroughput/throughput over the step


@dataclass
class Bottleneck:
    cause: str  # client | gpu | queueing | serving-path | undetermined
    detail: str


@dataclass
class GroupSummary:
    """One series at one size (GPU count, or replica count on CPU)."""

    series: str
    target: str
    transport: str
    transport_kind: str
    ingress: str | None
    processes_per_gpu: float | None
    hardware: str
    mode: str
    images_per_request: int
    gpus: int
    units: int
    replicas: int
    points: int
    usable_points: int
    peak_images_per_s: float | None = None
    peak_load: float | None = None
    peak_latency_p50_ms: float | None = None
    peak_latency_p99_ms: float | None = None
    efficiency: float | None = None
    efficiency_base_gpus: int | None = None
    hourly_cost_usd: float | None = None
    cost_per_1000_images_usd: float | None = None
    slo_images_per_s: float | None = None
    slo_load: float | None = None
    slo_latency_p99_ms: float | None = None
    peak_goodput_images_per_s: float | None = None  # goodput at the peak point
    goodput_images_per_s: float | None = None  # the best goodput among usable points
    goodput_load: float | None = None
    peak_goodput_method: str | None = None  # histogram | p99-estimate
    goodput_method: str | None = None
    knee: Knee | None = None
    bottleneck: Bottleneck | None = None
    max_batch_size: int | None = None
    mean_batch_images_at_peak: float | None = None
    engine_batch_size: int | None = None
    engine_ceiling_images_per_s: float | None = None
    engine_fraction: float | None = None
    flags: list[str] = field(default_factory=list)


@dataclass
class Pick:
    """A configuration chosen by a rule (best under the SLO, cheapest meeting a target)."""

    series: str
    target: str
    gpus: int
    load: float | None
    images_per_s: float
    latency_p99_ms: float | None
    hourly_cost_usd: float | None
    cost_per_1000_images_usd: float | None
    reason: str
    hardware: str = "GPU"
    units: int = 1


@dataclass
class Comparison:
    """Like-for-like series side by side: one size and hardware, one transport, one request size.

    Only series in the same comparison are ranked; a series with no like-for-like partner has a
    comparison of its own with no leader.
    """

    gpus: int
    peak_images_per_s: dict[str, float]
    peak_latency_p99_ms: dict[str, float]
    slo_images_per_s: dict[str, float]
    leader: str | None
    lead_ratio: float | None  # leader's peak ÷ the runner-up's
    runner_up: str | None = None
    hardware: str = "GPU"
    units: int = 1
    transport_kind: str = "http"
    images_per_request: int = 1
    goodput_images_per_s: dict[str, float] = field(default_factory=dict)  # each series' best goodput
    goodput_method: dict[str, str] = field(default_factory=dict)  # how each series' best goodput was computed

    @property
    def like_for_like(self) -> str:
        """'http, 32 img/request'"""
        return f"{self.transport_kind}, {self.images_per_request} img/request"


@dataclass
class Report:
    sources: list[str]
    setup: dict[str, Any]
    parameters: dict[str, Any]
    mismatches: list[Mismatch]
    series: list[str]
    load_axis: dict[str, str]  # series -> "concurrency" | "rate_rps"
    points: list[PointRow]
    groups: list[GroupSummary]
    comparisons: list[Comparison]
    best_under_slo: Pick | None
    best_under_slo_by_series: dict[str, Pick]
    cheapest_for_target: Pick | None
    notes: list[str]
    kind: str = "report"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def groups_of(self, series: str) -> list[GroupSummary]:
        return sorted((g for g in self.groups if g.series == series), key=lambda g: g.units)

    def points_of(self, series: str, units: int) -> list[PointRow]:
        """A series' points at one size (GPUs, or replicas on CPU), in order of load."""
        rows = [p for p in self.points if p.series == series and p.units == units]
        return sorted(rows, key=lambda p: (p.load is None, p.load or 0.0))


# ---- apples to apples ----------------------------------------------------------------------------


def _short_sha(sha: Any) -> str | None:
    return str(sha)[:12] if sha else None


def _input_size(model: dict[str, Any]) -> str | None:
    for spec in model.get("inputs") or []:
        shape = spec.get("shape")
        if shape:
            return "x".join(str(d) for d in shape[1:])
    return None


def _gpu_type(environment: dict[str, Any]) -> str:
    names = sorted({str(g.get("name", "?")) for g in environment.get("gpus") or []})
    return " + ".join(names) if names else "no GPU"


def _max_batch_size(result: BenchResult) -> int | None:
    for source in (result.serve_config or {}, result.config or {}):
        value = source.get("max_batch_size")
        if value is not None:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


def _comparable_settings(result: BenchResult | EngineBenchResult) -> dict[str, Any]:
    model = result.model or {}
    settings: dict[str, Any] = {
        "model sha256": _short_sha(model.get("sha256")),
        "precision": model.get("precision"),
        "input size": _input_size(model),
        "GPU type": _gpu_type(result.environment or {}),
    }
    if isinstance(result, BenchResult):
        settings["max batch size"] = _max_batch_size(result)
    return settings


def check_comparable(
    results: list[BenchResult | EngineBenchResult], sources: list[str], *, allow_mismatch: bool
) -> list[Mismatch]:
    """The settings that differ between files (None: not recorded, not compared).

    Different settings make the comparison meaningless, so they are a ResultsError naming what
    differs and where, unless ``allow_mismatch``; then they are returned for the report to state.
    """
    by_setting: dict[str, dict[str, list[str]]] = {}
    for result, source in zip(results, sources):
        for setting, value in _comparable_settings(result).items():
            if value is not None:
                by_setting.setdefault(setting, {}).setdefault(str(value), []).append(source)
    mismatches = [Mismatch(s, values) for s, values in by_setting.items() if len(values) > 1]
    if mismatches and not allow_mismatch:
        raise ResultsError(
            "results are not comparable: "
            + " | ".join(m.describe() for m in mismatches)
            + ": compare like with like, or pass --allow-mismatch to report them anyway"
        )
    return mismatches


# ---- points --------------------------------------------------------------------------------------


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


def _size_of(point: PointResult, result: BenchResult, layout: Layout) -> tuple[int, int]:
    """(GPUs used, the size its series scales over): on CPU no GPUs, and replicas are the size."""
    if layout.hardware == "CPU":
        return 0, max(1, point.replicas)
    gpus = _gpus_of(point, result)
    return gpus, gpus


def goodput_images_per_s(row: PointRow, slo_p99_ms: float | None,
                         histogram: LatencyHistogram | None = None) -> float | None:  # fmt: skip
    """Images/s from requests that met the SLO.

    With the point's latency histogram: throughput × the share of requests within the SLO (a
    bucket straddling it counts as missing it). Without one, the p99 estimate: the point's
    throughput when its p99 meets the SLO, else 0; it overstates by at most the 1 % of requests
    above p99 where the SLO holds, and counts nothing where it does not. None without an SLO, for
    an unusable point, or where no latency was measured.
    """
    if slo_p99_ms is None or not row.usable:
        return None
    if goodput_method(histogram) == GOODPUT_HISTOGRAM:
        return row.images_per_s * histogram.fraction_within(slo_p99_ms)
    if row.latency_p99_ms is None:
        return None
    return row.images_per_s if row.latency_p99_ms <= slo_p99_ms else 0.0


def goodput_method(histogram: LatencyHistogram | None) -> str:
    """``histogram`` where the point kept a latency histogram with requests in it, else ``p99-estimate``."""
    return GOODPUT_HISTOGRAM if histogram is not None and histogram.count else GOODPUT_P99_ESTIMATE


def _load_of(point: PointResult) -> float | None:
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


def _transport_text(transport: str, layout: Layout) -> str:
    """The transport as compared (http, grpc, handle), with JSON bodies or another client named."""
    if transport.endswith("-json"):
        return f"{layout.transport} json"
    if transport in ("handle", layout.transport) or transport.startswith(("http", "grpc")):
        return layout.transport
    return f"{layout.transport} ({transport})"  # http (perf_analyzer)


def _series_labels(keys: list[tuple]) -> dict[tuple, str]:
    """Name each series by its target, transport, layout and images per request (the loop only where it varies)."""
    loop_varies = len({k[2] for k in keys}) > 1
    labels = {}
    for key in keys:
        target, transport, mode, ipr, layout = key
        via = f" via {layout.ingress}" if layout.ingress else ""
        parts = [target, _transport_text(transport, layout) + via]
        if layout.hardware == "CPU":
            parts.append("CPU")
        elif layout.processes_per_gpu is not None:
            parts.append(layout.per_gpu_text)
        if loop_varies:
            parts.append(f"{mode} loop")
        parts.append(f"{ipr} img/req")
        labels[key] = ", ".join(parts)
    return labels


def _row(point: PointResult, result: BenchResult, source: str, series: str, config: ReportConfig) -> PointRow:
    layout = layout_of(point, result)
    gpus, units = _size_of(point, result, layout)
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
        load=_load_of(point),
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
    row.goodput_images_per_s = goodput_images_per_s(row, slo_p99_ms, point.latency_histogram)
    if row.goodput_images_per_s is not None:
        row.goodput_method = goodput_method(point.latency_histogram)
    return row


# ---- per-group figures ---------------------------------------------------------------------------


def find_knee(
    rows: list[PointRow], *, factor: float = DEFAULT_KNEE_FACTOR, min_p99_growth: float = DEFAULT_KNEE_MIN_P99_GROWTH
) -> Knee | None:
    """The first load step where p99 grows > factor × throughput's relative growth (and ≥ min_p99_growth)."""
    usable = sorted((r for r in rows if r.usable and r.load is not None), key=lambda r: r.load)
    for prev, cur in zip(usable, usable[1:]):
        if not prev.latency_p99_ms or cur.latency_p99_ms is None or prev.images_per_s <= 0:
            continue
        p99_growth = (cur.latency_p99_ms - prev.latency_p99_ms) / prev.latency_p99_ms
        thr_growth = (cur.images_per_s - prev.images_per_s) / prev.images_per_s
        if p99_growth >= min_p99_growth and p99_growth > factor * max(thr_growth, 0.0):
            return Knee(load=prev.load, next_load=cur.load, p99_growth=p99_growth, throughput_growth=thr_growth)
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
        return Bottleneck(
            "gpu", f"GPU-bound ({seen}): more GPUs, or a faster engine (fp16, TensorRT), raise this ceiling"
        )
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


def _engine_ceiling(engine: EngineBenchResult, max_batch_size: int | None) -> tuple[int, float] | None:
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


# ---- picks ---------------------------------------------------------------------------------------


def _pick_best_under_slo(rows: list[PointRow], slo_p99_ms: float) -> Pick | None:
    meeting = [r for r in rows if r.usable and r.latency_p99_ms is not None and r.latency_p99_ms <= slo_p99_ms]
    if not meeting:
        return None
    best = max(meeting, key=lambda r: (r.images_per_s, -r.gpus))
    return Pick(
        series=best.series,
        target=best.target,
        gpus=best.gpus,
        load=best.load,
        images_per_s=best.images_per_s,
        latency_p99_ms=best.latency_p99_ms,
        hourly_cost_usd=best.hourly_cost_usd,
        cost_per_1000_images_usd=best.cost_per_1000_images_usd,
        reason=f"highest throughput with p99 ≤ {slo_p99_ms:g} ms",
        hardware=best.hardware,
        units=best.units,
    )


def _pick_cheapest(groups: list[GroupSummary], target_ips: float, slo_p99_ms: float | None) -> Pick | None:
    def capacity(g: GroupSummary) -> tuple[float | None, float | None, float | None]:
        if slo_p99_ms is not None:
            return g.slo_images_per_s, g.slo_load, g.slo_latency_p99_ms
        return g.peak_images_per_s, g.peak_load, g.peak_latency_p99_ms

    candidates = [g for g in groups if (capacity(g)[0] or 0.0) >= target_ips]
    if not candidates:
        return None
    priced = all(g.hourly_cost_usd is not None for g in candidates)
    if priced:
        best = min(candidates, key=lambda g: (g.hourly_cost_usd, -capacity(g)[0]))
        basis = "lowest hourly cost"
    else:
        best = min(candidates, key=lambda g: (g.gpus, g.units, -capacity(g)[0]))
        basis = "fewest GPUs (no price for every candidate)"
    ips, load, p99 = capacity(best)
    slo_text = f" with p99 ≤ {slo_p99_ms:g} ms" if slo_p99_ms is not None else ""
    return Pick(
        series=best.series,
        target=best.target,
        gpus=best.gpus,
        load=load,
        images_per_s=ips,
        latency_p99_ms=p99,
        hourly_cost_usd=best.hourly_cost_usd,
        cost_per_1000_images_usd=cost_per_1000_images_usd(best.hourly_cost_usd, ips),
        reason=f"{basis} among configurations reaching {target_ips:g} img/s{slo_text}",
        hardware=best.hardware,
        units=best.units,
    )


# ---- setup ---------------------------------------------------------------------------------------


def _setup(
    results: list[BenchResult], sources: list[str], engine: EngineBenchResult | None, engine_name: str
) -> dict[str, Any]:
    """What was measured and where, each value with the files it came from."""

    def collect(values: list[tuple[str, Any]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for source, value in values:
            if value not in (None, "", [], {}):
                out.setdefault(str(value), []).append(source)
        return out

    everything: list[tuple[str, BenchResult | EngineBenchResult]] = list(zip(sources, results))
    if engine is not None:
        everything.append((engine_name, engine))
    env = [(s, r.environment or {}) for s, r in everything]
    model = [(s, r.model or {}) for s, r in everything]
    versions: dict[str, dict[str, list[str]]] = {}
    for source, e in env:
        for package, version in (e.get("versions") or {}).items():
            versions.setdefault(package, {}).setdefault(str(version), []).append(source)
    cpu = [(s, (e.get("cpu") or {})) for s, e in env]
    layouts: dict[str, dict[str, list[str]]] = {}
    for source, r in zip(sources, results):
        for target, layout in sorted({(p.target, layout_of(p, r)) for p in r.points}, key=str):
            layouts.setdefault(target, {}).setdefault(layout.describe(), []).append(source)
    serve_configs: dict[str, dict[str, list[str]]] = {}
    for source, r in zip(sources, results):
        targets = sorted({p.target for p in r.points}) or ["?"]
        if r.serve_config:
            key = " / ".join(targets)
            text = ", ".join(f"{k}={v}" for k, v in sorted(r.serve_config.items()) if not isinstance(v, (dict, list)))
            serve_configs.setdefault(key, {}).setdefault(text, []).append(source)
    return {
        "gpu_type": collect([(s, _gpu_type(e)) for s, e in env]),
        "gpu_count_on_host": collect([(s, len(e.get("gpus") or [])) for s, e in env]),
        "gpu_driver": collect([(s, e.get("gpu_driver")) for s, e in env]),
        "cpu": collect([(s, f"{c.get('model', '?')} ({c.get('logical_cores', '?')} logical cores)") for s, c in cpu]),
        "memory_gib": collect(
            [(s, f"{e['memory_bytes'] / 2**30:.0f}") for s, e in env if isinstance(e.get("memory_bytes"), (int, float))]
        ),
        "hostname": collect([(s, e.get("hostname")) for s, e in env]),
        "git_commit": collect([(s, e.get("git_commit")) for s, e in env]),
        "model_name": collect([(s, m.get("name")) for s, m in model]),
        "model_sha256": collect([(s, m.get("sha256")) for s, m in model]),
        "precision": collect([(s, m.get("precision")) for s, m in model]),
        "weights": collect([(s, m.get("weights")) for s, m in model]),
        "input": collect([(s, _input_size(m)) for s, m in model]),
        "versions": versions,
        "layout": layouts,
        "serve_config": serve_configs,
        "bench_config": {
            s: ", ".join(f"{k}={v}" for k, v in sorted((r.config or {}).items()) if not isinstance(v, (dict, list)))
            for s, r in zip(sources, results)
        },
        "commands": {s: r.command for s, r in everything if r.command},
    }


# ---- the report ----------------------------------------------------------------------------------


def build_report(
    results: list[BenchResult],
    config: ReportConfig | None = None,
    *,
    sources: list[str] | None = None,
    engine: EngineBenchResult | None = None,
    engine_source: str | None = None,
) -> Report:
    """Compute every figure of the report from bench results (and optionally an engine bench).

    ``config`` holds the report's settings (prices, SLO, target, knee rule); ``sources`` names
    the files (for messages and the setup table); ``engine_source`` names the engine file.
    """
    config = config if config is not None else ReportConfig()
    if not isinstance(config, ReportConfig):
        raise ConfigError(f"build_report takes a ReportConfig, got {type(config).__name__}")
    if not results:
        raise ResultsError("no bench results to report on: pass one or more files written by `rayscale bench`")
    for i, r in enumerate(results):
        if not isinstance(r, BenchResult):
            name = sources[i] if sources else f"results[{i}]"
            kind = getattr(r, "kind", "?")
            raise ResultsError(f"{name} is not a bench result (kind={kind!r}): pass engine-bench files with --engine")
    sources = list(sources) if sources else [f"results[{i}]" for i in range(len(results))]
    if len(sources) != len(results):
        raise ConfigError(f"sources names {len(sources)} files for {len(results)} results")
    engine_name = engine_source or "engine"
    compared = list(results) + ([engine] if engine is not None else [])
    compared_names = sources + ([engine_name] if engine is not None else [])
    mismatches = check_comparable(compared, compared_names, allow_mismatch=config.allow_mismatch)
    notes: list[str] = [f"not comparable, reported anyway: {m.describe()}" for m in mismatches]

    series_keys, latest = _collect_points(results, sources, notes)
    labels = _series_labels(series_keys)
    rows = [_row(point, result, source, labels[pkey[0]], config) for pkey, (point, result, source) in latest.items()]
    max_batch = {
        (labels[pkey[0]], pkey[1]): _max_batch_size(result) for pkey, (point, result, source) in latest.items()
    }
    series = [labels[k] for k in series_keys]
    load_axis = {labels[k]: ("rate_rps" if k[2] == "open" else "concurrency") for k in series_keys}

    groups: list[GroupSummary] = []
    for label in series:
        for units in sorted({r.units for r in rows if r.series == label}):
            group_rows = sorted(
                (r for r in rows if r.series == label and r.units == units), key=lambda r: (r.load is None, r.load or 0)
            )
            groups.append(_group(group_rows, config, engine, max_batch.get((label, units))))
    _scaling(groups, series)
    notes += _exclusion_notes(groups, rows, config)

    slo_p99_ms = config.slo_p99_ms
    best_by_series: dict[str, Pick] = {}
    best = None
    if slo_p99_ms is not None:
        best = _pick_best_under_slo(rows, slo_p99_ms)
        for label in series:
            pick = _pick_best_under_slo([r for r in rows if r.series == label], slo_p99_ms)
            if pick is not None:
                best_by_series[label] = pick
        if best is None:
            notes.append(f"no usable point meets p99 ≤ {slo_p99_ms:g} ms")
    cheapest = None
    target_ips = config.throughput_target_ips
    if target_ips is not None:
        cheapest = _pick_cheapest(groups, target_ips, slo_p99_ms)
        if cheapest is None:
            notes.append(f"no measured configuration reaches {target_ips:g} img/s"
                         + (f" with p99 ≤ {slo_p99_ms:g} ms" if slo_p99_ms is not None else ""))

    costs = config.costs_usd_per_hour
    return Report(
        sources=compared_names,
        setup=_setup(results, sources, engine, engine_name),
        parameters={
            "costs_usd_per_hour": {str(k): v for k, v in sorted(costs.items())} if costs else None,
            "gpu_hour_cost_usd": config.gpu_hour_cost_usd,
            "cpu_hour_cost_usd": config.cpu_hour_cost_usd,
            "slo_p99_ms": slo_p99_ms,
            **_goodput_parameters(rows, [point for point, _, _ in latest.values()]),
            "throughput_target_ips": target_ips,
            "knee_factor": config.knee_factor,
            "knee_min_p99_growth": config.knee_min_p99_growth,
            "allow_mismatch": config.allow_mismatch,
            "engine": engine_name if engine is not None else None,
        },
        mismatches=mismatches,
        series=series,
        load_axis=load_axis,
        points=rows,
        groups=groups,
        comparisons=_compare(groups, series),
        best_under_slo=best,
        best_under_slo_by_series=best_by_series,
        cheapest_for_target=cheapest,
        notes=notes,
    )


def _goodput_parameters(rows: list[PointRow], points: list[PointResult]) -> dict[str, Any]:
    """How goodput was computed: one method, or ``mixed`` (each row says which), and the widest histogram bucket used."""
    methods = sorted({r.goodput_method for r in rows if r.goodput_method})
    widths = [p.latency_histogram.bucket_width_pct
              for r, p in zip(rows, points) if r.goodput_method == GOODPUT_HISTOGRAM]  # fmt: skip
    return {
        "goodput_method": methods[0] if len(methods) == 1 else (GOODPUT_MIXED if methods else None),
        "goodput_bucket_width_pct": round(max(widths), 2) if widths else None,
    }


def _collect_points(
    results: list[BenchResult], sources: list[str], notes: list[str]
) -> tuple[list[tuple], dict[tuple, tuple[PointResult, BenchResult, str]]]:
    """Series keys in first-seen order, and each point by what it measured (a later file replaces an earlier one)."""
    series_keys: list[tuple] = []
    latest: dict[tuple, tuple[PointResult, BenchResult, str]] = {}
    for result, source in zip(results, sources):
        if result.status != "complete":
            notes.append(f"{source}: the run that wrote it is {result.status}: points it lacks were not measured")
        for point in result.points:
            layout = layout_of(point, result)
            skey = (point.target, point.transport, point.mode, point.images_per_request, layout)
            if skey not in series_keys:
                series_keys.append(skey)
            units = _size_of(point, result, layout)[1]
            pkey = (skey, units, point.replicas, _load_of(point))
            if pkey in latest and latest[pkey][2] != source:
                where = f"{point.target} at {size_label(layout.hardware, units)}, load {format_load(pkey[3])}"
                notes.append(f"{where}: {source} replaces {latest[pkey][2]}")
            latest[pkey] = (point, result, source)
    if not latest:
        raise ResultsError(f"no measured points in {', '.join(sources)}: run `rayscale bench` to completion first")
    return series_keys, latest


def _exclusion_notes(groups: list[GroupSummary], rows: list[PointRow], config: ReportConfig) -> list[str]:
    notes = []
    for g in groups:
        where = size_label(g.hardware, g.units)
        if g.peak_images_per_s is None:
            notes.append(f"{g.series} at {where}: no usable point (unstable, incomplete or failed), no peak")
        elif g.hourly_cost_usd is None and g.hardware == "GPU" and config.costs_usd_per_hour is not None:
            notes.append(f"--costs has no price for {g.gpus} GPU(s): no cost for {g.series} at {g.gpus} GPU(s)")
    gpu_priced = config.costs_usd_per_hour is not None or config.gpu_hour_cost_usd is not None
    if config.cpu_hour_cost_usd is None and any(g.hardware == "CPU" for g in groups):
        cpu_series = [s for s in dict.fromkeys(g.series for g in groups if g.hardware == "CPU")]
        which = "every configuration" if all(g.hardware == "CPU" for g in groups) else "; ".join(cpu_series)
        notes.append(
            f"{which} ran on CPU (no GPU in the hardware record): "
            + ("GPU prices do not apply to it, " if gpu_priced else "")
            + "pass --cpu-hour-cost (dollars per CPU replica-hour) to cost it"
        )
    for r in rows:
        if not r.usable:
            notes.append(
                f"{r.series} at {size_label(r.hardware, r.units)}, load {format_load(r.load)}: "
                f"{'; '.join(r.flags) or r.status}: excluded from peaks and picks"
            )
    return notes


def _group(
    rows: list[PointRow],
    config: ReportConfig,
    engine: EngineBenchResult | None,
    max_batch_size: int | None,
) -> GroupSummary:
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
    g.cost_per_1000_images_usd = cost_per_1000_images_usd(g.hourly_cost_usd, peak.images_per_s)
    slo_p99_ms = config.slo_p99_ms
    if slo_p99_ms is not None:
        meeting = [r for r in usable if r.latency_p99_ms is not None and r.latency_p99_ms <= slo_p99_ms]
        if meeting:
            best = max(meeting, key=lambda r: r.images_per_s)
            g.slo_images_per_s, g.slo_load, g.slo_latency_p99_ms = best.images_per_s, best.load, best.latency_p99_ms
        g.peak_goodput_images_per_s, g.peak_goodput_method = peak.goodput_images_per_s, peak.goodput_method
        rated = [r for r in usable if r.goodput_images_per_s is not None]
        if rated:
            best_goodput = max(rated, key=lambda r: r.goodput_images_per_s)
            g.goodput_images_per_s, g.goodput_load = best_goodput.goodput_images_per_s, best_goodput.load
            g.goodput_method = best_goodput.goodput_method
    g.knee = find_knee(rows, factor=config.knee_factor, min_p99_growth=config.knee_min_p99_growth)
    g.bottleneck = diagnose(peak)
    if engine is not None:
        ceiling = _engine_ceiling(engine, max_batch_size)
        if ceiling is not None:
            g.engine_batch_size = ceiling[0]
            g.engine_ceiling_images_per_s = ceiling[1] * g.units
            g.engine_fraction = peak.images_per_s / g.engine_ceiling_images_per_s
    return g


def _scaling(groups: list[GroupSummary], series: list[str]) -> None:
    """Fill each group's efficiency against its series' smallest size (GPUs, or CPU replicas) with a peak."""
    for label in series:
        peaked = sorted((g for g in groups if g.series == label and g.peak_images_per_s), key=lambda g: g.units)
        if not peaked:
            continue
        base = peaked[0]
        per_unit_base = base.peak_images_per_s / base.units
        for g in peaked:
            g.efficiency = (g.peak_images_per_s / g.units) / per_unit_base
            g.efficiency_base_gpus = base.units


def _compare(groups: list[GroupSummary], series: list[str]) -> list[Comparison]:
    """One comparison per (hardware, size, transport, images per request): leaders never cross them."""
    order = {s: i for i, s in enumerate(series)}
    classes = sorted(
        {(g.hardware, g.units, g.transport_kind, g.images_per_request) for g in groups},
        key=lambda c: (c[0] != "GPU", c[1], c[2], c[3]),
    )
    out = []
    for hardware, units, transport, ipr in classes:
        at = sorted(
            (g for g in groups
             if (g.hardware, g.units, g.transport_kind, g.images_per_request) == (hardware, units, transport, ipr)),
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
                goodput_images_per_s={
                    g.series: g.goodput_images_per_s for g in at if g.goodput_images_per_s is not None
                },
                goodput_method={g.series: g.goodput_method for g in at if g.goodput_method is not None},
            )
        )
    return out

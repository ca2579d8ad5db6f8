"""The typed report: every figure ``build_report`` computes, as dataclasses passed as themselves.

A ``Report`` holds one ``PointRow`` per measured point, one ``GroupSummary`` per series and size
(with its ``Knee`` and ``Bottleneck``), the like-for-like ``Comparison`` of each size, the
``Pick`` of each rule and the ``Mismatch`` of each setting that differs between files.
report.md, report.json, summary.csv and the plots are rendered from these alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Bottleneck", "Comparison", "GroupSummary", "Knee", "Mismatch", "Pick", "PointRow", "Report"]


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
    # Host CPU over the point's windows (None: not measured). Server: the processes server_cpu_parts names.
    server_cpu_s_per_1000_images: float | None = None
    client_cpu_s_per_1000_images: float | None = None
    server_cores: float | None = None  # server CPU-seconds per second: cores kept busy at this rate
    server_cores_per_gpu: float | None = None  # server_cores ÷ GPUs: host cores each GPU needs at this rate
    server_cpu_parts: str | None = None  # replicas | replicas + ingress | triton


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
    peak_server_cpu_s_per_1000_images: float | None = None
    peak_server_cores_per_gpu: float | None = None
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
    peak_latency_p99_ms: dict[str, float | None]
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

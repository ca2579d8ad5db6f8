"""Typed results and their (de)serialisation.

Every results file is one JSON object with ``kind`` ("bench" or "engine"), the command that
produced it, the environment (versions, git commit, hardware) and the model's model.json, so a
number can be traced and rerun. Files are written atomically (temp file + rename) and never
overwrite an earlier file unless asked.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from rayscale.errors import ResultsError
from rayscale.files import write_text_atomic

__all__ = [
    "SCHEMA_VERSION",
    "BenchResult",
    "EngineBenchResult",
    "EnginePoint",
    "GpuSummary",
    "HostCpu",
    "IngressTraffic",
    "LatencyHistogram",
    "LatencyStats",
    "PointResult",
    "PointStatus",
    "ServerStats",
    "WindowStats",
    "load_results",
    "dataclass_from_dict",
    "previous_bench_result",
    "read_json_file",
    "write_json_atomic",
]

SCHEMA_VERSION = 1


@dataclass
class LatencyStats:
    count: int = 0
    mean_ms: float = 0.0
    min_ms: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    max_ms: float = 0.0

    def measured(self, field: str) -> float | None:
        """``field`` (e.g. ``"p99_ms"``), or None where no sample backs it: perf_analyzer keeps only
        each window's p95 for a point it could not stabilise, and a missing figure is not 0 ms."""
        value = getattr(self, field)
        return value if value or self.count else None


@dataclass
class LatencyHistogram:
    """Request latencies counted in fixed log-spaced buckets, so goodput under any SLO can be read back.

    Bucket ``i`` holds latencies in (upper_ms(i-1), upper_ms(i)], with
    ``upper_ms(i) = first_upper_ms × 10^(i / buckets_per_decade)`` (bucket 0 also holds anything
    faster); each bucket is 10^(1/48) − 1 ≈ 4.9 % wider than the one before, and every power of ten
    (1, 10, 100 ms …) is an edge. Latencies above ``last_upper_ms`` fall in one open-ended bucket
    past it. Only non-empty buckets are kept (``counts``: bucket index → requests), so a point's
    histogram is a few dozen entries.
    """

    counts: dict[int, int] = field(default_factory=dict)
    buckets_per_decade: int = 48
    first_upper_ms: float = 0.01
    last_upper_ms: float = 100_000.0

    @classmethod
    def from_latencies_s(cls, samples_s: np.ndarray | list[float]) -> LatencyHistogram:
        histogram = cls()
        ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
        # side="left": the first edge ≥ the latency, so a latency equal to an edge counts within it
        index = np.searchsorted(histogram._finite_upper_ms(), ms, side="left")
        buckets, counts = np.unique(index, return_counts=True)
        histogram.counts = {int(b): int(n) for b, n in zip(buckets, counts, strict=True)}
        return histogram

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyHistogram:
        """As a results file holds it (JSON turns the bucket indexes into strings)."""
        histogram = dataclass_from_dict(cls, data)
        histogram.counts = {int(b): int(n) for b, n in (data.get("counts") or {}).items()}
        return histogram

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    @property
    def bucket_width_pct(self) -> float:
        """How much wider each bucket's upper edge is than the previous one's, in percent."""
        return (10 ** (1 / self.buckets_per_decade) - 1) * 100

    def upper_ms(self, bucket: int) -> float:
        """Bucket ``bucket``'s upper edge (inclusive); infinite for the bucket past ``last_upper_ms``."""
        if bucket >= self._bucket_count():
            return math.inf
        return 10 ** ((bucket + self._first_exponent()) / self.buckets_per_decade)

    def fraction_within(self, ms: float) -> float:
        """Share of requests that took at most ``ms``, conservatively: only buckets whose upper edge is
        ≤ ``ms`` count, so the share is exact when ``ms`` is a bucket edge and otherwise misses at most
        the requests in the one bucket that straddles it. 0 for an empty histogram."""
        total = self.count
        if total == 0:
            return 0.0
        within = sum(n for bucket, n in self.counts.items() if self.upper_ms(bucket) <= ms)
        return within / total

    def _first_exponent(self) -> int:
        """log10(first_upper_ms) in buckets: integer, so powers of ten are computed exactly."""
        return round(math.log10(self.first_upper_ms) * self.buckets_per_decade)

    def _bucket_count(self) -> int:
        """Buckets with a finite upper edge (the open-ended one comes after them)."""
        return round(math.log10(self.last_upper_ms) * self.buckets_per_decade) - self._first_exponent() + 1

    def _finite_upper_ms(self) -> np.ndarray:
        return np.array([self.upper_ms(i) for i in range(self._bucket_count())])


@dataclass
class WindowStats:
    """One measurement window (perf_analyzer's stability rule looks at the last three)."""

    start_s: float
    duration_s: float
    requests: int
    images_per_s: float
    p95_ms: float
    errors: int = 0


@dataclass
class ServerStats:
    """Server-side split of the measured window, from the statistics endpoint (deltas)."""

    requests: int = 0
    images: int = 0
    batches: int = 0
    queue_ms_per_request: float = 0.0
    compute_ms_per_request: float = 0.0  # compute_input + compute_infer + compute_output
    compute_infer_ms_per_request: float = 0.0
    mean_batch_images: float = 0.0
    batch_size_histogram: dict[str, int] = field(default_factory=dict)


@dataclass
class HostCpu:
    """CPU time the host spent over a point's measured windows, the same windows as its throughput.

    In CPU-seconds, user + system, every thread. A part that is None was not measured, which is not 0:

    * ``client_cpu_s``: the load generator's client actors;
    * ``replica_cpu_s``: every replica process of a rayscale app, on every node (each replica adds
      its process's CPU time to the statistics it sends);
    * ``ingress_cpu_s``: the HAProxy processes rayscale runs in front of the replicas, on every node;
    * ``triton_cpu_s``: tritonserver and its backend stubs, when the target is rayscale's own Triton
      on the load generator's machine.

    The server's figure is the sum of the server parts measured; ``server_cores`` is its CPU-seconds
    per second of the windows, the cores it kept busy at the point's rate. Derived figures are
    computed here, never read from a file, so they always agree with their parts.
    """

    measured_s: float  # the windows' span, seconds
    images: int  # images answered successfully over the windows
    client_cpu_s: float | None = None
    replica_cpu_s: float | None = None
    ingress_cpu_s: float | None = None
    triton_cpu_s: float | None = None
    server_cpu_s: float | None = field(init=False)
    server_cpu_s_per_1000_images: float | None = field(init=False)
    client_cpu_s_per_1000_images: float | None = field(init=False)
    server_cores: float | None = field(init=False)

    def __post_init__(self) -> None:
        parts = [cpu_s for cpu_s in (self.replica_cpu_s, self.ingress_cpu_s, self.triton_cpu_s) if cpu_s is not None]
        self.server_cpu_s = sum(parts) if parts else None
        self.server_cpu_s_per_1000_images = self.per_1000_images(self.server_cpu_s)
        self.client_cpu_s_per_1000_images = self.per_1000_images(self.client_cpu_s)
        self.server_cores = self.server_cpu_s / self.measured_s if self.server_cpu_s is not None and self.measured_s > 0 else None

    def per_1000_images(self, cpu_s: float | None) -> float | None:
        """``cpu_s`` spread over the images of the windows, per 1000 images; None without images or CPU time."""
        return 1000.0 * cpu_s / self.images if cpu_s is not None and self.images > 0 else None

    @property
    def server_parts(self) -> list[str]:
        """Which server processes the server figure counts: replicas, ingress, triton."""
        named = (("replicas", self.replica_cpu_s), ("ingress", self.ingress_cpu_s), ("triton", self.triton_cpu_s))
        return [name for name, cpu_s in named if cpu_s is not None]


@dataclass
class GpuSummary:
    index: int
    name: str
    node: str = ""
    util_mean_pct: float = 0.0
    util_max_pct: float = 0.0
    mem_used_max_bytes: int = 0
    mem_total_bytes: int = 0
    power_mean_w: float = 0.0
    samples: int = 0


@dataclass
class IngressTraffic:
    """What one node's ingress carried over a point's measured span (HTTP and gRPC together)."""

    node: str  # Ray node id
    node_ip: str = ""
    requests: int = 0  # requests that entered at this node
    requests_remote: int = 0  # of those, served by a replica process on another node
    bytes_in: int = 0  # from clients
    bytes_out: int = 0  # to clients
    restarted: bool = False  # its HAProxy restarted within the span: the counts are a lower bound


class PointStatus(StrEnum):
    """How a point ended; the value is what results files hold."""

    OK = "ok"  # three windows agreed
    UNSTABLE = "unstable"  # measured, but the windows never agreed within the stability rule
    INCOMPLETE = "incomplete"  # interrupted while measuring
    FAILED = "failed"  # nothing usable: no request succeeded, or the load engine failed

    @property
    def finished(self) -> bool:
        """Measured to the end: a resumed sweep keeps it instead of measuring it again."""
        return self in (PointStatus.OK, PointStatus.UNSTABLE)


@dataclass
class PointResult:
    target: str  # rayscale | triton | any label of the server measured
    transport: str  # http-binary | http-json | handle | perf_analyzer
    mode: str  # closed | open
    replicas: int
    images_per_request: int
    concurrency: int | None = None
    rate_rps: float | None = None
    arrival: str | None = None
    status: PointStatus = PointStatus.OK
    error: str | None = None
    started_at: str = ""
    ended_at: str = ""
    measured_s: float = 0.0
    requests_sent: int = 0
    requests_ok: int = 0
    requests_failed: int = 0
    requests_incomplete: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    requests_per_s: float = 0.0
    images_per_s: float = 0.0
    offered_rps: float | None = None
    late_sends: int = 0
    latency: LatencyStats = field(default_factory=LatencyStats)
    latency_histogram: LatencyHistogram | None = None  # the same requests as ``latency``; None where not kept
    windows: list[WindowStats] = field(default_factory=list)
    stable: bool = True
    server: ServerStats | None = None
    gpus: list[GpuSummary] = field(default_factory=list)
    gpu_samples: list[dict[str, Any]] = field(default_factory=list)
    client_cpu_pct: float = 0.0  # busiest client actor, % of one core
    host_cpu: HostCpu | None = None  # CPU-seconds of the server's processes and the clients; None: not measured
    client_cpu_saturated: bool = False
    clients: int = 1  # client actors that sent the measured load
    error_timeline: list[dict[str, Any]] = field(default_factory=list)
    ingress_traffic: list[IngressTraffic] = field(default_factory=list)  # per node; rayscale's own ingress only

    @property
    def requests_crossed(self) -> int | None:
        """Requests that entered at one node and were served on another (None where not counted)."""
        return sum(t.requests_remote for t in self.ingress_traffic) if self.ingress_traffic else None

    @property
    def key(self) -> tuple:
        return (self.target, self.transport, self.mode, self.replicas, self.images_per_request, self.concurrency, self.rate_rps)


@dataclass
class BenchResult:
    command: str
    config: dict[str, Any]
    environment: dict[str, Any]
    model: dict[str, Any]
    serve_config: dict[str, Any] | None = None
    points: list[PointResult] = field(default_factory=list)
    status: str = "complete"  # complete | incomplete
    started_at: str = ""
    ended_at: str = ""
    kind: str = "bench"
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EnginePoint:
    batch_size: int
    images_per_s: float
    latency_mean_ms: float
    latency_p50_ms: float
    latency_p99_ms: float
    iterations: int
    backend: str = "onnxruntime"  # onnxruntime | torch | torch-eager-fp16 (open_clip's own tower)
    input_location: str = "host"  # host (numpy) | host-parts-<copy mode> (from 32-image requests) | device (on the GPU)
    provider: str = ""


@dataclass
class EngineBenchResult:
    command: str
    environment: dict[str, Any]
    model: dict[str, Any]
    points: list[EnginePoint] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    started_at: str = ""
    ended_at: str = ""
    engine_options: dict[str, Any] = field(default_factory=dict)  # EngineOptions, as a dict
    profile: dict[str, Any] | None = None  # engine-bench --profile: kernel times by operator group
    kind: str = "engine"
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def dataclass_from_dict(cls, data: dict[str, Any]):
    """``cls`` from a file's dict, keeping the keys that are its fields (a newer file may hold more);
    fields the class derives itself are derived again, not read."""
    names = {f.name for f in fields(cls) if f.init}
    return cls(**{k: v for k, v in data.items() if k in names})


def read_json_file(path: Path, *, what: str, invalid_hint: str) -> Any:
    """The JSON in ``path``; a missing or unreadable file is a ResultsError naming it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path} is not valid JSON ({e}){invalid_hint}") from None


def _point_from_dict(d: dict[str, Any]) -> PointResult:
    d = dict(d)
    d["latency"] = dataclass_from_dict(LatencyStats, d.get("latency") or {})
    d["latency_histogram"] = LatencyHistogram.from_dict(d["latency_histogram"]) if d.get("latency_histogram") else None
    d["windows"] = [dataclass_from_dict(WindowStats, w) for w in d.get("windows") or []]
    d["server"] = dataclass_from_dict(ServerStats, d["server"]) if d.get("server") else None
    d["host_cpu"] = dataclass_from_dict(HostCpu, d["host_cpu"]) if d.get("host_cpu") else None
    d["gpus"] = [dataclass_from_dict(GpuSummary, g) for g in d.get("gpus") or []]
    d["ingress_traffic"] = [dataclass_from_dict(IngressTraffic, t) for t in d.get("ingress_traffic") or []]
    try:
        d["status"] = PointStatus(d.get("status", PointStatus.OK))
    except ValueError:
        raise ResultsError(f"unknown point status {d.get('status')!r}: use one of {', '.join(PointStatus)}") from None
    return dataclass_from_dict(PointResult, d)


def load_results(path: str | os.PathLike) -> BenchResult | EngineBenchResult:
    """Read a results file; a missing or foreign file is a ResultsError naming it."""
    p = Path(path)
    data = read_json_file(p, what="results file", invalid_hint="; was it written by rayscale?")
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "bench":
        data = dict(data)
        data["points"] = [_point_from_dict(pt) for pt in data.get("points", [])]
        return dataclass_from_dict(BenchResult, data)
    if kind == "engine":
        data = dict(data)
        data["points"] = [dataclass_from_dict(EnginePoint, pt) for pt in data.get("points", [])]
        return dataclass_from_dict(EngineBenchResult, data)
    raise ResultsError(f"{p} is not a rayscale results file (kind={kind!r})")


def previous_bench_result(path: str | os.PathLike, *, resume: bool, overwrite: bool) -> BenchResult | None:
    """The results already in ``path`` when a sweep resumes it; refuses to overwrite one silently."""
    p = Path(path)
    if not p.exists():
        return None
    if resume:
        loaded = load_results(p)
        if not isinstance(loaded, BenchResult):
            raise ResultsError(f"{p} is not a bench results file; choose another --out")
        return loaded
    if not overwrite:
        raise ResultsError(f"{p} exists: pass --overwrite to replace it, or --resume to continue it")
    return None


def write_json_atomic(path: str | os.PathLike, data: Any, *, overwrite: bool = True) -> Path:
    """Write JSON to ``path`` via a temp file and rename, so readers never see a partial file."""
    p = Path(path)
    if not overwrite and p.exists():
        raise ResultsError(f"{p} exists: pass --overwrite to replace it, or --resume to continue it")
    return write_text_atomic(p, json.dumps(data, indent=2, default=str) + "\n")

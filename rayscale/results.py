"""Typed results and their (de)serialisation.

Every results file is one JSON object with ``kind`` ("bench" or "engine"), the command that
produced it, the environment (versions, git commit, hardware) and the model's model.json, so a
number can be traced and rerun. Files are written atomically (temp file + rename) and never
overwrite an earlier file unless asked.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from rayscale.errors import ResultsError
from rayscale.files import write_text_atomic

__all__ = [
    "SCHEMA_VERSION",
    "BenchResult",
    "EngineBenchResult",
    "EnginePoint",
    "GpuSummary",
    "LatencyStats",
    "PointResult",
    "PointStatus",
    "ServerStats",
    "WindowStats",
    "load_results",
    "previous_bench_result",
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
    windows: list[WindowStats] = field(default_factory=list)
    stable: bool = True
    server: ServerStats | None = None
    gpus: list[GpuSummary] = field(default_factory=list)
    gpu_samples: list[dict[str, Any]] = field(default_factory=list)
    client_cpu_pct: float = 0.0  # busiest client actor, % of one core
    client_cpu_saturated: bool = False
    clients: int = 1  # client actors that sent the measured load
    error_timeline: list[dict[str, Any]] = field(default_factory=list)

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
    backend: str = "onnxruntime"  # onnxruntime | torch-eager
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
    kind: str = "engine"
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls, data: dict[str, Any]):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def _point_from_dict(d: dict[str, Any]) -> PointResult:
    d = dict(d)
    d["latency"] = _build(LatencyStats, d.get("latency") or {})
    d["windows"] = [_build(WindowStats, w) for w in d.get("windows") or []]
    d["server"] = _build(ServerStats, d["server"]) if d.get("server") else None
    d["gpus"] = [_build(GpuSummary, g) for g in d.get("gpus") or []]
    try:
        d["status"] = PointStatus(d.get("status", PointStatus.OK))
    except ValueError:
        raise ResultsError(f"unknown point status {d.get('status')!r}: use one of {', '.join(PointStatus)}") from None
    return _build(PointResult, d)


def load_results(path: str | os.PathLike) -> BenchResult | EngineBenchResult:
    """Read a results file; a missing or foreign file is a ResultsError naming it."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ResultsError(f"results file not found: {p}") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{p} is not valid JSON ({e}); was it written by rayscale?") from None
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "bench":
        data = dict(data)
        data["points"] = [_point_from_dict(pt) for pt in data.get("points", [])]
        return _build(BenchResult, data)
    if kind == "engine":
        data = dict(data)
        data["points"] = [_build(EnginePoint, pt) for pt in data.get("points", [])]
        return _build(EngineBenchResult, data)
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

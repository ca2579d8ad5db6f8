"""Typed results of `rayscale tune` (DIR/tune.json) and how a candidate's points are judged.

Each candidate's points live in its own bench results file (``rayscale report`` reads them);
tune.json summarises them: the best configuration under the SLO, the runners-up, every
candidate, the spread of repeated measurements and the command that reproduces the winner.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rayscale.errors import ResultsError
from rayscale.results import PointResult, dataclass_from_dict, read_json_file, write_json_atomic

__all__ = [
    "TUNE_FILE",
    "CandidateSummary",
    "PointSummary",
    "Spread",
    "TuneResult",
    "load_tune_result",
    "meets_slo",
    "write_tune_result",
]

TUNE_FILE = "tune.json"
SCHEMA_VERSION = 1
MEASURED = ("ok", "unstable")


def meets_slo(point: PointResult, slo_p99_ms: float) -> bool:
    """A point counts toward goodput when it was measured, lost no request and kept p99 within the SLO."""
    return (point.status in MEASURED and point.requests_ok > 0 and point.requests_failed == 0
            and point.latency.count > 0 and point.latency.p99_ms <= slo_p99_ms)


@dataclass
class PointSummary:
    concurrency: int
    images_per_s: float
    p99_ms: float
    status: str
    requests_failed: int = 0

    @classmethod
    def of(cls, point: PointResult) -> "PointSummary":
        return cls(concurrency=int(point.concurrency or 0), images_per_s=round(point.images_per_s, 2),
                   p99_ms=round(point.latency.p99_ms, 3), status=point.status, requests_failed=point.requests_failed)


@dataclass
class CandidateSummary:
    """One candidate's sweep over concurrency and what it achieved under the SLO."""

    target: str
    label: str
    settings: dict[str, Any]
    results_file: str  # relative to the tune directory
    reproduce: str  # the command that starts this server
    status: str = "complete"  # complete | incomplete (budget or interrupt) | failed (server did not start)
    stop_reason: str | None = None  # slo | plateau | errors | failed | max_concurrency | budget
    points: list[PointSummary] = field(default_factory=list)
    goodput_images_per_s: float | None = None  # best images/s of a point within the SLO
    goodput_concurrency: int | None = None
    goodput_p99_ms: float | None = None
    peak_images_per_s: float = 0.0
    lowest_p99_ms: float | None = None
    error: str | None = None

    @property
    def score(self) -> tuple[int, float]:
        """Larger is better: goodput where the SLO is met, else how close its best p99 came."""
        if self.goodput_images_per_s is not None:
            return (1, self.goodput_images_per_s)
        if self.lowest_p99_ms is not None:
            return (0, -self.lowest_p99_ms)
        return (-1, 0.0)

    def describe(self) -> str:
        if self.goodput_images_per_s is not None:
            return (f"{self.label}: {self.goodput_images_per_s:,.1f} img/s at concurrency {self.goodput_concurrency}, "
                    f"p99 {self.goodput_p99_ms:.1f} ms")
        if self.lowest_p99_ms is not None:
            best = min((p for p in self.points if p.status in MEASURED), key=lambda p: p.p99_ms)
            return (f"{self.label}: lowest p99 {best.p99_ms:.1f} ms at concurrency {best.concurrency} "
                    f"({best.images_per_s:,.1f} img/s)")
        return f"{self.label}: {self.error or 'not measured'}"


@dataclass
class Spread:
    """A candidate re-measured ``len(images_per_s)`` times at its goodput concurrency."""

    label: str
    concurrency: int
    images_per_s: list[float]
    p99_ms: list[float]

    @property
    def images_per_s_min(self) -> float:
        return min(self.images_per_s)

    @property
    def images_per_s_median(self) -> float:
        return statistics.median(self.images_per_s)

    @property
    def images_per_s_max(self) -> float:
        return max(self.images_per_s)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.images_per_s:
            d |= {"images_per_s_min": self.images_per_s_min, "images_per_s_median": self.images_per_s_median,
                  "images_per_s_max": self.images_per_s_max,
                  "p99_ms_min": min(self.p99_ms), "p99_ms_median": statistics.median(self.p99_ms),
                  "p99_ms_max": max(self.p99_ms)}
        return d


@dataclass
class TuneResult:
    target: str
    gpus: int
    images_per_request: int
    slo_p99_ms: float
    strategy: str
    space: dict[str, list]
    budget_s: float
    budget_used_s: float = 0.0
    command: str = ""
    status: str = "incomplete"  # complete | incomplete
    ended_by: str = ""  # space (every candidate measured) | local_optimum | budget | interrupted
    best: CandidateSummary | None = None
    runners_up: list[CandidateSummary] = field(default_factory=list)
    closest: CandidateSummary | None = None  # when no candidate meets the SLO: the one nearest to it
    candidates: list[CandidateSummary] = field(default_factory=list)
    repeats: list[Spread] = field(default_factory=list)
    verdict: str = ""
    bench_command: str = ""  # the load that reproduces the winner's figure
    points_measured: int = 0  # by the last run; 0 when everything came from the files already in the directory
    started_at: str = ""
    ended_at: str = ""
    kind: str = "tune"
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["repeats"] = [s.to_dict() for s in self.repeats]
        return d


def _candidate(d: dict[str, Any] | None) -> CandidateSummary | None:
    if d is None:
        return None
    d = dict(d, points=[dataclass_from_dict(PointSummary, p) for p in d.get("points") or []])
    return dataclass_from_dict(CandidateSummary, d)


def load_tune_result(path: str | Path) -> TuneResult:
    p = Path(path)
    data = read_json_file(p, what="tune results", invalid_hint=": delete it to start the search again")
    if not isinstance(data, dict) or data.get("kind") != "tune":
        raise ResultsError(f"{p} is not a `rayscale tune` result (kind={data.get('kind') if isinstance(data, dict) else None!r})")
    data = dict(data)
    data["best"] = _candidate(data.get("best"))
    data["closest"] = _candidate(data.get("closest"))
    data["runners_up"] = [_candidate(c) for c in data.get("runners_up") or []]
    data["candidates"] = [_candidate(c) for c in data.get("candidates") or []]
    data["repeats"] = [dataclass_from_dict(Spread, s) for s in data.get("repeats") or []]
    return dataclass_from_dict(TuneResult, data)


def write_tune_result(result: TuneResult, directory: str | Path) -> Path:
    return write_json_atomic(Path(directory) / TUNE_FILE, result.to_dict())

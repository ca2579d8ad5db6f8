"""Typed results of `rayscale tune` (DIR/tune.json).

Each candidate's points live in its own bench results file (``rayscale report`` reads them);
tune.json summarises them: the best configuration under the SLO with its goodput at the highest
load that met it, the runners-up, every candidate's load search, the spread of repeated
measurements and the commands that reproduce the winner.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rayscale.errors import ResultsError
from rayscale.results import PointResult, dataclass_from_dict, read_json_file, write_json_atomic
from rayscale.tune.loads import MEASURED, goodput_images_per_s, load_of, meets_slo

__all__ = [
    "AtSlo",
    "EXIT_BUDGET",
    "EXIT_NONE_MET",
    "EXIT_OK",
    "TUNE_FILE",
    "CandidateSummary",
    "PointSummary",
    "Spread",
    "TuneResult",
    "format_load",
    "load_tune_result",
    "write_tune_result",
]

TUNE_FILE = "tune.json"
SCHEMA_VERSION = 2
# `rayscale tune`'s exit statuses besides 1 (an error) and 130 (interrupted): see the README's "Tuning".
EXIT_OK = 0  # the search finished and its best candidate meets the SLO
EXIT_NONE_MET = 3  # the search finished and no candidate meets the SLO
EXIT_BUDGET = 4  # the budget ran out first: --resume continues


def format_load(load: float | None, closed: bool) -> str:
    if load is None:
        return "–"
    return f"concurrency {int(load)}" if closed else f"{load:g} requests/s"


@dataclass
class PointSummary:
    load: float  # concurrency, or requests/s offered
    images_per_s: float
    goodput_images_per_s: float
    p99_ms: float
    status: str
    meets_slo: bool
    requests_failed: int = 0

    @classmethod
    def of(cls, point: PointResult, slo_p99_ms: float) -> PointSummary:
        return cls(
            load=load_of(point),
            images_per_s=round(point.images_per_s, 2),
            goodput_images_per_s=round(goodput_images_per_s(point, slo_p99_ms), 2),
            p99_ms=round(point.latency.p99_ms, 3),
            status=str(point.status),
            meets_slo=meets_slo(point, slo_p99_ms),
            requests_failed=point.requests_failed,
        )


@dataclass(frozen=True)
class AtSlo:
    """A candidate at the highest load that met the SLO."""

    load: float
    goodput_images_per_s: float
    p99_ms: float


@dataclass
class CandidateSummary:
    """One candidate's load search and what it achieved under the SLO."""

    target: str
    label: str
    settings: dict[str, Any]
    results_file: str  # relative to the tune directory
    reproduce: str  # the command that starts this server
    closed_loop: bool = True  # loads are concurrencies (else requests/s)
    status: str = "complete"  # complete | incomplete (budget or interrupt) | failed (server did not start)
    stop_reason: str | None = None  # bracketed | plateau | max_load | infeasible | failed | budget
    points: list[PointSummary] = field(default_factory=list)  # in order of load
    slo_load: float | None = None  # the highest load that met the SLO
    goodput_images_per_s: float | None = None  # at slo_load
    images_per_s: float | None = None  # at slo_load
    p99_ms: float | None = None  # at slo_load
    peak_images_per_s: float = 0.0  # at any load, within the SLO or not
    lowest_p99_ms: float | None = None
    error: str | None = None

    @property
    def meets_slo(self) -> bool:
        return self.goodput_images_per_s is not None

    def at_slo(self) -> AtSlo:
        """What it achieved at the highest load within the SLO (a winner's figures)."""
        if self.slo_load is None or self.goodput_images_per_s is None or self.p99_ms is None:
            raise ResultsError(f"{self.label} met the SLO at no load: it has no figures under the SLO")
        return AtSlo(self.slo_load, self.goodput_images_per_s, self.p99_ms)

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
            return (
                f"{self.label}: {self.goodput_images_per_s:,.1f} img/s goodput at "
                f"{format_load(self.slo_load, self.closed_loop)}, p99 {self.p99_ms:.1f} ms"
            )
        if self.lowest_p99_ms is not None:
            best = min((p for p in self.points if p.status in MEASURED), key=lambda p: p.p99_ms)
            return (
                f"{self.label}: lowest p99 {best.p99_ms:.1f} ms at {format_load(best.load, self.closed_loop)} "
                f"({best.images_per_s:,.1f} img/s)"
            )
        return f"{self.label}: {self.error or 'not measured'}"


@dataclass
class Spread:
    """A candidate re-measured ``len(goodput_images_per_s)`` times at its SLO load, with standard windows."""

    label: str
    load: float
    goodput_images_per_s: list[float]
    images_per_s: list[float]
    p99_ms: list[float]
    met_slo: list[bool]

    @property
    def goodput_min(self) -> float:
        return min(self.goodput_images_per_s)

    @property
    def goodput_median(self) -> float:
        return statistics.median(self.goodput_images_per_s)

    @property
    def goodput_max(self) -> float:
        return max(self.goodput_images_per_s)

    @property
    def spread_pct(self) -> float:
        """(max − min) ÷ median of the runs' goodput, in percent."""
        median = self.goodput_median
        return 100.0 * (self.goodput_max - self.goodput_min) / median if median else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.goodput_images_per_s:
            d |= {
                "goodput_min": self.goodput_min,
                "goodput_median": self.goodput_median,
                "goodput_max": self.goodput_max,
                "spread_pct": round(self.spread_pct, 2),
                "p99_ms_min": min(self.p99_ms),
                "p99_ms_median": statistics.median(self.p99_ms),
                "p99_ms_max": max(self.p99_ms),
            }
        return d


@dataclass
class TuneResult:
    target: str
    gpus: int
    images_per_request: int
    slo_p99_ms: float
    strategy: str
    space: dict[str, list]
    closed_loop: bool = True
    budget_s: float = 0.0  # this run's
    budget_used_s: float = 0.0  # by this run
    total_used_s: float = 0.0  # by every run of this search
    command: str = ""
    status: str = "incomplete"  # complete | incomplete
    ended_by: str = ""  # space (every candidate measured) | local_optimum | budget | interrupted
    best: CandidateSummary | None = None
    runners_up: list[CandidateSummary] = field(default_factory=list)
    closest: CandidateSummary | None = None  # when no candidate meets the SLO: the one nearest to it
    candidates: list[CandidateSummary] = field(default_factory=list)  # in the order measured
    repeats: list[Spread] = field(default_factory=list)
    verdict: str = ""
    bench_command: str = ""  # the load that reproduces the winner's figure
    points_measured: int = 0  # by the last run; 0 when everything came from the files already in the directory
    server_switches: dict[str, int] = field(default_factory=dict)  # by the last run: started, in place, reloaded, restarted
    started_at: str = ""
    ended_at: str = ""
    kind: str = "tune"
    schema_version: int = SCHEMA_VERSION

    @property
    def exit_status(self) -> int:
        if self.status != "complete":
            return EXIT_BUDGET
        return EXIT_OK if self.best is not None else EXIT_NONE_MET

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
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ResultsError(
            f"{p} was written by another version of `rayscale tune` (schema {data.get('schema_version')}, "
            f"this one reads {SCHEMA_VERSION}): search again into another --out"
        )
    data = dict(data)
    data["best"] = _candidate(data.get("best"))
    data["closest"] = _candidate(data.get("closest"))
    data["runners_up"] = [_candidate(c) for c in data.get("runners_up") or []]
    data["candidates"] = [_candidate(c) for c in data.get("candidates") or []]
    data["repeats"] = [dataclass_from_dict(Spread, s) for s in data.get("repeats") or []]
    return dataclass_from_dict(TuneResult, data)


def write_tune_result(result: TuneResult, directory: str | Path) -> Path:
    return write_json_atomic(Path(directory) / TUNE_FILE, result.to_dict())

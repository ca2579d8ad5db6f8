"""What a running search tells its observer (the CLI's progress lines, a test), one class per event."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rayscale.results import PointResult
from rayscale.tune.results import CandidateSummary

__all__ = [
    "CandidateFailed",
    "CandidateFinished",
    "CandidateSkipped",
    "CandidateStarted",
    "PointMeasured",
    "RepeatsStarted",
    "SearchStopped",
    "TuneEvent",
    "TuneEventCallback",
]


@dataclass(frozen=True)
class CandidateStarted:
    label: str
    command: str  # the command that starts the same server by hand
    switch: str = "started"  # how the server got these settings: started | in place | reloaded | restarted | reused
    switch_s: float = 0.0


@dataclass(frozen=True)
class CandidateSkipped:
    label: str
    reason: str  # why its results file needs no more points


@dataclass(frozen=True)
class PointMeasured:
    label: str
    point: PointResult
    meets_slo: bool = False


@dataclass(frozen=True)
class CandidateFailed:
    label: str
    error: str


@dataclass(frozen=True)
class RepeatsStarted:
    label: str
    load: str  # "concurrency 24" or "300 requests/s"
    runs: int


@dataclass(frozen=True)
class CandidateFinished:
    summary: CandidateSummary


@dataclass(frozen=True)
class SearchStopped:
    reason: str  # why no further candidate or repeat starts in this run


TuneEvent = (
    CandidateStarted | CandidateSkipped | PointMeasured | CandidateFailed | RepeatsStarted | CandidateFinished | SearchStopped
)
TuneEventCallback = Callable[[TuneEvent], None]

"""What a running search tells its observer (the CLI's progress lines, a test), one class per event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

from rayscale.results import PointResult
from rayscale.tune.results import CandidateSummary

__all__ = [
    "CandidateFailed",
    "CandidateFinished",
    "CandidateSkipped",
    "CandidateStarted",
    "PointMeasured",
    "RepeatsStarted",
    "TuneEvent",
    "TuneEventCallback",
]


@dataclass(frozen=True)
class CandidateStarted:
    label: str
    command: str  # the command that starts the same server by hand


@dataclass(frozen=True)
class CandidateSkipped:
    label: str
    reason: str  # why its results file needs no more points


@dataclass(frozen=True)
class PointMeasured:
    label: str
    point: PointResult


@dataclass(frozen=True)
class CandidateFailed:
    label: str
    error: str


@dataclass(frozen=True)
class RepeatsStarted:
    label: str
    concurrency: int
    runs: int


@dataclass(frozen=True)
class CandidateFinished:
    summary: CandidateSummary


TuneEvent = Union[CandidateStarted, CandidateSkipped, PointMeasured, CandidateFailed, RepeatsStarted, CandidateFinished]
TuneEventCallback = Callable[[TuneEvent], None]

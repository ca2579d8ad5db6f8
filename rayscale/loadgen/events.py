"""What a running sweep tells its observer (the progress printer, a test, a notebook).

Every load engine emits the same events through ``on_event``: the sweep emits ``SweepStarted``,
``PointSkipped``, ``PointStarted`` and ``PointFinished``; rayscale's own engine adds
``Rescaling``, ``WindowMeasured`` and ``PointRetried``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rayscale.results import PointResult, WindowStats

__all__ = [
    "Event",
    "EventCallback",
    "PointFinished",
    "PointRetried",
    "PointSkipped",
    "PointStarted",
    "Rescaling",
    "SweepStarted",
    "WindowMeasured",
    "ignore_events",
]


@dataclass(frozen=True)
class SweepStarted:
    out: Path  # the results file, rewritten after every point
    target: str


@dataclass(frozen=True)
class Rescaling:
    replicas: int


@dataclass(frozen=True)
class PointSkipped:
    point: PointResult  # planned; the results file already holds its measurement


@dataclass(frozen=True)
class PointStarted:
    point: PointResult


@dataclass(frozen=True)
class WindowMeasured:
    point: PointResult
    window: WindowStats
    index: int  # 1-based, counting this point's windows
    stable: bool  # the last three windows agree
    p99_ms: float


@dataclass(frozen=True)
class PointRetried:
    point: PointResult  # the measurement set aside: its client actors were CPU-saturated
    clients: int  # client actors for the new measurement


@dataclass(frozen=True)
class PointFinished:
    point: PointResult


Event = SweepStarted | Rescaling | PointSkipped | PointStarted | WindowMeasured | PointRetried | PointFinished
EventCallback = Callable[[Event], None]


def ignore_events(event: Event) -> None:
    """The observer when nobody watches."""

"""The order in which candidates are measured: grid (every one) or hill (a climb from the defaults).

A strategy proposes the next candidate from the scores measured so far and returns None when it
is done; it never measures anything itself, so a resumed search replays the same path from the
results already on disk.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Callable, Optional

from rayscale.errors import ConfigError
from rayscale.tune.space import Settings, Space, dimensions, values_of

__all__ = ["STRATEGIES", "Score", "grid_candidates", "hill_start", "neighbours", "propose"]

STRATEGIES = ("grid", "hill")

Score = tuple[int, float]  # (1, goodput images/s) under the SLO, else (0, -lowest p99 ms): larger is better
Proposer = Callable[[Space, dict[Settings, Score]], Optional[Settings]]


def grid_candidates(space: Space) -> list[Settings]:
    """Every combination, the last dimension varying fastest."""
    names = dimensions(space)
    return [space.settings_type(**dict(zip(names, combo)))
            for combo in itertools.product(*(values_of(space, n) for n in names))]


def _nearest(values: list, default) -> object:
    return min(values, key=lambda v: (abs(v - default), v))


def hill_start(space: Space) -> Settings:
    """The server's defaults, each moved to the nearest value the space holds."""
    defaults = space.settings_type()
    return replace(defaults, **{n: _nearest(values_of(space, n), getattr(defaults, n)) for n in dimensions(space)})


def neighbours(space: Space, at: Settings) -> list[Settings]:
    """One setting one step down or up, in dimension order (down first)."""
    found = []
    for name in dimensions(space):
        values = values_of(space, name)
        i = values.index(getattr(at, name))
        for j in (i - 1, i + 1):
            if 0 <= j < len(values):
                found.append(replace(at, **{name: values[j]}))
    return found


def _grid(space: Space, scores: dict[Settings, Score]) -> Settings | None:
    return next((c for c in grid_candidates(space) if c not in scores), None)


def _hill(space: Space, scores: dict[Settings, Score]) -> Settings | None:
    """First-improvement hill climb: measure the neighbours in order, move to the first that beats
    the current candidate; stop where none does (a local optimum)."""
    current = hill_start(space)
    while True:
        if current not in scores:
            return current
        for candidate in neighbours(space, current):
            if candidate not in scores:
                return candidate
            if scores[candidate] > scores[current]:
                current = candidate
                break
        else:
            return None


def propose(strategy: str, space: Space, scores: dict[Settings, Score]) -> Settings | None:
    """The next candidate to measure, or None when the strategy has nothing left to try."""
    if strategy == "grid":
        return _grid(space, scores)
    if strategy == "hill":
        return _hill(space, scores)
    raise ConfigError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")

"""The order in which candidates are measured: grid (every one) or hill (seeds, then climbs).

A strategy proposes the next candidate from the scores measured so far and returns None when it
is done; it never measures anything itself, so a resumed search replays the same path from the
results already on disk.

``hill`` spends its first candidates where they tell most: seeds along the first dimension (the
processes or instances per GPU: the default, about twice it, about half of it), the other
settings at the server's defaults. It then climbs from the best seed, one setting one step at a
time, moving to the first neighbour that beats the current candidate by ``MIN_STEP_GAIN``; the
neighbours a running server reaches without new processes come first. At a local optimum it
restarts the climb from the next-best seed, ``restarts`` times.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Any

from rayscale.errors import ConfigError
from rayscale.tune.space import Settings, Space, dimensions, in_place_dimensions, values_of

__all__ = ["MIN_STEP_GAIN", "STRATEGIES", "Score", "grid_candidates", "hill_start", "neighbours", "propose", "seeds"]

STRATEGIES = ("grid", "hill")
MIN_STEP_GAIN = 0.03  # a climb moves only for this much more goodput: less is within a short window's noise

Score = tuple[int, float]  # (1, goodput images/s) under the SLO, else (0, -lowest p99 ms): larger is better


def _better(a: Score, b: Score) -> bool:
    if a[0] != b[0]:
        return a[0] > b[0]
    if a[0] == 1:
        return a[1] > b[1] * (1 + MIN_STEP_GAIN)
    return a[1] > b[1]


def grid_candidates(space: Space) -> list[Settings]:
    """Every combination: settings that need new processes vary slowest, so a running server is reused most."""
    names = dimensions(space)
    in_place = in_place_dimensions(space)
    order = [n for n in names if n not in in_place] + in_place
    return [
        space.settings_type(**dict(zip(order, combo, strict=True)))
        for combo in itertools.product(*(values_of(space, n) for n in order))
    ]


def _nearest(values: list, default: Any) -> Any:
    if isinstance(default, str):
        return default if default in values else values[0]
    return min(values, key=lambda v: (abs(v - default), v))


def hill_start(space: Space) -> Settings:
    """The server's defaults, each moved to the nearest value the space holds."""
    defaults = space.settings_type()
    return replace(defaults, **{n: _nearest(values_of(space, n), getattr(defaults, n)) for n in dimensions(space)})


def seeds(space: Space, count: int = 3) -> list[Settings]:
    """The defaults, then the first dimension at about twice and about half its default value."""
    start = hill_start(space)
    primary = dimensions(space)[0]
    values = values_of(space, primary)
    picked = [getattr(start, primary)]
    for aim in (picked[0] * 2, picked[0] / 2):
        left = [v for v in values if v not in picked]
        if left:
            picked.append(min(left, key=lambda v: (abs(math.log(v / aim)), -v)))
    return [replace(start, **{primary: v}) for v in picked[:count]]


def neighbours(space: Space, at: Settings) -> list[Settings]:
    """One setting one step down or up; settings a running server changes in place first, then field order."""
    in_place = in_place_dimensions(space)
    order = in_place + [n for n in dimensions(space) if n not in in_place]
    found = []
    for name in order:
        values = values_of(space, name)
        i = values.index(getattr(at, name))
        for j in (i - 1, i + 1):
            if 0 <= j < len(values):
                found.append(replace(at, **{name: values[j]}))
    return found


def _grid(space: Space, scores: dict[Settings, Score]) -> Settings | None:
    return next((c for c in grid_candidates(space) if c not in scores), None)


def _climb(space: Space, scores: dict[Settings, Score], start: Settings) -> Settings | None:
    """First-improvement climb from ``start``: the next candidate it needs measured, or None at a local optimum."""
    current = start
    while True:
        for candidate in neighbours(space, current):
            if candidate not in scores:
                return candidate
            if _better(scores[candidate], scores[current]):
                current = candidate
                break
        else:
            return None


def _hill(space: Space, scores: dict[Settings, Score], *, seed_count: int, restarts: int) -> Settings | None:
    planted = seeds(space, seed_count)
    for seed in planted:
        if seed not in scores:
            return seed
    ranked = sorted(planted, key=lambda s: scores[s], reverse=True)  # stable: ties keep seed order
    for start in ranked[: 1 + restarts]:
        proposal = _climb(space, scores, start)
        if proposal is not None:
            return proposal
    return None


def propose(
    strategy: str, space: Space, scores: dict[Settings, Score], *, seed_count: int = 3, restarts: int = 1
) -> Settings | None:
    """The next candidate to measure, or None when the strategy has nothing left to try."""
    if strategy == "grid":
        return _grid(space, scores)
    if strategy == "hill":
        return _hill(space, scores, seed_count=seed_count, restarts=restarts)
    raise ConfigError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")

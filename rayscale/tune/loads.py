"""Per candidate: the highest load that meets the SLO, found in few points.

The load is a concurrency (closed loop) or a rate in requests/s (open loop). From the first load:

* **it meets the SLO**: climb, doubling, until a load misses (or ``maximum`` is reached, or a
  doubling adds less than ``min_gain`` throughput: a plateau, where more load buys latency alone);
* **it misses**: step down, halving, to the floor (concurrency 1, or 1/32 of the first rate); a
  candidate whose floor misses too is infeasible;
* **once a pass lies below a miss**: bisect between the highest pass and the lowest miss above it,
  at the load where p99 would cross the SLO if it grew linearly between them (kept within the middle
  half of the bracket), until the two are within ``resolution`` of each other.

A point meets the SLO when it was measured, lost no request and kept p99 within it. The
candidate's figure is its goodput at the highest load that met the SLO: images/s × the share of
its requests within the SLO, read from the point's latency histogram (as ``rayscale report``
computes goodput).

``next_load`` is a pure function of the points measured so far, so a resumed search takes the
same next step from the same files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rayscale.results import PointResult, PointStatus

__all__ = ["LoadRule", "LoadStep", "goodput_images_per_s", "load_of", "meets_slo", "next_load", "slo_point"]

MEASURED = (PointStatus.OK, PointStatus.UNSTABLE)
RATE_FLOOR_FRACTION = 1 / 32


def load_of(point: PointResult) -> float:
    """A point's load: its concurrency, or its offered rate in requests/s."""
    return float(point.concurrency if point.concurrency is not None else point.rate_rps or 0.0)


def meets_slo(point: PointResult, slo_p99_ms: float) -> bool:
    """Measured, no request lost, p99 within the SLO."""
    return (
        point.status in MEASURED
        and point.requests_ok > 0
        and point.requests_failed == 0
        and point.latency.count > 0
        and point.latency.p99_ms <= slo_p99_ms
    )


def goodput_images_per_s(point: PointResult, slo_p99_ms: float) -> float:
    """Images/s from requests within the SLO: the histogram's share (a bucket straddling the SLO
    counts as missing it), or the point's throughput when its p99 meets the SLO where it kept none."""
    if point.status not in MEASURED or point.latency.count == 0:
        return 0.0
    histogram = point.latency_histogram
    if histogram is not None and histogram.count:
        return point.images_per_s * histogram.fraction_within(slo_p99_ms)
    return point.images_per_s if point.latency.p99_ms <= slo_p99_ms else 0.0


@dataclass(frozen=True)
class LoadRule:
    """How one candidate's load is searched."""

    slo_p99_ms: float
    closed: bool  # concurrency (integers from 1) or rate (requests/s)
    first: float  # the first load measured
    maximum: float
    resolution: float = 0.25  # bisection ends when the highest pass is within this fraction of the lowest miss
    min_gain: float | None = 0.05  # a doubling that adds less throughput than this ends the climb (None: never)

    @property
    def floor(self) -> float:
        return 1.0 if self.closed else self.first * RATE_FLOOR_FRACTION

    def rounded(self, load: float) -> float:
        if self.closed:
            return float(max(1, round(load)))
        return float(f"{load:.3g}")


@dataclass(frozen=True)
class LoadStep:
    """The next load to measure, or None and why the candidate's search ended."""

    load: float | None
    reason: str | None = None  # bracketed | plateau | max_load | infeasible


def _finished(points: list[PointResult]) -> list[PointResult]:
    by_load = {load_of(p): p for p in points if p.status != PointStatus.INCOMPLETE}
    return [by_load[k] for k in sorted(by_load)]


def next_load(points: list[PointResult], rule: LoadRule) -> LoadStep:
    done = _finished(points)
    if not done:
        return LoadStep(rule.rounded(min(max(rule.first, rule.floor), rule.maximum)))
    passes = [p for p in done if meets_slo(p, rule.slo_p99_ms)]
    if not passes:
        lowest = load_of(done[0])
        if lowest <= rule.floor:
            return LoadStep(None, "infeasible")
        return LoadStep(rule.rounded(max(rule.floor, lowest / 2)))
    top = passes[-1]
    lo = load_of(top)
    misses = [p for p in done if load_of(p) > lo and not meets_slo(p, rule.slo_p99_ms)]
    if not misses:
        below = [p.images_per_s for p in passes[:-1]]
        if below and rule.min_gain is not None and top.images_per_s < max(below) * (1 + rule.min_gain):
            return LoadStep(None, "plateau")
        if lo >= rule.maximum:
            return LoadStep(None, "max_load")
        return LoadStep(rule.rounded(min(lo * 2, rule.maximum)))
    miss = misses[0]
    hi = load_of(miss)
    if hi - lo <= (max(1.0, rule.resolution * lo) if rule.closed else rule.resolution * lo):
        return LoadStep(None, "bracketed")
    return LoadStep(_between(lo, hi, top.latency.p99_ms, miss, rule))


def _between(lo: float, hi: float, p99_lo: float, miss: PointResult, rule: LoadRule) -> float:
    """Where p99 would reach the SLO if it grew linearly from lo to hi, kept in the bracket's middle half."""
    p99_hi = miss.latency.p99_ms if miss.latency.count else math.inf
    share = 0.5  # the middle: where the miss was lost requests rather than latency, p99 tells nothing
    if math.isfinite(p99_hi) and p99_hi > rule.slo_p99_ms and p99_hi > p99_lo:
        share = (rule.slo_p99_ms - p99_lo) / (p99_hi - p99_lo)
    share = min(0.75, max(0.25, share))
    load = rule.rounded(lo + share * (hi - lo))
    if rule.closed:  # strictly inside the bracket, which holds at least one integer here
        load = min(max(load, lo + 1), hi - 1)
    return load


def slo_point(points: list[PointResult], slo_p99_ms: float) -> PointResult | None:
    """The point at the highest load that met the SLO (None: none met it)."""
    within = [p for p in _finished(points) if meets_slo(p, slo_p99_ms)]
    return within[-1] if within else None

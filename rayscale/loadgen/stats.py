"""What client actors hand over, latency statistics from pooled raw samples, and perf_analyzer's stability rule.

Client actors return raw latency samples; pooling them and taking percentiles of the pool is
exact (percentiles are never averaged across actors). Percentiles use the nearest-rank method
(the smallest sample with at least p% of samples at or below it); perf_analyzer picks index
round(p/100·(n−1)) instead: the two are at most one sample apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from rayscale.results import LatencyStats, WindowStats

__all__ = ["ClientTake", "is_stable", "latency_stats", "percentile"]


@dataclass
class ClientTake:
    """What client actors completed over a span: raw latencies and counts that merge exactly.

    One actor's ``take()`` covers the span since its last take; ``merge`` pools several actors or
    spans (latencies are concatenated, never summarised, so percentiles of the pool stay exact).
    ``cpu_pct`` is the busiest actor's share of one core: a merge keeps the maximum. ``cpu_s`` is
    the CPU time the actors' processes spent (user + system, every thread): a merge adds them.
    """

    latencies_s: np.ndarray = field(default_factory=lambda: np.empty(0))
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # failed requests by kind
    error_events: list[tuple[float, str]] = field(default_factory=list)  # (unix time, kind), capped per actor
    late: int = 0  # open loop: sends more than LATE_THRESHOLD_S behind schedule
    sent: int = 0  # requests sent in the span (some still in flight at its end)
    incomplete: int = 0  # at a stop: requests that never finished
    cpu_pct: float = 0.0
    cpu_s: float = 0.0

    def merge(self, other: ClientTake) -> ClientTake:
        errors = dict(self.errors)
        for kind, n in other.errors.items():
            errors[kind] = errors.get(kind, 0) + n
        return ClientTake(
            latencies_s=np.concatenate([self.latencies_s, other.latencies_s]),
            ok=self.ok + other.ok,
            failed=self.failed + other.failed,
            errors=errors,
            error_events=self.error_events + other.error_events,
            late=self.late + other.late,
            sent=self.sent + other.sent,
            incomplete=self.incomplete + other.incomplete,
            cpu_pct=max(self.cpu_pct, other.cpu_pct),
            cpu_s=self.cpu_s + other.cpu_s,
        )

    @classmethod
    def pooled(cls, takes: Iterable[ClientTake]) -> ClientTake:
        total = cls()
        for take in takes:
            total = total.merge(take)
        return total

    def counts_only(self) -> ClientTake:
        """The same counts without the latency samples (for totals kept over a whole point)."""
        return replace(self, latencies_s=np.empty(0))


def percentile(samples: np.ndarray, p: float) -> float:
    """Nearest-rank percentile of ``samples`` (p in 0..100)."""
    if samples.size == 0:
        return 0.0
    s = np.sort(samples, kind="stable")
    rank = int(np.ceil(p / 100.0 * s.size))
    return float(s[min(max(rank, 1), s.size) - 1])


def latency_stats(samples_s: np.ndarray | Sequence[float]) -> LatencyStats:
    a = np.asarray(samples_s, dtype=np.float64)
    if a.size == 0:
        return LatencyStats()
    ms = np.sort(a) * 1000.0

    def nr(p: float) -> float:
        rank = int(np.ceil(p / 100.0 * ms.size))
        return float(ms[min(max(rank, 1), ms.size) - 1])

    return LatencyStats(
        count=int(ms.size),
        mean_ms=float(ms.mean()),
        min_ms=float(ms[0]),
        p50_ms=nr(50),
        p90_ms=nr(90),
        p95_ms=nr(95),
        p99_ms=nr(99),
        p999_ms=nr(99.9),
        max_ms=float(ms[-1]),
    )


def is_stable(windows: list[WindowStats], tolerance: float, *, count: int = 3) -> bool:
    """perf_analyzer's rule: over the last ``count`` windows, max/min ≤ 1 + tolerance for throughput and p95."""
    if len(windows) < count:
        return False
    last = windows[-count:]
    for values in ([w.images_per_s for w in last], [w.p95_ms for w in last]):
        if min(values) <= 0 or max(values) / min(values) > 1 + tolerance:
            return False
    return True

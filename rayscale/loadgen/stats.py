"""Latency statistics from pooled raw samples, and perf_analyzer's stability rule.

Client actors return raw latency samples; pooling them and taking percentiles of the pool is
exact (percentiles are never averaged across actors). Percentiles use the nearest-rank method
(the smallest sample with at least p% of samples at or below it); perf_analyzer picks index
round(p/100·(n−1)) instead: the two are at most one sample apart.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rayscale.results import LatencyStats, WindowStats

__all__ = ["is_stable", "latency_stats", "percentile"]


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

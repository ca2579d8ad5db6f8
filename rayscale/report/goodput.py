"""Goodput: images/s from requests that met the latency SLO.

* **Goodput** (with an SLO): images/s from requests that met it. Where a point's results keep a
  latency histogram (rayscale's load generator writes one), goodput is its throughput × the share
  of requests in buckets whose upper edge is within the SLO (method ``histogram``: exact when the
  SLO is a bucket edge, otherwise low by at most the one bucket straddling it). Elsewhere
  (perf_analyzer imports, older files) only percentiles are kept, so goodput is the point's
  throughput when its p99 meets the SLO (≥ 99 % of its requests did) and 0 otherwise (method
  ``p99-estimate``).
"""

from __future__ import annotations

from typing import Any

from rayscale.report.types import PointRow
from rayscale.results import LatencyHistogram, PointResult

__all__ = [
    "GOODPUT_HISTOGRAM",
    "GOODPUT_MIXED",
    "GOODPUT_P99_ESTIMATE",
    "goodput_images_per_s",
    "goodput_method",
    "goodput_parameters",
]

GOODPUT_HISTOGRAM = "histogram"  # throughput × share of requests within the SLO, from the point's latency histogram
GOODPUT_P99_ESTIMATE = "p99-estimate"  # throughput where p99 ≤ SLO, else 0: the point kept percentiles only
GOODPUT_MIXED = "mixed"  # a report's points used both methods (each row names its own)


def goodput_images_per_s(row: PointRow, slo_p99_ms: float | None,
                         histogram: LatencyHistogram | None = None) -> float | None:  # fmt: skip
    """Images/s from requests that met the SLO.

    With the point's latency histogram: throughput × the share of requests within the SLO (a
    bucket straddling it counts as missing it). Without one, the p99 estimate: the point's
    throughput when its p99 meets the SLO, else 0; it overstates by at most the 1 % of requests
    above p99 where the SLO holds, and counts nothing where it does not. None without an SLO, for
    an unusable point, or where no latency was measured.
    """
    if slo_p99_ms is None or not row.usable:
        return None
    if histogram is not None and goodput_method(histogram) == GOODPUT_HISTOGRAM:
        return row.images_per_s * histogram.fraction_within(slo_p99_ms)
    if row.latency_p99_ms is None:
        return None
    return row.images_per_s if row.latency_p99_ms <= slo_p99_ms else 0.0


def goodput_method(histogram: LatencyHistogram | None) -> str:
    """``histogram`` where the point kept a latency histogram with requests in it, else ``p99-estimate``."""
    return GOODPUT_HISTOGRAM if histogram is not None and histogram.count else GOODPUT_P99_ESTIMATE


def goodput_parameters(rows: list[PointRow], points: list[PointResult]) -> dict[str, Any]:
    """How goodput was computed: one method, or ``mixed`` (each row says which), and the widest histogram bucket used."""
    methods = sorted({r.goodput_method for r in rows if r.goodput_method})
    widths = [p.latency_histogram.bucket_width_pct
              for r, p in zip(rows, points, strict=True)
              if r.goodput_method == GOODPUT_HISTOGRAM and p.latency_histogram is not None]  # fmt: skip
    return {
        "goodput_method": methods[0] if len(methods) == 1 else (GOODPUT_MIXED if methods else None),
        "goodput_bucket_width_pct": round(max(widths), 2) if widths else None,
    }

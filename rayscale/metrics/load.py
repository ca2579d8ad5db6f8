"""The load generator's live metrics: what ``rayscale bench`` offers and achieves, for Prometheus."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from rayscale.metrics.exporter import ExporterServer, histogram_buckets, serve_registry

__all__ = ["BENCH_LATENCY_BOUNDS", "LoadMetrics"]

BENCH_LATENCY_BOUNDS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip


def _label(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


class LoadMetrics:
    """What the load generator offers and achieves, for Prometheus while a sweep runs.

    ``set_point`` names the sweep point being measured (exported as ``rayscale_bench_point`` = 1
    with the point's settings as labels, one series at a time); ``record_window`` adds one
    measurement window: counters and the latency histogram grow, the rate gauges show that
    window. Latencies are added to the histogram in one vectorised step per window.
    """

    def __init__(self, registry=None):
        from prometheus_client import CollectorRegistry

        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        self._point: dict[str, str] | None = None
        self._offered_rps: float | None = None
        self._achieved_rps = 0.0
        self._achieved_ips = 0.0
        self._images_per_request = 1
        self._requests = {"ok": 0, "error": 0}
        self._errors: dict[str, int] = {}
        self._windows = 0
        self._bucket_counts = [0] * (len(BENCH_LATENCY_BOUNDS) + 1)
        self._latency_sum_s = 0.0
        self._server: ExporterServer | None = None
        self.registry.register(self)

    def serve(self, host: str = "127.0.0.1", port: int = 9401) -> ExporterServer:
        """Serves these metrics at http://host:port/metrics until close()."""
        self._server = serve_registry(self.registry, host, port, "the load-generator metrics endpoint")
        return self._server

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def set_point(
        self,
        *,
        target: str,
        transport: str,
        replicas: int,
        concurrency: int | None,
        rate_rps: float | None,
        images_per_request: int,
    ) -> None:
        with self._lock:
            self._point = {
                "target": target,
                "transport": transport,
                "replicas": _label(replicas),
                "concurrency": _label(concurrency),
                "rate": _label(float(rate_rps) if rate_rps is not None else None),
                "images_per_request": _label(images_per_request),
            }
            self._images_per_request = int(images_per_request)
            self._offered_rps = None
            self._achieved_rps = 0.0
            self._achieved_ips = 0.0

    def record_window(
        self,
        *,
        requests_ok: int,
        errors: dict[str, int],
        latencies_s: Sequence[float],
        duration_s: float,
        offered_rps: float | None,
    ) -> None:
        """One measurement window: ``requests_ok`` answered, ``errors`` counted by kind, and the
        latencies (seconds) of the answered requests."""
        import numpy as np

        from rayscale.errors import ConfigError

        if not duration_s > 0:
            raise ConfigError(f"window duration_s must be > 0, got {duration_s}")
        lat = np.asarray(latencies_s, dtype=np.float64).ravel()
        idx = np.searchsorted(np.asarray(BENCH_LATENCY_BOUNDS), lat, side="left")  # le: value <= bound
        counts = np.bincount(idx, minlength=len(BENCH_LATENCY_BOUNDS) + 1)
        failed = sum(int(n) for n in errors.values())
        with self._lock:
            self._windows += 1
            self._requests["ok"] += int(requests_ok)
            self._requests["error"] += failed
            for kind, n in errors.items():
                self._errors[str(kind)] = self._errors.get(str(kind), 0) + int(n)
            for i, c in enumerate(counts.tolist()):
                self._bucket_counts[i] += c
            self._latency_sum_s += float(lat.sum())
            self._offered_rps = None if offered_rps is None else float(offered_rps)
            self._achieved_rps = requests_ok / duration_s
            self._achieved_ips = requests_ok * self._images_per_request / duration_s

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        with self._lock:
            point = GaugeMetricFamily(
                "rayscale_bench_point",
                "1 for the sweep point being measured, labelled with its settings",
                labels=["target", "transport", "replicas", "concurrency", "rate", "images_per_request"],
            )
            if self._point is not None:
                point.add_metric(list(self._point.values()), 1.0)
            yield point
            for metric, value, doc in (
                ("rayscale_bench_offered_requests_per_second", self._offered_rps,
                 "Request rate the schedule offered in the last window (open loop only)"),
                ("rayscale_bench_achieved_requests_per_second", self._achieved_rps,
                 "Answered requests per second in the last window"),
                ("rayscale_bench_achieved_images_per_second", self._achieved_ips,
                 "Images in answered requests per second in the last window"),
            ):  # fmt: skip
                family = GaugeMetricFamily(metric, doc)
                if value is not None:
                    family.add_metric([], value)
                yield family
            requests = CounterMetricFamily(
                "rayscale_bench_requests", "Requests finished by the load generator", labels=["outcome"]
            )
            for outcome, n in self._requests.items():
                requests.add_metric([outcome], n)
            yield requests
            errors = CounterMetricFamily("rayscale_bench_errors", "Failed requests, by kind of error", labels=["kind"])
            for kind, n in sorted(self._errors.items()):
                errors.add_metric([kind], n)
            yield errors
            windows = CounterMetricFamily("rayscale_bench_windows", "Measurement windows recorded")
            windows.add_metric([], self._windows)
            yield windows
            latency = HistogramMetricFamily("rayscale_bench_latency_seconds", "Client-side latency of answered requests, seconds")
            h = {"bounds": BENCH_LATENCY_BOUNDS, "counts": self._bucket_counts, "sum": self._latency_sum_s}
            latency.add_metric([], histogram_buckets(h), sum_value=self._latency_sum_s)
            yield latency

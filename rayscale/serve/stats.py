"""Serving statistics shared by all replicas of an app, in Triton's statistics-extension shape.

Each replica accumulates its own counters (``ReplicaStats``) and sends a delta to one named
Ray actor (``StatsCollector``) after every executed batch and every rejected request: one
fire-and-forget call per batch, so the hot path never waits on it. Because Ray delivers one
caller's actor calls in order, a request whose response has reached the client has already been
sent to the collector, which makes window deltas taken by the load generator exact.

Each delta also carries the replica process's CPU time since its last delta (user + system, every
thread: the event loop, the batcher's workers, the engine's threads), so the app's replica CPU is
known over the same windows as its requests, on every node, at no extra call.

``snapshot()`` returns::

    {"model_stats": [...Triton's /v2/models/<m>/stats body...],
     "serving": {"requests_total": {"200": n, "400": n, ...}, "images_total": {...},
                 "rejected_total": n, "in_flight": n, "replica_cpu_s": x,
                 "batch_images": Histogram, "queue_seconds": Histogram, "compute_seconds": Histogram}}

where a Histogram is ``{"bounds": [...], "counts": [...], "sum": x, "count": n}`` with
non-cumulative counts and one more count than bounds (the +Inf bucket).
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rayscale.config import MODEL_NAME

__all__ = [
    "BATCH_BOUNDS",
    "SECONDS_BOUNDS",
    "Histogram",
    "ReplicaStats",
    "StatsCollector",
    "collector_name",
    "get_or_create_collector",
    "get_stats_snapshot",
    "statistics_body",
]

NAMESPACE = "rayscale"
BATCH_BOUNDS: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
SECONDS_BOUNDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


def collector_name(app_name: str) -> str:
    return f"rayscale-stats:{app_name}"


@dataclass
class Histogram:
    bounds: list[float]
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += n
        self.sum += value * n
        self.count += n

    def merge(self, other: dict[str, Any]) -> None:
        for i, c in enumerate(other["counts"]):
            self.counts[i] += c
        self.sum += other["sum"]
        self.count += other["count"]

    def to_dict(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum, "count": self.count}


def _duration() -> dict[str, int]:
    return {"count": 0, "ns": 0}


@dataclass
class ReplicaStats:
    """One replica's counters since its last flush. Plain Python: cheap to update on the hot path."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batch_stats: dict[int, list[int]] = field(default_factory=dict)  # size -> [count, in_ns, infer_ns, out_ns]
    requests_by_code: Counter = field(default_factory=Counter)
    images_by_code: Counter = field(default_factory=Counter)
    batch_images: Histogram = field(default_factory=lambda: Histogram(BATCH_BOUNDS))
    queue_seconds: Histogram = field(default_factory=lambda: Histogram(SECONDS_BOUNDS))
    compute_seconds: Histogram = field(default_factory=lambda: Histogram(SECONDS_BOUNDS))
    replica_cpu_s: float = 0.0  # the replica process's CPU time (user + system, every thread) in this delta

    def record_batch(
        self,
        *,
        images: int,
        request_images: list[int],
        queue_ns: list[int],
        total_ns: list[int],
        input_ns: int,
        infer_ns: int,
        output_ns: int,
    ) -> None:
        """One executed batch: per-request queue and end-to-end times, per-batch compute split."""
        n = len(request_images)
        self.execution_count += 1
        self.inference_count += images
        self.success_count += n
        self.success_ns += sum(total_ns)
        self.queue_ns += sum(queue_ns)
        # Triton charges each request the compute of the batch it ran in.
        self.compute_input_ns += input_ns * n
        self.compute_infer_ns += infer_ns * n
        self.compute_output_ns += output_ns * n
        self.last_inference_ms = int(time.time() * 1000)
        bs = self.batch_stats.setdefault(images, [0, 0, 0, 0])
        bs[0] += 1
        bs[1] += input_ns
        bs[2] += infer_ns
        bs[3] += output_ns
        self.batch_images.observe(images)
        compute_s = (input_ns + infer_ns + output_ns) / 1e9
        self.compute_seconds.observe(compute_s, n)
        for q in queue_ns:
            self.queue_seconds.observe(q / 1e9)
        self.requests_by_code["200"] += n
        self.images_by_code["200"] += images

    def record_failure(self, *, code: int, images: int = 0, duration_ns: int = 0) -> None:
        self.requests_by_code[str(code)] += 1
        self.images_by_code[str(code)] += images
        if code >= 500 or code == 400:
            self.fail_count += 1
            self.fail_ns += duration_ns

    def take(self) -> dict[str, Any]:
        """The delta since the last take, as a plain dict; resets the counters."""
        d = {
            "success": [self.success_count, self.success_ns],
            "fail": [self.fail_count, self.fail_ns],
            "queue_ns": self.queue_ns,
            "compute_input_ns": self.compute_input_ns,
            "compute_infer_ns": self.compute_infer_ns,
            "compute_output_ns": self.compute_output_ns,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "last_inference_ms": self.last_inference_ms,
            "batch_stats": self.batch_stats,
            "requests_by_code": dict(self.requests_by_code),
            "images_by_code": dict(self.images_by_code),
            "batch_images": self.batch_images.to_dict(),
            "queue_seconds": self.queue_seconds.to_dict(),
            "compute_seconds": self.compute_seconds.to_dict(),
            "replica_cpu_s": self.replica_cpu_s,
        }
        self.__init__()  # type: ignore[misc]
        return d


class StatsCollector:
    """Aggregates the deltas of every replica of one app (runs as a named Ray actor).

    Statistics only: no request waits on it. Routing, readiness and the ingress secret live in
    ``rayscale.serve.registry``, so it may die and come back (Ray restarts it; replicas make a new one
    if it was killed for good) with nothing lost but the counts of that moment.
    """

    def __init__(self, model_name: str = MODEL_NAME):
        self.model_name = model_name
        self.total = ReplicaStats()
        self.in_flight: dict[str, int] = {}
        self.rejected = 0

    def record(self, replica: str, delta: dict[str, Any], in_flight: int) -> None:
        t = self.total
        t.success_count += delta["success"][0]
        t.success_ns += delta["success"][1]
        t.fail_count += delta["fail"][0]
        t.fail_ns += delta["fail"][1]
        t.queue_ns += delta["queue_ns"]
        t.compute_input_ns += delta["compute_input_ns"]
        t.compute_infer_ns += delta["compute_infer_ns"]
        t.compute_output_ns += delta["compute_output_ns"]
        t.inference_count += delta["inference_count"]
        t.execution_count += delta["execution_count"]
        t.last_inference_ms = max(t.last_inference_ms, delta["last_inference_ms"])
        for size, v in delta["batch_stats"].items():
            cur = t.batch_stats.setdefault(int(size), [0, 0, 0, 0])
            for i in range(4):
                cur[i] += v[i]
        t.requests_by_code.update(delta["requests_by_code"])
        t.images_by_code.update(delta["images_by_code"])
        self.rejected += delta["requests_by_code"].get("503", 0)
        t.batch_images.merge(delta["batch_images"])
        t.queue_seconds.merge(delta["queue_seconds"])
        t.compute_seconds.merge(delta["compute_seconds"])
        t.replica_cpu_s += delta["replica_cpu_s"]
        self.in_flight[replica] = in_flight

    def forget_replica(self, replica: str) -> None:
        self.in_flight.pop(replica, None)

    def snapshot(self) -> dict[str, Any]:
        t = self.total
        n = t.success_count
        model_stats = {
            "name": self.model_name,
            "version": "1",
            "last_inference": t.last_inference_ms,
            "inference_count": t.inference_count,
            "execution_count": t.execution_count,
            "inference_stats": {
                "success": {"count": n, "ns": t.success_ns},
                "fail": {"count": t.fail_count, "ns": t.fail_ns},
                "queue": {"count": n, "ns": t.queue_ns},
                "compute_input": {"count": n, "ns": t.compute_input_ns},
                "compute_infer": {"count": n, "ns": t.compute_infer_ns},
                "compute_output": {"count": n, "ns": t.compute_output_ns},
                "cache_hit": _duration(),
                "cache_miss": _duration(),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": {"count": v[0], "ns": v[1]},
                    "compute_infer": {"count": v[0], "ns": v[2]},
                    "compute_output": {"count": v[0], "ns": v[3]},
                }
                for size, v in sorted(t.batch_stats.items())
            ],
        }
        return {
            "model_stats": [model_stats],
            "serving": {
                "requests_total": dict(t.requests_by_code),
                "images_total": dict(t.images_by_code),
                "rejected_total": self.rejected,
                "in_flight": sum(self.in_flight.values()),
                "replicas": len(self.in_flight),
                "replica_cpu_s": t.replica_cpu_s,
                "batch_images": t.batch_images.to_dict(),
                "queue_seconds": t.queue_seconds.to_dict(),
                "compute_seconds": t.compute_seconds.to_dict(),
            },
        }


def statistics_body(snapshot: dict[str, Any]) -> dict[str, Any]:
    """What the statistics endpoint answers: Triton's ``{"model_stats": [...]}``, plus the replicas'
    cumulative CPU seconds (``replica_cpu_s``) beside it, which a Triton client ignores."""
    return {"model_stats": snapshot["model_stats"], "replica_cpu_s": snapshot["serving"]["replica_cpu_s"]}


def get_or_create_collector(app_name: str):
    """The app's collector actor (detached, so it outlives the replica that made it)."""
    import ray

    actor_cls = ray.remote(num_cpus=0, max_restarts=-1)(StatsCollector)
    return actor_cls.options(
        name=collector_name(app_name), namespace=NAMESPACE, lifetime="detached", get_if_exists=True, max_concurrency=1
    ).remote()


def get_stats_snapshot(app_name: str, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """The app's current snapshot, or None if no replica has started a collector."""
    import ray

    try:
        actor = ray.get_actor(collector_name(app_name), namespace=NAMESPACE)
    except ValueError:
        return None
    return ray.get(actor.snapshot.remote(), timeout=timeout_s)


def kill_collector(app_name: str) -> None:
    import ray

    try:
        ray.kill(ray.get_actor(collector_name(app_name), namespace=NAMESPACE), no_restart=True)
    except ValueError:
        pass

"""GPU sampling, the Prometheus exporter and live load-generator metrics.

Three things a user watches while a benchmark runs:

* ``read_gpus`` / ``GpuSampler``: NVML readings (utilisation, memory, power, clock,
  temperature), one dict per GPU; on a machine without an NVIDIA driver they are empty lists,
  never an exception. ``start_gpu_samplers`` runs one sampler per GPU node of a Ray cluster.
* ``build_registry`` / ``serve_exporter`` / ``start_node_exporters``: a Prometheus endpoint
  with the GPU metrics of its node and, on one node only, the serving statistics that every
  replica sends to the app's ``StatsCollector`` actor, read at scrape time.
* ``LoadMetrics``: what the load generator offers and achieves, per window, with the current
  sweep point as a label set.

Metric names follow Prometheus conventions: a ``rayscale_`` prefix, base units in the name
(``_seconds``, ``_bytes``, ``_hertz``), ``_total`` on counters, and no per-request or
per-replica labels.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from rayscale.results import GpuSummary

__all__ = [
    "BENCH_LATENCY_BOUNDS",
    "EXPORTER_NAMESPACE",
    "ExporterServer",
    "GpuSampler",
    "LoadMetrics",
    "build_registry",
    "collect_gpu_samples",
    "connect_ray",
    "exporter_name",
    "read_gpus",
    "serve_exporter",
    "start_gpu_samplers",
    "start_node_exporters",
    "stop_node_exporters",
    "summarize_gpu_samples",
]

log = logging.getLogger(__name__)

EXPORTER_NAMESPACE = "rayscale"

# --------------------------------------------------------------------------------------------
# GPU readings (NVML)
# --------------------------------------------------------------------------------------------

_nvml_lock = threading.Lock()
_nvml_ok: bool | None = None  # None: not tried yet; False: no driver or library on this machine


def _nvml():
    """The pynvml module once NVML is initialised, or None (logged once) where there is none."""
    global _nvml_ok
    with _nvml_lock:
        if _nvml_ok is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                _nvml_ok = True
            except Exception as e:  # no library, no driver, no device: a CPU machine
                _nvml_ok = False
                log.info("no NVIDIA GPU metrics on this machine (NVML unavailable: %s)", type(e).__name__)
        if not _nvml_ok:
            return None
        import pynvml

        return pynvml


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _reading(fn, *args, scale: float = 1.0):
    """One NVML field; None where the GPU does not report it (e.g. power on some boards)."""
    try:
        value = fn(*args)
    except Exception:
        return None
    return value * scale if scale != 1.0 else value


def read_gpus() -> list[dict[str, Any]]:
    """One dict per GPU on this machine; ``[]`` without an NVIDIA driver. Never raises.

    Keys: index, uuid, name, util_pct, mem_used_bytes, mem_total_bytes, power_w, sm_clock_mhz,
    temp_c. A field the board does not report is None.
    """
    nv = _nvml()
    if nv is None:
        return []
    try:
        count = nv.nvmlDeviceGetCount()
    except Exception as e:
        log.warning("NVML could not count GPUs: %s", e)
        return []
    gpus = []
    for i in range(count):
        try:
            h = nv.nvmlDeviceGetHandleByIndex(i)
        except Exception:
            continue
        mem = _reading(nv.nvmlDeviceGetMemoryInfo, h)
        util = _reading(nv.nvmlDeviceGetUtilizationRates, h)
        gpus.append(
            {
                "index": i,
                "uuid": _text(_reading(nv.nvmlDeviceGetUUID, h) or ""),
                "name": _text(_reading(nv.nvmlDeviceGetName, h) or ""),
                "util_pct": float(util.gpu) if util is not None else None,
                "mem_used_bytes": int(mem.used) if mem is not None else None,
                "mem_total_bytes": int(mem.total) if mem is not None else None,
                "power_w": _reading(nv.nvmlDeviceGetPowerUsage, h, scale=1e-3),  # milliwatts
                "sm_clock_mhz": _reading(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM),
                "temp_c": _reading(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU),
            }
        )
    return gpus


class GpuSampler:
    """Samples ``read_gpus()`` every ``interval_s`` on a background thread.

    Each sample is a read_gpus() dict plus ``t`` (unix seconds) and ``node`` (hostname)::

        with GpuSampler(0.5) as sampler:
            run_load()
        samples = sampler.samples
    """

    def __init__(self, interval_s: float = 0.5):
        if not interval_s > 0:
            from rayscale.errors import ConfigError

            raise ConfigError(f"GPU sampling interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self.node = socket.gethostname()
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "GpuSampler":
        if self._thread is not None:
            return self
        self.samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rayscale-gpu-sampler", daemon=True)
        self._thread.start()
        return self

    def _sample_once(self) -> None:
        t = time.time()
        for g in read_gpus():
            g["t"] = t
            g["node"] = self.node
            self.samples.append(g)

    def _run(self) -> None:
        while True:
            self._sample_once()
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> list[dict[str, Any]]:
        """Stops sampling and returns every sample taken since start()."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        return list(self.samples)

    def __enter__(self) -> "GpuSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _GpuSamplerActor:
    """A GpuSampler living on one Ray node (see start_gpu_samplers)."""

    def __init__(self, interval_s: float):
        self.sampler = GpuSampler(interval_s)

    def start(self) -> str:
        self.sampler.start()
        return self.sampler.node

    def stop(self) -> list[dict[str, Any]]:
        return self.sampler.stop()


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def _pinned(node_id: str):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


def start_gpu_samplers(interval_s: float = 0.5) -> list[Any]:
    """One sampling actor per alive Ray node that has GPUs, already started.

    The actors take no CPU, so they fit next to replicas that use every core. Nodes without a
    ``GPU`` resource get none; on a CPU-only cluster the list is empty.
    """
    import ray

    actor_cls = ray.remote(num_cpus=0)(_GpuSamplerActor)
    handles = [
        actor_cls.options(scheduling_strategy=_pinned(n["NodeID"])).remote(interval_s)
        for n in _alive_nodes()
        if n.get("Resources", {}).get("GPU", 0) > 0
    ]
    ray.get([h.start.remote() for h in handles])
    return handles


def collect_gpu_samples(handles: Iterable[Any], *, kill: bool = True, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Stops the sampling actors and returns all their samples, ordered by time."""
    import ray

    handles = list(handles)
    per_node = ray.get([h.stop.remote() for h in handles], timeout=timeout_s)
    if kill:
        for h in handles:
            ray.kill(h)
    samples = [s for node_samples in per_node for s in node_samples]
    samples.sort(key=lambda s: (s["t"], s.get("node", ""), s["index"]))
    return samples


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize_gpu_samples(samples: Iterable[dict[str, Any]]) -> list[GpuSummary]:
    """One GpuSummary per (node, GPU index): mean/max utilisation, peak memory, mean power."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for s in samples:
        groups.setdefault((s.get("node", ""), int(s["index"])), []).append(s)
    out = []
    for (node, index), group in sorted(groups.items()):
        util = [s["util_pct"] for s in group if s.get("util_pct") is not None]
        power = [s["power_w"] for s in group if s.get("power_w") is not None]
        mem_used = [s["mem_used_bytes"] for s in group if s.get("mem_used_bytes") is not None]
        mem_total = [s["mem_total_bytes"] for s in group if s.get("mem_total_bytes") is not None]
        out.append(
            GpuSummary(
                index=index,
                name=group[-1].get("name", ""),
                node=node,
                util_mean_pct=_mean(util),
                util_max_pct=max(util, default=0.0),
                mem_used_max_bytes=int(max(mem_used, default=0)),
                mem_total_bytes=int(max(mem_total, default=0)),
                power_mean_w=_mean(power),
                samples=len(group),
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Prometheus exporter: GPU metrics of this node, serving statistics of the app
# --------------------------------------------------------------------------------------------

_GPU_GAUGES = (
    # (metric, read_gpus key, scale to base unit, help)
    ("rayscale_gpu_utilization_percent", "util_pct", 1.0, "Percent of time a kernel ran on the GPU (NVML)"),
    ("rayscale_gpu_memory_used_bytes", "mem_used_bytes", 1.0, "GPU memory in use, bytes"),
    ("rayscale_gpu_memory_total_bytes", "mem_total_bytes", 1.0, "GPU memory, bytes"),
    ("rayscale_gpu_power_watts", "power_w", 1.0, "GPU board power draw, watts"),
    ("rayscale_gpu_sm_clock_hertz", "sm_clock_mhz", 1e6, "Current SM clock, hertz"),
    ("rayscale_gpu_temperature_celsius", "temp_c", 1.0, "GPU core temperature, degrees Celsius"),
)
_GPU_LABELS = ["node", "gpu", "uuid", "name"]


class _GpuCollector:
    """Reads NVML at scrape time, so a scrape always shows the current state."""

    def __init__(self, node: str):
        self.node = node

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        gpus = read_gpus()
        count = GaugeMetricFamily(
            "rayscale_gpus", "NVIDIA GPUs visible on this node (0 without a driver)", labels=["node"]
        )
        count.add_metric([self.node], len(gpus))
        yield count
        for metric, key, scale, doc in _GPU_GAUGES:
            family = GaugeMetricFamily(metric, doc, labels=_GPU_LABELS)
            for g in gpus:
                if g.get(key) is not None:
                    family.add_metric([self.node, str(g["index"]), g["uuid"], g["name"]], float(g[key]) * scale)
            yield family


def _histogram_buckets(h: dict[str, Any]) -> list[tuple[str, float]]:
    """A stats.Histogram dict (non-cumulative counts, +Inf last) as Prometheus cumulative buckets."""
    from prometheus_client.utils import floatToGoString

    buckets, cumulative = [], 0
    for bound, count in zip(list(h["bounds"]) + [float("inf")], h["counts"]):
        cumulative += count
        buckets.append((floatToGoString(bound), cumulative))
    return buckets


class _ServingCollector:
    """Reads the app's StatsCollector actor at scrape time (needs a connected Ray driver/worker)."""

    def __init__(self, app_name: str, timeout_s: float = 5.0):
        self.app_name = app_name
        self.timeout_s = timeout_s
        self._warned = False

    def _snapshot(self) -> dict[str, Any] | None:
        import ray

        if not ray.is_initialized():
            return None
        from rayscale.serve.stats import get_stats_snapshot

        try:
            return get_stats_snapshot(self.app_name, timeout_s=self.timeout_s)
        except Exception as e:  # a scrape must answer even while the cluster is going away
            if not self._warned:
                log.warning("could not read serving statistics of app %r: %s", self.app_name, e)
                self._warned = True
            return None

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        snap = self._snapshot()
        app = [self.app_name]
        up = GaugeMetricFamily(
            "rayscale_serving_up", "1 when the app's serving statistics were read at this scrape", labels=["app"]
        )
        up.add_metric(app, 1.0 if snap is not None else 0.0)
        yield up
        if snap is None:
            return
        s = snap["serving"]
        for metric, key, doc in (
            ("rayscale_requests", "requests_total", "Inference requests answered, by HTTP status code"),
            ("rayscale_images", "images_total", "Images in answered inference requests, by HTTP status code"),
        ):
            family = CounterMetricFamily(metric, doc, labels=["app", "code"])
            for code, n in sorted(s[key].items()):
                family.add_metric([self.app_name, str(code)], n)
            yield family
        rejected = CounterMetricFamily(
            "rayscale_rejected_requests", "Requests refused with 503 because the queue was full", labels=["app"]
        )
        rejected.add_metric(app, s["rejected_total"])
        yield rejected
        for metric, value, doc in (
            ("rayscale_in_flight_requests", s["in_flight"], "Requests accepted by a replica and not yet answered"),
            ("rayscale_replicas", s["replicas"], "Replicas that have reported statistics"),
        ):
            family = GaugeMetricFamily(metric, doc, labels=["app"])
            family.add_metric(app, value)
            yield family
        for metric, key, doc in (
            ("rayscale_batch_images", "batch_images", "Images per executed batch"),
            ("rayscale_queue_seconds", "queue_seconds", "Time a request waited for its batch to start, seconds"),
            ("rayscale_compute_seconds", "compute_seconds", "Compute time of the batch each request ran in, seconds"),
        ):
            h = s[key]
            family = HistogramMetricFamily(metric, doc, labels=["app"])
            family.add_metric(app, _histogram_buckets(h), sum_value=h["sum"])
            yield family


def build_registry(*, app_name: str | None, gpus: bool = True, node: str | None = None):
    """A CollectorRegistry with this node's GPU metrics and, if ``app_name``, the app's serving metrics.

    Pass ``app_name=None`` on every node but one so a cluster does not count requests N times.
    """
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    if gpus:
        registry.register(_GpuCollector(node or socket.gethostname()))
    if app_name:
        registry.register(_ServingCollector(app_name))
    return registry


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _warn_if_public(host: str, what: str) -> None:
    if host not in _LOOPBACK:
        log.warning(
            "%s listens on %s, reachable from other machines; bind 127.0.0.1 unless a remote Prometheus scrapes it",
            what,
            host,
        )


@dataclass
class ExporterServer:
    """A running metrics endpoint; ``close()`` stops it. ``port`` is the bound port (useful with 0)."""

    host: str
    port: int
    registry: Any
    _server: Any
    _thread: Any

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "ExporterServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve_registry(registry, host: str, port: int, what: str) -> ExporterServer:
    from prometheus_client import start_http_server

    from rayscale.errors import ConfigError, ServerError

    if not 0 <= port <= 65535:
        raise ConfigError(f"{what} port must be in 0..65535, got {port}")
    _warn_if_public(host, what)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise ServerError(
            f"{what} could not listen on {host}:{port} ({e.strerror or e}): pass a free port with --port, "
            "or stop the process that holds it"
        ) from None
    return ExporterServer(host=host, port=server.server_port, registry=registry, _server=server, _thread=thread)


def serve_exporter(
    host: str = "127.0.0.1", port: int = 9400, *, app_name: str | None = "rayscale", gpus: bool = True
) -> ExporterServer:
    """Serves ``build_registry(app_name=..., gpus=...)`` at http://host:port/metrics on a background thread."""
    return _serve_registry(build_registry(app_name=app_name, gpus=gpus), host, port, "the metrics exporter")


def exporter_name(node_id: str) -> str:
    return f"rayscale-exporter:{node_id}"


class _ExporterActor:
    """One node's exporter, living as a detached Ray actor (see start_node_exporters)."""

    def __init__(self, host: str, port: int, app_name: str | None):
        self.server = serve_exporter(host, port, app_name=app_name)
        self.serving = app_name is not None

    def info(self) -> dict[str, Any]:
        return {"node": socket.gethostname(), "url": self.server.url, "serving": self.serving}

    def stop(self) -> None:
        self.server.close()


def start_node_exporters(*, host: str = "127.0.0.1", port: int = 9400, app_name: str = "rayscale") -> list[Any]:
    """One exporter actor per machine of the connected Ray cluster; returns their handles.

    The exporter on the driver's node (the head node if the driver runs elsewhere) also exports
    the app's serving metrics. Ray nodes that share an address (several on one machine) share one
    exporter, so a single machine uses a single port. Calling it again reuses running exporters.
    """
    import ray
    from ray.exceptions import RayActorError

    from rayscale.errors import ServerError

    if not ray.is_initialized():
        raise ServerError("no Ray cluster connected: call ray.init() (or run `rayscale up`) before starting exporters")
    nodes = _alive_nodes()
    driver_node = ray.get_runtime_context().get_node_id()
    serving_node = driver_node
    if not any(n["NodeID"] == driver_node for n in nodes):
        heads = [n["NodeID"] for n in nodes if "node:__internal_head__" in n.get("Resources", {})]
        serving_node = heads[0] if heads else (nodes[0]["NodeID"] if nodes else "")
    one_per_machine: dict[str, dict[str, Any]] = {}
    for n in sorted(nodes, key=lambda n: n["NodeID"] != serving_node):  # the serving node claims its machine
        one_per_machine.setdefault(n["NodeManagerAddress"], n)

    actor_cls = ray.remote(num_cpus=0)(_ExporterActor)
    handles, addresses = [], []
    for address, n in one_per_machine.items():
        node_id = n["NodeID"]
        handles.append(
            actor_cls.options(
                name=exporter_name(node_id),
                namespace=EXPORTER_NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                scheduling_strategy=_pinned(node_id),
            ).remote(host, port, app_name if node_id == serving_node else None)
        )
        addresses.append(address)
    for h, address in zip(handles, addresses):
        try:
            info = ray.get(h.info.remote(), timeout=60)
        except RayActorError as e:
            cause = str(e.__cause__ or e).strip().splitlines()[-1]
            raise ServerError(
                f"the metrics exporter on {address} could not start ({cause}): choose another port, "
                "or run without the exporter"
            ) from None
        serving = " (with serving metrics)" if info["serving"] else ""
        log.info("metrics exporter on %s: %s%s", info["node"], info["url"], serving)
    return handles


def stop_node_exporters() -> int:
    """Stops every exporter actor that start_node_exporters started; returns how many."""
    import ray

    if not ray.is_initialized():
        return 0
    stopped = 0
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] == EXPORTER_NAMESPACE and entry["name"].startswith("rayscale-exporter:"):
            try:
                actor = ray.get_actor(entry["name"], namespace=EXPORTER_NAMESPACE)
            except ValueError:  # already gone
                continue
            try:  # close the socket first, so the port is free when this returns
                ray.get(actor.stop.remote(), timeout=10)
            except Exception:
                pass
            ray.kill(actor)
            stopped += 1
    return stopped


def connect_ray() -> bool:
    """Joins a running Ray cluster if there is one; False (GPU metrics only) otherwise."""
    import ray

    if ray.is_initialized():
        return True
    try:
        ray.init(address="auto", namespace=EXPORTER_NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
        return True
    except (ConnectionError, RuntimeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------
# Load-generator metrics (rayscale bench)
# --------------------------------------------------------------------------------------------

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
        self._server = _serve_registry(self.registry, host, port, "the load-generator metrics endpoint")
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
            latency = HistogramMetricFamily(
                "rayscale_bench_latency_seconds", "Client-side latency of answered requests, seconds"
            )
            h = {"bounds": BENCH_LATENCY_BOUNDS, "counts": self._bucket_counts, "sum": self._latency_sum_s}
            latency.add_metric([], _histogram_buckets(h), sum_value=self._latency_sum_s)
            yield latency

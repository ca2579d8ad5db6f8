"""The Prometheus exporter: this node's GPU metrics and, on one node, the app's serving statistics.

``build_registry`` collects both at scrape time (the serving statistics from the app's
``StatsCollector`` actor); ``serve_exporter`` serves it at http://host:port/metrics;
``start_node_exporters`` runs one per machine of a Ray cluster as detached actors and
``stop_node_exporters`` stops them.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

from rayscale.config import is_loopback, node_bind_host
from rayscale.metrics.gpu import read_gpus
from rayscale.metrics.nodes import alive_nodes, head_node_ids, pinned_to

__all__ = [
    "EXPORTER_NAMESPACE",
    "ExporterServer",
    "build_registry",
    "connect_ray",
    "exporter_name",
    "histogram_buckets",
    "serve_exporter",
    "serve_registry",
    "start_node_exporters",
    "stop_node_exporters",
]

log = logging.getLogger(__name__)

EXPORTER_NAMESPACE = "rayscale"

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
        count = GaugeMetricFamily("rayscale_gpus", "NVIDIA GPUs visible on this node (0 without a driver)", labels=["node"])
        count.add_metric([self.node], len(gpus))
        yield count
        for metric, key, scale, doc in _GPU_GAUGES:
            family = GaugeMetricFamily(metric, doc, labels=_GPU_LABELS)
            for g in gpus:
                if g.get(key) is not None:
                    family.add_metric([self.node, str(g["index"]), g["uuid"], g["name"]], float(g[key]) * scale)
            yield family


def histogram_buckets(h: dict[str, Any]) -> list[tuple[str, float]]:
    """A stats.Histogram dict (non-cumulative counts, +Inf last) as Prometheus cumulative buckets."""
    from prometheus_client.utils import floatToGoString

    buckets, cumulative = [], 0
    for bound, count in zip(list(h["bounds"]) + [float("inf")], h["counts"], strict=True):
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
        replica_cpu = CounterMetricFamily(
            "rayscale_replica_cpu_seconds",
            "CPU time (user + system, every thread) of the app's replica processes since each was ready to serve",
            labels=["app"],
        )
        replica_cpu.add_metric(app, s["replica_cpu_s"])
        yield replica_cpu
        for metric, value, doc in (
            ("rayscale_in_flight_requests", s["in_flight"], "Requests accepted by a replica and not yet answered"),
            ("rayscale_replicas", s["replicas"], "Replicas that have reported statistics"),
        ):
            gauge = GaugeMetricFamily(metric, doc, labels=["app"])
            gauge.add_metric(app, value)
            yield gauge
        for metric, key, doc in (
            ("rayscale_batch_images", "batch_images", "Images per executed batch"),
            ("rayscale_queue_seconds", "queue_seconds", "Time a request waited for its batch to start, seconds"),
            ("rayscale_compute_seconds", "compute_seconds", "Compute time of the batch each request ran in, seconds"),
        ):
            h = s[key]
            histogram = HistogramMetricFamily(metric, doc, labels=["app"])
            histogram.add_metric(app, histogram_buckets(h), sum_value=h["sum"])
            yield histogram


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


def _warn_if_public(host: str, what: str) -> None:
    if not is_loopback(host):
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

    def __enter__(self) -> ExporterServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve_registry(registry, host: str, port: int, what: str) -> ExporterServer:
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
    return serve_registry(build_registry(app_name=app_name, gpus=gpus), host, port, "the metrics exporter")


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
    the app's serving metrics. Ray nodes on one machine (one host name, whatever their addresses)
    share one exporter, so a machine's GPUs are exported once. Each binds where the node's ingress
    does for ``host`` (``node_bind_host``): with loopback, the node's own loopback address where it has
    one (127.0.0.2 for a second node on a machine). Calling it again reuses running exporters.
    """
    import ray
    from ray.exceptions import RayActorError

    from rayscale.errors import ServerError

    if not ray.is_initialized():
        raise ServerError("no Ray cluster connected: call ray.init() (or run `rayscale up`) before starting exporters")
    nodes = alive_nodes()
    driver_node = ray.get_runtime_context().get_node_id()
    serving_node = driver_node
    if not any(n["NodeID"] == driver_node for n in nodes):
        heads = head_node_ids(nodes)
        serving_node = heads[0] if heads else (nodes[0]["NodeID"] if nodes else "")
    one_per_machine: dict[str, dict[str, Any]] = {}
    for n in sorted(nodes, key=lambda n: n["NodeID"] != serving_node):  # the serving node claims its machine
        one_per_machine.setdefault(n.get("NodeManagerHostname") or n["NodeManagerAddress"], n)

    actor_cls = ray.remote(num_cpus=0)(_ExporterActor)
    handles, addresses = [], []
    for n in one_per_machine.values():
        node_id, address = n["NodeID"], n["NodeManagerAddress"]
        handles.append(
            actor_cls.options(
                name=exporter_name(node_id),
                namespace=EXPORTER_NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                scheduling_strategy=pinned_to(node_id),
            ).remote(node_bind_host(host, address), port, app_name if node_id == serving_node else None)
        )
        addresses.append(address)
    for h, address in zip(handles, addresses, strict=True):
        try:
            info = ray.get(h.info.remote(), timeout=60)
        except RayActorError as e:
            cause = str(e.__cause__ or e).strip().splitlines()[-1]
            raise ServerError(
                f"the metrics exporter on {address} could not start ({cause}): choose another port, or run without the exporter"
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

"""The server under measurement: what it says about itself before any load, and its statistics.

* ``preflight_http`` checks, before a single timed request, that the server answers, serves the
  model, and reads its configuration when it has one (Triton's and rayscale's do);
* ``fetch_stats`` / ``server_stats_delta`` turn two snapshots of the statistics extension into the
  server's own queue/compute split over a span (same form for rayscale and Triton);
* ``ServerProbe`` reads the server at each window edge: those statistics and the cumulative CPU
  time of its processes, which ``host_cpu_over`` turns into CPU-seconds over a span;
* ``replicas_from_config`` names the GPUs a server measured as it runs serves its model on.
"""

from __future__ import annotations

import socket
import urllib.error
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from rayscale.config import MODEL_NAME, is_loopback
from rayscale.errors import ConfigError, ServerError
from rayscale.loadgen.config import BenchConfig
from rayscale.protocol import get_json
from rayscale.results import HostCpu, ServerStats

__all__ = [
    "ServerInfo",
    "ServerProbe",
    "ServerReading",
    "fetch_stats",
    "host_cpu_over",
    "ingress_counters",
    "preflight_http",
    "replica_cpu_s",
    "replicas_from_config",
    "server_stats_delta",
]

RAYSCALE_SERVER_NAME = "rayscale"


@dataclass(frozen=True)
class ServerInfo:
    """What a server says about itself (``GET /v2``, the model's metadata and config) before any load."""

    name: str  # as the server names itself
    metadata: dict[str, Any]
    config: dict[str, Any] | None  # None: the server has no config endpoint
    config_error: str | None = None  # why GET .../config gave none

    @property
    def label(self) -> str:
        """The name results use for it: rayscale, triton, or the server's own name in lower case."""
        label = self.name.lower()
        return "triton" if label.startswith("triton") else label

    @property
    def is_rayscale(self) -> bool:
        return self.name == RAYSCALE_SERVER_NAME


def preflight_http(url: str, model: str, token: str | None = None) -> ServerInfo:
    """The server answers, is an Open Inference Protocol server and serves ``model``."""
    base = url.rstrip("/")
    try:
        server = get_json(f"{base}/v2", token=token)
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise ConfigError(f"{base} wants an API token: pass --api-token or set RAYSCALE_API_TOKEN") from None
        raise ServerError(f"{base} is not an Open Inference Protocol server (GET /v2 answered {e.code})") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ServerError(
            f"cannot reach {base} ({getattr(e, 'reason', e)}): is the server up? (`rayscale up` / `rayscale triton up`)"
        ) from None
    try:
        metadata = get_json(f"{base}/v2/models/{model}", token=token)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ConfigError(f"{base} does not serve model {model!r} (HTTP {getattr(e, 'code', e)}): check --model") from None
    config, config_error = None, None
    try:
        config = get_json(f"{base}/v2/models/{model}/config", token=token)
    except (urllib.error.URLError, OSError, ValueError) as e:
        config_error = str(getattr(e, "code", e))
    return ServerInfo(name=str(server.get("name", "server")), metadata=metadata, config=config, config_error=config_error)


def preflight(url: str, model: str, token: str | None = None, *, transport: str = "http") -> ServerInfo:
    """``preflight_http``, or the same questions over gRPC (``transport="grpc"``, ``url`` is host:port)."""
    if transport != "grpc":
        return preflight_http(url, model, token)
    from rayscale.loadgen.grpc_client import preflight as preflight_grpc

    found = preflight_grpc(url, model, token)
    server = found.get("server") or {}
    return ServerInfo(
        name=str(server.get("name", "server")),
        metadata=found.get("metadata") or {},
        config=found.get("config"),
        config_error=None if found.get("config") is not None else "no config over gRPC",
    )


def fetch_stats(
    *, model: str, url: str | None = None, app_name: str | None = None, token: str | None = None, transport: str = "http"
) -> dict[str, Any] | None:
    """A statistics snapshot (Triton's extension) of ``url``, or of the rayscale app ``app_name`` in Ray;
    None where the server keeps none."""
    try:
        if transport == "grpc" and url is not None:
            from rayscale.loadgen.grpc_client import fetch_statistics

            return fetch_statistics(url, model, token)
        if url is None:
            if app_name is None:
                return None
            from rayscale.serve.stats import get_stats_snapshot, statistics_body

            snap = get_stats_snapshot(app_name)
            return statistics_body(snap) if snap else None
        return get_json(f"{url.rstrip('/')}/v2/models/{model}/stats", token=token)
    except Exception:  # statistics are a bonus; never fail a point for them
        return None


def _model_stats(snap: dict[str, Any] | None, model: str) -> dict[str, Any] | None:
    if not snap:
        return None
    for m in snap.get("model_stats", []):
        if m.get("name") == model:
            return m
    return None


def server_stats_delta(
    before: dict[str, Any] | None, after: dict[str, Any] | None, model: str = MODEL_NAME
) -> ServerStats | None:
    """Queue/compute split over a span from two statistics snapshots (same form for rayscale and Triton)."""
    a, b = _model_stats(before, model), _model_stats(after, model)
    if a is None or b is None:
        return None

    def d(path: str, key: str) -> int:
        return int(b["inference_stats"][path][key]) - int(a["inference_stats"][path][key])

    requests = d("success", "count")
    images = int(b.get("inference_count", 0)) - int(a.get("inference_count", 0))
    batches = int(b.get("execution_count", 0)) - int(a.get("execution_count", 0))
    hist: dict[str, int] = {}
    before_bs = {int(x["batch_size"]): int(x["compute_infer"]["count"]) for x in a.get("batch_stats", [])}
    for x in b.get("batch_stats", []):
        n = int(x["compute_infer"]["count"]) - before_bs.get(int(x["batch_size"]), 0)
        if n > 0:
            hist[str(x["batch_size"])] = n
    per = 1e6 * max(requests, 1)
    infer = d("compute_infer", "ns")
    return ServerStats(
        requests=requests,
        images=images,
        batches=batches,
        queue_ms_per_request=d("queue", "ns") / per,
        compute_ms_per_request=(d("compute_input", "ns") + infer + d("compute_output", "ns")) / per,
        compute_infer_ms_per_request=infer / per,
        mean_batch_images=images / batches if batches else 0.0,
        batch_size_histogram=hist,
    )


def replica_cpu_s(snap: dict[str, Any] | None) -> float | None:
    """The replicas' cumulative CPU seconds in a rayscale statistics snapshot; None in anyone else's
    (Triton's, or one read over gRPC, whose statistics message has no room for it)."""
    value = (snap or {}).get("replica_cpu_s")
    return float(value) if isinstance(value, (int, float)) else None


def ingress_counters(app_name: str) -> dict[str, Any]:
    """Each answering node ingress's counters now (requests, bytes, its HAProxy's cumulative CPU
    seconds), by node; empty where none answers."""
    from rayscale.serve.ingress import ingress_counters as read

    try:
        return {c.node: c for c in read(app_name)}
    except Exception:  # counters are a bonus; never fail a point for them
        return {}


@dataclass(frozen=True)
class ServerReading:
    """The server at one window edge: its statistics snapshot and its processes' cumulative CPU
    seconds (user + system, every thread); None where a part is not measured."""

    stats: dict[str, Any] | None
    replica_cpu_s: float | None = None
    ingress_cpu_s: float | None = None
    triton_cpu_s: float | None = None
    ingresses: dict[str, Any] = field(default_factory=dict)  # node -> IngressCounters (rayscale's own ingress)


class ServerProbe:
    """Reads the server under measurement at each window edge, never in between.

    * A rayscale app in this Ray cluster (``--handle``, or a URL that answers as rayscale while the
      app runs here): statistics come straight from the app's statistics actor, whatever the
      transport, with its replicas' CPU time in them; with ``ingress_app`` (requests through its
      own ingress), each node ingress's counters: what it carried and its HAProxy's CPU time.
    * Any other server: statistics over its protocol (a remote rayscale's HTTP statistics carry its
      replicas' CPU time too); when it is a tritonserver on this machine, the CPU time of its process
      tree (the server and its backend stubs).
    """

    def __init__(self, cfg: BenchConfig, *, rayscale_app: bool, ingress_app: str | None = None):
        self.cfg = cfg
        self.rayscale_app = rayscale_app
        self.ingress_app = ingress_app
        self.triton_pid = None if rayscale_app or cfg.url is None else _local_triton_pid(cfg.url, cfg.transport)

    def read(self) -> ServerReading:
        from rayscale.metrics.cpu import process_tree_cpu_s

        cfg = self.cfg
        stats = fetch_stats(model=cfg.model, url=None if self.rayscale_app else cfg.url, app_name=cfg.app_name,
                            token=cfg.api_token, transport=cfg.transport)  # fmt: skip
        ingresses = ingress_counters(self.ingress_app) if self.ingress_app else {}
        cpu = [c.cpu_s for c in ingresses.values()]
        return ServerReading(
            stats=stats,
            replica_cpu_s=replica_cpu_s(stats),
            # every node's HAProxy, or nothing: a node whose ingress cannot be read makes it unknown
            ingress_cpu_s=sum(cpu) if cpu and None not in cpu else None,
            triton_cpu_s=process_tree_cpu_s(self.triton_pid) if self.triton_pid is not None else None,
            ingresses=ingresses,
        )


def host_cpu_over(before: ServerReading, after: ServerReading, *, measured_s: float, images: int,
                  client_cpu_s: float | None) -> HostCpu:  # fmt: skip
    """The host's CPU-seconds between two readings of the server, beside the clients' over the same span."""
    return HostCpu(
        measured_s=measured_s,
        images=images,
        client_cpu_s=client_cpu_s,
        replica_cpu_s=_spent(before.replica_cpu_s, after.replica_cpu_s),
        ingress_cpu_s=_spent(before.ingress_cpu_s, after.ingress_cpu_s),
        triton_cpu_s=_spent(before.triton_cpu_s, after.triton_cpu_s),
    )


def _spent(before: float | None, after: float | None) -> float | None:
    """CPU seconds between two cumulative readings; None when either is missing or the counter went
    back (its processes restarted in between)."""
    if before is None or after is None or after < before:
        return None
    return after - before


def _local_triton_pid(url: str, transport: str) -> int | None:
    """The tritonserver process on this machine that ``url`` reaches, if there is one."""
    address = urlsplit("//" + url.split("://", 1)[-1]) if transport == "grpc" else urlsplit(url)
    try:
        port = address.port or (443 if address.scheme == "https" else 80)
    except ValueError:
        return None
    if not _is_this_machine(address.hostname or ""):
        return None
    from rayscale.triton.server import local_server_pid

    return local_server_pid(port)


def _is_this_machine(host: str) -> bool:
    if is_loopback(host):
        return True
    try:
        return socket.gethostbyname(host) in (socket.gethostbyname(socket.gethostname()), "127.0.0.1")
    except OSError:
        return False


def replicas_from_config(config: dict[str, Any]) -> int:
    """GPUs the model is served on (rayscale's replicas), from Triton's instance groups; 1 on the CPU.

    A rayscale app states its GPUs in all (``parameters.rayscale_gpus``): its instance group lists
    GPU indices only, which repeat across nodes.
    """
    stated = ((config.get("parameters") or {}).get("rayscale_gpus") or {}).get("string_value")
    if stated is not None and str(stated).isdigit():
        return max(int(stated), 1)
    gpus: set[int] = set()
    counted = 0
    for group in config.get("instance_group") or []:
        if group.get("kind") != "KIND_GPU":
            continue
        ids = [int(g) for g in group.get("gpus") or []]
        gpus.update(ids)
        if not ids:
            counted += int(group.get("count", 1))
    return max(len(gpus) or counted, 1)

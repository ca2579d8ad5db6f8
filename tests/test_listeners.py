"""Nothing `rayscale up` starts on one machine answers an unauthenticated caller from the network.

Every socket the cluster's processes listen on (Ray's servers and agents, Serve's proxy and
replicas, whatever the ingress adds) is read from the process tree; each one bound beyond
loopback must refuse a plain HTTP GET and a gRPC call made without Ray's cluster token.
"""

from __future__ import annotations

import http.client
import http.server
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import psutil
import pytest

from conftest import free_port

HTTP_PATHS = ("/", "/metrics")
# Methods a probe calls: the standard health check (Ray's C++ servers answer it), a Serve replica's
# request entry point, and the Open Inference Protocol's liveness call.
GRPC_METHODS = (
    "/grpc.health.v1.Health/Check",
    "/ray.serve.ASGIService/HandleRequest",
    "/inference.GRPCInferenceService/ServerLive",
)
# What a server without the token may answer: a refusal, no connection, or no such method (the call
# reached no code at all).
GRPC_REFUSALS = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNIMPLEMENTED,
}
PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Listener:
    pid: int
    process: str
    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.process} (pid {self.pid}) on {self.ip}:{self.port}"


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def listeners_of(pids: list[int]) -> list[Listener]:
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            name = proc.name()
            conns = proc.net_connections(kind="inet")
        except psutil.Error:  # exited meanwhile
            continue
        found += [Listener(pid, name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


def reach_address(bound_ip: str) -> str:
    """The address another machine would use: a wildcard bind is reached through this host's own
    non-loopback address (loopback when the host has none: the server is the same one)."""
    if not ipaddress.ip_address(bound_ip.split("%")[0]).is_unspecified:
        return bound_ip
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not is_loopback(a.address):
                return a.address
    return "127.0.0.1"


def hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def http_answer(ip: str, port: int) -> str | None:
    """What an unauthenticated GET got, or None when it was refused (401/403, not HTTP, no connection)."""
    for path in HTTP_PATHS:
        try:
            with urllib.request.urlopen(f"http://{hostport(ip, port)}{path}", timeout=PROBE_TIMEOUT_S) as r:
                return f"GET {path} -> {r.status}"
        except urllib.error.HTTPError as e:
            if e.code not in (401, 403):
                return f"GET {path} -> {e.code}"
        except (OSError, http.client.HTTPException):
            pass  # refused, closed, or not an HTTP/1 server (gRPC answers with HTTP/2 frames)
    return None


def grpc_answer(ip: str, port: int) -> str | None:
    """What an unauthenticated gRPC call got, or None when every call was refused."""
    with grpc.insecure_channel(hostport(ip, port)) as channel:
        for method in GRPC_METHODS:
            try:
                channel.unary_unary(method)(b"", timeout=PROBE_TIMEOUT_S)
                return f"{method} -> OK"
            except grpc.RpcError as e:
                if e.code() not in GRPC_REFUSALS:
                    return f"{method} -> {e.code().name}: {e.details()}"
    return None


def unauthenticated_answers(listener: Listener) -> list[str]:
    ip = reach_address(listener.ip)
    return [f"{listener}: {a}" for a in (http_answer(ip, listener.port), grpc_answer(ip, listener.port)) if a]


# --- the probes themselves: an open server is caught, a refusing one is not -----------------------------


@pytest.fixture
def open_http_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/metrics" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def grpc_server(handler: object) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(handler)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_probes_catch_open_servers_and_pass_refusing_ones(open_http_server):
    assert http_answer("127.0.0.1", open_http_server) == "GET / -> 404"
    assert grpc_answer("127.0.0.1", open_http_server) is None  # an HTTP/1 server is no gRPC server
    open_grpc, open_port = grpc_server(lambda request, context: b"")
    refusing, refusing_port = grpc_server(lambda request, context: context.abort(grpc.StatusCode.UNAUTHENTICATED, "token"))
    try:
        assert grpc_answer("127.0.0.1", open_port) == "/grpc.health.v1.Health/Check -> OK"
        assert http_answer("127.0.0.1", open_port) is None
        assert grpc_answer("127.0.0.1", refusing_port) is None
        assert grpc_answer("127.0.0.1", free_port()) is None  # nothing listening
    finally:
        open_grpc.stop(None)
        refusing.stop(None)


# --- the cluster `rayscale up` starts ------------------------------------------------------------------


@pytest.mark.slow
def test_local_cluster_opens_nothing_unauthenticated_beyond_loopback(model_dir, tmp_path):
    from rayscale.serve.cluster import _cluster_pids

    env = dict(os.environ, RAYSCALE_STATE_DIR=str(tmp_path / "state"), RAYSCALE_RAY_TEMP_DIR=f"/tmp/rsl-{os.getpid()}")
    port = free_port()
    cli = [sys.executable, "-m", "rayscale.cli"]
    up = subprocess.run(
        [
            *cli,
            "up",
            "--provider",
            "cpu",
            "--gpus-per-replica",
            "0",
            "--replicas",
            "1",
            "--model",
            str(model_dir),
            "--port",
            str(port),
            "--exporter-port",
            str(free_port()),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        session_dir = json.loads((tmp_path / "state" / "cluster.json").read_text())["session_dir"]
        pids = _cluster_pids(session_dir)
        listeners = listeners_of(pids)
        assert any(x.port == port and is_loopback(x.ip) for x in listeners), (
            f"the serving port {port} is not among the cluster's listeners: {[str(x) for x in listeners]}"
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=30) as r:
            assert r.status == 200
        beyond_loopback = [x for x in listeners if not is_loopback(x.ip)]
        answers = [a for x in beyond_loopback for a in unauthenticated_answers(x)]
        assert answers == [], "answered without authentication:\n" + "\n".join(answers)
    finally:
        down = subprocess.run([*cli, "down"], env=env, capture_output=True, text=True, timeout=180)
    assert down.returncode == 0, down.stderr[-2000:]
    deadline = time.monotonic() + 20
    while _cluster_pids(session_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _cluster_pids(session_dir) == []
    assert listeners_of(pids) == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()

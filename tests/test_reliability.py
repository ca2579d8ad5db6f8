"""What users can rely on when things go wrong: overload, timeouts, disconnects, dead replicas,
failing health checks, draining, interrupted benchmarks and the security defaults.

One app of two replicas (one logical GPU each, onnxruntime on the CPU) serves every test; the
draining test runs last because it deletes the app.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rayscale import protocol
from rayscale.config import MODEL_NAME, ServeConfig
from rayscale.engine import random_images
from rayscale.errors import ConfigError, ResultsError
from rayscale.loadgen import BenchConfig, run_bench
from rayscale.loadgen.events import WindowMeasured
from rayscale.loadgen.trivial_server import TrivialServer
from rayscale.results import BenchResult, load_results
from rayscale.serve.registry import ReplicaRecord

from conftest import free_port, start_local_ray

pytestmark = pytest.mark.timeout(900)

IMAGES = 4  # per request: ~0.5 s of CPU compute, so a burst of 60 is far above capacity
REQUEST_TIMEOUT_S = 20.0
FAST = dict(warmup_s=0.5, window_s=1.0, duration_s=4.0, max_windows=4, client_cpus=0)


@pytest.fixture(scope="module")
def health_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("health") / "unhealthy"


@pytest.fixture(scope="module")
def app(model_dir, health_file, tmp_path_factory):
    import ray

    from rayscale.serve.app import FAIL_HEALTH_ENV
    from rayscale.serve.cluster import down, up

    saved = {k: os.environ.get(k) for k in (FAIL_HEALTH_ENV, "RAYSCALE_STATE_DIR")}
    os.environ[FAIL_HEALTH_ENV] = str(health_file)  # inherited by the replicas of this local cluster
    os.environ["RAYSCALE_STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
    start_local_ray(num_cpus=4, num_gpus=2, namespace="rayscale")
    cfg = ServeConfig(
        model_dir=str(model_dir),
        replicas=2,
        gpus_per_replica=1,
        cpus_per_replica=0.5,
        provider="cpu",
        port=free_port(),
        grpc_port=free_port(),
        max_batch_size=8,
        batch_wait_ms=2,
        batches_in_flight=1,
        max_queued_requests=4,
        request_timeout_s=REQUEST_TIMEOUT_S,
    )
    result = up(cfg, exporter=False)
    yield result
    if ray.is_initialized():
        down(cfg.app_name, stop_cluster=False)
    if ray.is_initialized():
        ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _infer_url(app) -> str:
    return f"{app.url}/v2/models/{MODEL_NAME}/infer"


def _request(
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    method: str | None = None,
    timeout_s: float = 120,
) -> tuple[int, bytes, dict[str, str], float]:
    """(status, body, headers, seconds); HTTP errors are answers too."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method or ("POST" if body else "GET"))
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, resp.read(), {k.lower(): v for k, v in resp.headers.items()}, time.perf_counter() - t0
    except urllib.error.HTTPError as e:
        return e.code, e.read(), {k.lower(): v for k, v in e.headers.items()}, time.perf_counter() - t0


def _assert_json_error(status: int, data: bytes, headers: dict[str, str]) -> str:
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, data[:200])
    error = json.loads(data)["error"]
    assert isinstance(error, str) and error, data
    return error


def _snapshot(app) -> dict:
    from rayscale.serve.stats import get_stats_snapshot

    return get_stats_snapshot(app.app_name)


def _wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _good_request(n: int = IMAGES, seed: int = 0) -> tuple[bytes, dict[str, str]]:
    return protocol.build_infer_request(random_images(n, seed=seed))


def _replica_ids_answering(app, requests: int = 16) -> set[str]:
    body, headers = _good_request(1)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: _request(_infer_url(app), body, headers), range(requests)))
    assert all(a[0] == 200 for a in answers), [a[:2] for a in answers if a[0] != 200]
    return {a[2]["x-rayscale-replica"] for a in answers}


def _wait_until_two_replicas(app) -> list[ReplicaRecord]:
    from rayscale.serve.cluster import wait_for_replicas

    return wait_for_replicas(app.app_name, 2, timeout_s=240)


# ---- overload --------------------------------------------------------------------------------


def test_a_burst_far_above_capacity_gets_answers_or_quick_json_503s(app):
    """60 concurrent requests against 2 replicas × 4 queue slots: each is answered, none hangs."""
    body, headers = _good_request()
    before = _snapshot(app)["serving"]
    with ThreadPoolExecutor(60) as pool:
        answers = list(pool.map(lambda _: _request(_infer_url(app), body, headers), range(60)))
    ok = [a for a in answers if a[0] == 200]
    rejected = [a for a in answers if a[0] == 503]
    assert len(ok) + len(rejected) == 60, sorted({a[0] for a in answers})
    assert len(rejected) >= 30 and len(ok) >= 2
    for status, data, h, seconds in rejected:
        assert "max_queued_requests" in _assert_json_error(status, data, h)
        assert int(h["retry-after"]) >= 0
        assert seconds < 1.0  # admitted or refused from the headers alone, before the body is read
    latencies = sorted(a[3] for a in ok)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    assert p99 < REQUEST_TIMEOUT_S + 5  # accepted work is bounded by the queue limit
    for _status, data, h, _ in ok:
        assert protocol.parse_infer_response(data, h.get(protocol.HEADER_LENGTH.lower())).shape == (IMAGES, 512)
    after = _wait_for(lambda: (s := _snapshot(app)["serving"])["in_flight"] == 0 and s, 30, "in_flight back to 0")
    assert after["rejected_total"] - before["rejected_total"] == len(rejected)


# ---- timeouts and disconnects ------------------------------------------------------------------


def test_a_client_that_disconnects_mid_request_costs_nothing_afterwards(app):
    body, headers = _good_request(8, seed=2)
    before = _snapshot(app)["serving"]["requests_total"].get("499", 0)
    head = f"POST /v2/models/{MODEL_NAME}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    port = int(app.url.rsplit(":", 1)[1])
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(head.encode() + body)
            time.sleep(0.3)  # the request is queued or running; then the client goes away
    if app.ingress != "direct":  # HAProxy finishes a request whose client left and drops the answer itself
        _wait_for(lambda: _snapshot(app)["serving"]["requests_total"].get("499", 0) > before, 60, "a cancelled request")
    _wait_for(lambda: _snapshot(app)["serving"]["in_flight"] == 0, 60, "in_flight back to 0")
    status, data, h, _ = _request(_infer_url(app), *_good_request(2, seed=3))
    assert status == 200 and protocol.parse_infer_response(data, h.get(protocol.HEADER_LENGTH.lower())).shape == (2, 512)


def test_the_replica_enforces_request_timeout_with_a_json_504(app, model_dir):  # app: its Ray cluster holds the statistics actor
    """The replica's own deadline, on the real engine, batcher and Starlette request."""
    import asyncio

    from starlette.requests import Request

    from rayscale.serve.app import OpenClipEncoder

    cfg = ServeConfig(
        model_dir=str(model_dir),
        provider="cpu",
        max_batch_size=8,
        request_timeout_s=0.05,
        app_name=f"timeout-{os.getpid()}",
        ingress="proxy",
    )
    body, headers = _good_request(8, seed=4)

    def request() -> Request:
        sent = False

        async def receive():
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {
            "type": "http",
            "method": "POST",
            "path": f"/v2/models/{MODEL_NAME}/infer",
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        }
        return Request(scope, receive)

    async def main():
        replica = OpenClipEncoder(cfg)
        try:
            first, second = await asyncio.gather(replica(request()), replica(request()))
            return replica, [first, second]
        finally:
            await replica.shutdown()

    import ray

    from rayscale.serve.stats import kill_collector

    try:
        replica, responses = asyncio.run(main())
        assert all(r.status_code == 504 for r in responses)
        assert all("request_timeout_s" in json.loads(r.body)["error"] for r in responses)
        assert replica.in_flight == 0 and replica.batcher.queued_requests <= 1
    finally:
        if ray.is_initialized():
            kill_collector(cfg.app_name)


# ---- replica failure ---------------------------------------------------------------------------


def test_requests_on_a_killed_replica_fail_fast_with_json_and_serve_replaces_it(app):
    import ray

    replicas = _wait_until_two_replicas(app)
    victim = replicas[0]
    body, headers = _good_request(8, seed=5)
    # 4 requests: even if the router sends all to one replica, they fit its queue (max_queued_requests=4),
    # so every non-200 answer comes from the kill, not from a quick overload 503
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(_request, _infer_url(app), body, headers) for _ in range(4)]
        time.sleep(1.0)  # every request is queued or running on one of the replicas
        ray.kill(ray.get_actor(victim.actor_name, namespace=victim.actor_namespace))
        answers = [f.result(timeout=120) for f in futures]
    for status, data, h, seconds in answers:
        assert status in (200, 503), (status, data[:200])
        if status != 200:
            assert "replica" in _assert_json_error(status, data, h)
            assert seconds < 60
    new = _wait_until_two_replicas(app)
    assert victim.replica not in {r.replica for r in new}
    _wait_for(lambda: len(_replica_ids_answering(app)) == 2, 120, "traffic on both replicas")


def _replica_killer(app, when_window: int):
    """An on_event callback that kills one replica at the start of a measurement window."""
    import ray

    killed: list[str] = []

    def on_event(event):
        if isinstance(event, WindowMeasured) and event.index == when_window and not killed:
            info = _snapshot_replicas(app)[0]
            ray.kill(ray.get_actor(info.actor_name, namespace=info.actor_namespace))
            killed.append(info.replica)

    return on_event, killed


def _snapshot_replicas(app) -> list[ReplicaRecord]:
    from rayscale.serve import registry

    return registry.replica_records(app.app_name, live_only=True)


def test_bench_counts_every_request_through_a_replica_failure(app, tmp_path):
    _wait_until_two_replicas(app)
    out = tmp_path / "kill.json"
    cfg = BenchConfig(
        url=app.url,
        replicas=[2],
        concurrency=[4],
        images_per_request=[2],
        out=str(out),
        clients=1,
        warmup_s=0.5,
        window_s=3.0,
        duration_s=15.0,
        max_windows=5,
        stability=0.01,
        client_cpus=0,
        request_timeout_s=REQUEST_TIMEOUT_S,
    )
    on_event, killed = _replica_killer(app, when_window=1)
    point = run_bench(cfg, on_event=on_event).points[0]
    assert killed
    loaded = load_results(out).points[0]
    assert loaded.requests_sent == loaded.requests_ok + loaded.requests_failed + loaded.requests_incomplete
    assert loaded.requests_ok > 0
    # answered in JSON, or (a request the ingress had sent over a reused connection to the dead
    # replica, too large for it to retry) a closed connection: counted, never a hang or a lost request
    assert set(loaded.errors) <= {"http_503", "http_500", "connection"}, loaded.errors
    assert sum(e["count"] for e in loaded.error_timeline) == loaded.requests_failed
    print(
        f"\nreplica kill: sent={point.requests_sent} ok={point.requests_ok} failed={point.requests_failed} "
        f"({point.errors}) incomplete={point.requests_incomplete} lost=0 timeline={point.error_timeline}"
    )
    _wait_until_two_replicas(app)
    _wait_for(lambda: len(_replica_ids_answering(app)) == 2, 120, "traffic on both replicas")


# ---- health ------------------------------------------------------------------------------------


def test_a_replica_whose_health_check_fails_is_replaced(app, health_file):
    replicas = _wait_until_two_replicas(app)
    sick = replicas[1].replica
    health_file.write_text(sick + "\n")
    try:
        _wait_for(lambda: sick not in {r.replica for r in _snapshot_replicas(app)}, 120, "the sick replica to go")
    finally:
        health_file.unlink()
    new = _wait_until_two_replicas(app)
    assert sick not in {r.replica for r in new}
    assert _request(f"{app.url}/v2/health/ready")[0] == 200


# ---- security defaults -------------------------------------------------------------------------


def _listening(port: int) -> set[str]:
    """Local addresses listening on ``port``, from the kernel's socket tables."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                if width == 8:
                    found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
                else:
                    found.add(addr)
    return found


def test_serving_and_the_exporter_listen_on_loopback_only(app):
    from rayscale.metrics import start_node_exporters, stop_node_exporters

    assert _listening(int(app.url.rsplit(":", 1)[1])) == {"127.0.0.1"}
    port = free_port()
    start_node_exporters(port=port, app_name=app.app_name)
    try:
        _wait_for(lambda: _listening(port), 60, "the exporter to listen")
        assert _listening(port) == {"127.0.0.1"}
    finally:
        stop_node_exporters()
    from rayscale.triton.server import TritonConfig

    assert TritonConfig().host == "127.0.0.1"


def test_a_public_bind_without_an_api_token_is_refused(model_dir):
    from rayscale.serve.cluster import up

    with pytest.raises(ConfigError, match="--api-token"):
        up(ServeConfig(model_dir=str(model_dir), host="0.0.0.0", provider="cpu"), exporter=False)


def test_unsupported_management_endpoints_are_404_or_501_in_json(app):
    for method, path, expected in [
        ("POST", "/v2/repository/index", 501),
        ("POST", f"/v2/repository/models/{MODEL_NAME}/load", 501),
        ("POST", f"/v2/repository/models/{MODEL_NAME}/unload", 501),
        ("GET", "/v2/systemsharedmemory/status", 501),
        ("POST", "/v2/cudasharedmemory/register", 501),
        ("GET", "/v2/trace/setting", 501),
        ("POST", "/v2/logging", 501),
        ("GET", "/metrics", 404),
        ("GET", "/admin", 404),
    ]:
        status, data, h, _ = _request(app.url + path, b"{}" if method == "POST" else None, method=method)
        assert status == expected, (path, status, data[:200])
        _assert_json_error(status, data, h)


def test_the_api_token_guards_every_route_but_health(app, model_dir, tmp_path_factory):  # app: its Ray cluster
    """Auth is enforced in the replica: 401 JSON without the token, 200 with it."""
    import asyncio

    from starlette.requests import Request

    from rayscale.serve.app import OpenClipEncoder
    from rayscale.serve.stats import kill_collector

    cfg = ServeConfig(
        model_dir=str(model_dir),
        provider="cpu",
        max_batch_size=8,
        api_token="s3cret",
        app_name=f"auth-{os.getpid()}",
        ingress="proxy",
    )

    def request(path: str, auth: str | None) -> Request:
        headers = [(b"authorization", auth.encode())] if auth else []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        return Request({"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": headers}, receive)

    async def main():
        replica = OpenClipEncoder(cfg)
        try:
            answers = {}
            for path in ("/v2", f"/v2/models/{MODEL_NAME}", "/v2/health/live", "/v2/health/ready"):
                for auth in (None, "Bearer wrong", "Bearer s3cret"):
                    answers[(path, auth)] = await replica(request(path, auth))
            return answers
        finally:
            await replica.shutdown()

    try:
        answers = asyncio.run(main())
    finally:
        kill_collector(cfg.app_name)
    for (path, auth), resp in answers.items():
        if path.startswith("/v2/health") or auth == "Bearer s3cret":
            assert resp.status_code == 200, (path, auth)
        else:
            assert resp.status_code == 401, (path, auth)
            assert "Authorization: Bearer" in json.loads(resp.body)["error"]


# ---- interrupted benchmarks (a trivial server: no model needed) ------------------------------


def test_an_interrupted_bench_leaves_a_valid_file_marked_incomplete(app, tmp_path):
    out = tmp_path / "interrupted.json"
    with TrivialServer(delay_s=0.01) as server:
        cfg = BenchConfig(url=server.url, concurrency=[2, 4], out=str(out), clients=1, **FAST)

        def interrupt(event):
            if isinstance(event, WindowMeasured) and event.index == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run_bench(cfg, on_event=interrupt)
        loaded = load_results(out)
        assert isinstance(loaded, BenchResult) and loaded.status == "incomplete"
        assert [p.status for p in loaded.points] == ["incomplete"]
        assert loaded.points[0].error == "interrupted"
        # the earlier file is kept unless asked
        before = out.read_bytes()
        with pytest.raises(ResultsError, match="--overwrite"):
            run_bench(cfg)
        assert out.read_bytes() == before
        assert run_bench(BenchConfig(**{**cfg.to_dict(), "overwrite": True})).status == "complete"
        assert load_results(out).status == "complete"


def test_a_dead_client_actor_fails_its_point_and_the_sweep_goes_on(app, tmp_path):
    import ray

    from rayscale.serve.cluster import _cluster_pids

    session = ray._private.worker.global_worker.node.get_session_dir_path()
    out = tmp_path / "dead-client.json"
    with TrivialServer(delay_s=0.01) as server:
        cfg = BenchConfig(url=server.url, concurrency=[2, 3], out=str(out), clients=1, **FAST)
        killed: list[int] = []

        def kill_client(event):
            if isinstance(event, WindowMeasured) and event.index == 1 and not killed:
                for pid in _cluster_pids(session):
                    try:
                        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                    except OSError:
                        continue
                    if b"LoadClient" in cmd:
                        os.kill(pid, 9)
                        killed.append(pid)

        result = run_bench(cfg, on_event=kill_client)
    assert killed
    loaded = load_results(out)
    assert loaded.status == "complete"
    assert loaded.points[0].status == "failed" and loaded.points[0].error
    assert loaded.points[1].status in ("ok", "unstable") and loaded.points[1].requests_ok > 0
    assert [p.status for p in result.points] == [p.status for p in loaded.points]


def test_a_server_that_dies_mid_bench_gives_counted_connection_errors(app, tmp_path):
    out = tmp_path / "dead-server.json"
    server = TrivialServer(delay_s=0.01)

    def kill_server(event):
        if isinstance(event, WindowMeasured) and event.index == 1:
            server.close()

    try:
        point = run_bench(
            BenchConfig(url=server.url, concurrency=[2], out=str(out), clients=1, **FAST), on_event=kill_server
        ).points[0]
    finally:
        server.close()
    loaded = load_results(out).points[0]
    assert loaded.requests_failed > 0 and set(loaded.errors) <= {"connection", "timeout"}
    assert loaded.requests_sent == loaded.requests_ok + loaded.requests_failed + loaded.requests_incomplete
    assert point.error_timeline and sum(e["count"] for e in point.error_timeline) == point.requests_failed


# ---- draining (last: deletes the app) ----------------------------------------------------------


def test_down_turns_readiness_off_first_and_finishes_in_flight_requests(app):
    from rayscale.serve.cluster import down

    _wait_until_two_replicas(app)
    assert _request(f"{app.url}/v2/health/ready")[0] == 200
    body, headers = _good_request(IMAGES, seed=6)
    readiness: list[tuple[float, int, bytes, dict]] = []
    stop = threading.Event()

    def poll_ready():
        while not stop.is_set():
            try:
                status, data, h, _ = _request(f"{app.url}/v2/health/ready", timeout_s=10)
                readiness.append((time.monotonic(), status, data, h))
            except OSError:
                break  # the proxy is gone
            time.sleep(0.05)

    with ThreadPoolExecutor(8) as pool:
        in_flight = [pool.submit(_request, _infer_url(app), body, headers) for _ in range(4)]
        time.sleep(0.5)
        poller = pool.submit(poll_ready)
        time.sleep(0.3)
        done = down(app.app_name, stop_cluster=False, drain_s=1.0)
        stop.set()
        answers = [f.result(timeout=120) for f in in_flight]
        poller.result(timeout=60)
    assert done.app_deleted
    assert [a[0] for a in answers] == [200] * 4  # none lost
    statuses = [r[1] for r in readiness]
    assert 200 in statuses and any(s != 200 for s in statuses), statuses
    first_off = next(i for i, s in enumerate(statuses) if s != 200)
    off = readiness[first_off:]
    assert all(s != 200 for s in statuses[first_off:]), statuses  # once off, readiness stays off
    # readiness goes false while the app still runs (503 draining), before its route is gone
    assert off[0][1] == 503 and "draining" in _assert_json_error(*off[0][1:]), statuses
    for _, status, data, h in off:
        _assert_json_error(status, data, h)

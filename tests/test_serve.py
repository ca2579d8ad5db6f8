"""`rayscale up` as a user runs it: two replicas, one logical GPU each, real HTTP, real tritonclient."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from rayscale import protocol
from rayscale.config import MODEL_NAME, ServeConfig
from rayscale.engine import Engine, random_images
from rayscale.perf_analyzer import replicas_from_config
from rayscale.serve.app import triton_model_config
from rayscale.serve.registry import ReplicaRecord

from conftest import MIN_CPU_S_PER_1000_IMAGES_ON_CPU, free_port, start_local_ray

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def app(model_dir):
    import ray

    from rayscale.serve.cluster import down, up

    start_local_ray(num_cpus=4, num_gpus=2, namespace="rayscale")
    port = free_port()
    cfg = ServeConfig(
        model_dir=str(model_dir),
        replicas=2,
        gpus_per_replica=1,
        cpus_per_replica=0.5,
        provider="cpu",
        port=port,
        grpc_port=free_port(),
        batch_wait_ms=5,
        max_batch_size=16,
    )
    result = up(cfg, exporter=False)
    yield result
    down(cfg.app_name)
    ray.shutdown()


@pytest.fixture(scope="module")
def engine(model_dir):
    return Engine(model_dir, provider="cpu", max_batch_size=16)


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read(), _headers(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), _headers(e.headers)


def _headers(h) -> dict[str, str]:
    """Header names as the protocol spells them (HTTP header names are case-insensitive)."""
    out = {k.lower(): v for k, v in h.items()}
    if protocol.HEADER_LENGTH.lower() in out:
        out[protocol.HEADER_LENGTH] = out[protocol.HEADER_LENGTH.lower()]
    return out


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _infer_url(app) -> str:
    return f"{app.url}/v2/models/{MODEL_NAME}/infer"


def test_each_replica_holds_its_own_gpu(app):
    gpus = sorted(r.gpu_ids[0] for r in app.replica_info)
    assert gpus == ["0", "1"]
    assert {r.provider for r in app.replica_info} == {"cpu"}


def test_tritonclient_binary_infer_equals_engine(app, engine):
    import tritonclient.http as httpclient

    images = random_images(3, seed=11)
    client = httpclient.InferenceServerClient(app.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_model_ready(MODEL_NAME)
    inp = httpclient.InferInput("IMAGE", list(images.shape), "UINT8")
    inp.set_data_from_numpy(images, binary_data=True)
    out = httpclient.InferRequestedOutput("EMBEDDING", binary_data=True)
    result = client.infer(MODEL_NAME, [inp], outputs=[out])
    np.testing.assert_allclose(result.as_numpy("EMBEDDING"), engine.encode(images), rtol=1e-4, atol=1e-4)
    meta = client.get_model_metadata(MODEL_NAME)
    assert meta["inputs"][0] == {"name": "IMAGE", "datatype": "UINT8", "shape": [-1, 224, 224, 3]}


def test_tritonclient_grpc_through_the_ingress_equals_engine(app, engine):
    """gRPC (inference.GRPCInferenceService) through the default ingress, with Triton's own client."""
    import tritonclient.grpc as grpcclient

    images = random_images(3, seed=15)
    client = grpcclient.InferenceServerClient(app.grpc_target)
    assert client.is_server_live() and client.is_model_ready(MODEL_NAME)
    inp = grpcclient.InferInput("IMAGE", list(images.shape), "UINT8")
    inp.set_data_from_numpy(images)
    result = client.infer(MODEL_NAME, [inp], outputs=[grpcclient.InferRequestedOutput("EMBEDDING")])
    np.testing.assert_allclose(result.as_numpy("EMBEDDING"), engine.encode(images), rtol=1e-4, atol=1e-4)
    with pytest.raises(Exception, match="shape"):
        bad = grpcclient.InferInput("IMAGE", [1, 224, 224, 4], "UINT8")
        bad.set_data_from_numpy(np.zeros((1, 224, 224, 4), np.uint8))
        client.infer(MODEL_NAME, [bad])


def test_replica_ports_refuse_requests_without_the_ingress_token(app):
    """Only the ingress may talk to a replica's own servers."""
    for r in app.replica_info:
        status, body = _get(f"http://{r.host}:{r.http_port}/v2/health/ready")
        assert status == 401, body
        assert "ingress" in body["error"]


def test_json_tensors_give_the_same_embeddings(app, engine):
    images = random_images(2, seed=12)
    body, headers = protocol.build_infer_request(images, binary=False)
    status, data, resp_headers = _post(_infer_url(app), body, headers)
    assert status == 200, data
    got = protocol.parse_infer_response(data, resp_headers.get(protocol.HEADER_LENGTH))
    np.testing.assert_allclose(got, engine.encode(images), rtol=1e-4, atol=1e-4)


def test_both_replicas_receive_traffic(app):
    body, headers = protocol.build_infer_request(random_images(1, seed=13))
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: _post(_infer_url(app), body, headers), range(24)))
    assert all(status == 200 for status, _, _ in results)
    replicas = {h.get("x-rayscale-replica") for _, _, h in results}
    assert replicas == {r.replica for r in app.replica_info}


def test_statistics_count_requests_and_images(app):
    stats_before = _get(f"{app.url}/v2/models/{MODEL_NAME}/stats")[1]
    before = stats_before["model_stats"][0]
    body, headers = protocol.build_infer_request(random_images(3, seed=14))
    for _ in range(4):
        assert _post(_infer_url(app), body, headers)[0] == 200
    stats_after = _get(f"{app.url}/v2/models/{MODEL_NAME}/stats")[1]
    after = stats_after["model_stats"][0]
    # beside Triton's form, the replicas' CPU time: at least what the model's arithmetic costs
    spent_s = stats_after["replica_cpu_s"] - stats_before["replica_cpu_s"]
    assert spent_s > 12 * MIN_CPU_S_PER_1000_IMAGES_ON_CPU / 1000
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 4
    assert after["inference_count"] - before["inference_count"] == 12
    assert after["inference_stats"]["compute_infer"]["ns"] > before["inference_stats"]["compute_infer"]["ns"]
    assert sum(b["compute_infer"]["count"] for b in after["batch_stats"]) == after["execution_count"]


def test_metadata_health_and_config_endpoints(app):
    assert _get(f"{app.url}/v2/health/live")[0] == 200
    assert _get(f"{app.url}/v2/health/ready")[0] == 200
    status, server = _get(f"{app.url}/v2")
    assert status == 200 and server["name"] == "rayscale" and "binary_tensor_data" in server["extensions"]
    status, cfg = _get(f"{app.url}/v2/models/{MODEL_NAME}/config")
    assert status == 200 and cfg["max_batch_size"] == 16
    assert cfg["input"][0]["data_type"] == "TYPE_UINT8" and cfg["output"][0]["dims"] == [512]
    assert cfg["instance_group"][0]["count"] == 2 and cfg["instance_group"][0]["gpus"] == [0, 1]
    assert replicas_from_config(cfg) == 2  # what perf_analyzer runs record as the server's GPUs
    assert _get(f"{app.url}/v2/models/{MODEL_NAME}/versions/1/ready")[0] == 200


def _bad_requests():
    good = random_images(1, seed=15)
    body, headers = protocol.build_infer_request(good)
    hl = int(headers[protocol.HEADER_LENGTH])
    header = json.loads(body[:hl])

    def with_header(h: dict, raw: bytes = good.tobytes()) -> tuple[bytes, dict]:
        head = json.dumps(h).encode()
        return head + raw, {"Content-Type": "application/octet-stream", protocol.HEADER_LENGTH: str(len(head))}

    def edit(**changes) -> dict:
        h = json.loads(json.dumps(header))
        h["inputs"][0].update(changes)
        return h

    over = random_images(17, seed=1)
    over_body, over_headers = protocol.build_infer_request(over)
    return {
        "wrong input name": (*with_header(edit(name="PIXELS")), "PIXELS"),
        "wrong dtype": (*with_header(edit(datatype="FP32")), "UINT8"),
        "wrong shape": (*with_header(edit(shape=[1, 224, 224, 4])), "shape"),
        "empty batch": (*with_header(edit(shape=[0, 224, 224, 3], parameters={"binary_data_size": 0}), b""), "batch size"),
        "batch over the limit": (over_body, over_headers, "max_batch_size"),
        "malformed JSON": (b"{not json", {"Content-Type": "application/json"}, "malformed JSON"),
        "truncated binary body": (body[:-100], headers, "expected"),
        "wrong header length": (body, {**headers, protocol.HEADER_LENGTH: str(hl + 7)}, ""),
    }


@pytest.mark.parametrize("case", list(_bad_requests()))
def test_bad_input_is_a_400_naming_the_problem_and_the_server_still_works(app, engine, case):
    body, headers, needle = _bad_requests()[case]
    status, data, _ = _post(_infer_url(app), body, headers)
    assert status == 400, (case, data)
    error = json.loads(data)["error"]
    assert needle.lower() in error.lower()
    images = random_images(2, seed=16)
    good_body, good_headers = protocol.build_infer_request(images)
    status, data, h = _post(_infer_url(app), good_body, good_headers)
    assert status == 200
    np.testing.assert_allclose(
        protocol.parse_infer_response(data, h.get(protocol.HEADER_LENGTH)), engine.encode(images), rtol=1e-4, atol=1e-4
    )


def test_unknown_model_is_404_and_unsupported_extensions_501(app):
    body, headers = protocol.build_infer_request(random_images(1))
    status, data, _ = _post(f"{app.url}/v2/models/resnet50/infer", body, headers)
    assert status == 404 and "resnet50" in json.loads(data)["error"]
    status, data, _ = _post(f"{app.url}/v2/repository/index", b"{}", {"Content-Type": "application/json"})
    assert status == 501 and "error" in json.loads(data)


def test_handle_path_takes_a_numpy_batch(app, engine):
    from ray import serve

    from rayscale.serve.app import DEPLOYMENT_NAME

    handle = serve.get_deployment_handle(DEPLOYMENT_NAME, app.app_name)
    images = random_images(4, seed=17)
    out = handle.infer.remote(images).result(timeout_s=120)
    np.testing.assert_allclose(out, engine.encode(images), rtol=1e-4, atol=1e-4)


def test_cli_up_status_down_leaves_no_ray_process(model_dir, tmp_path):
    """The README's commands in a fresh process: a cluster of our own, and nothing left after down."""
    env = dict(os.environ, RAYSCALE_STATE_DIR=str(tmp_path / "state"), RAYSCALE_RAY_TEMP_DIR=f"/tmp/rs-{os.getpid()}")
    port = free_port()
    cli = [sys.executable, "-m", "rayscale.cli"]
    up = subprocess.run(
        [
            *cli,
            "up",
            "--replicas",
            "1",
            "--model",
            str(model_dir),
            "--port",
            str(port),
            "--grpc-port",
            str(free_port()),
            "--cpus-per-replica",
            "0.5",
            "--no-exporter",
            "--num-gpus",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert up.returncode == 0, up.stderr[-2000:]
    assert f"http://127.0.0.1:{port}" in up.stdout
    state = json.loads((tmp_path / "state" / "cluster.json").read_text())
    status = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "RUNNING" in status.stdout
    down = subprocess.run([*cli, "down"], env=env, capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stderr[-2000:]
    assert "Ray cluster stopped" in down.stdout
    from rayscale.serve.cluster import _cluster_pids

    deadline = time.monotonic() + 20
    while _cluster_pids(state["session_dir"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _cluster_pids(state["session_dir"]) == []
    assert not (tmp_path / "state" / "cluster.json").exists()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr_hex, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(".".join(str(int(addr_hex[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_haproxy_ingress_serves_the_protocol_on_loopback(model_dir, tmp_path):
    """`--ingress haproxy`: HAProxy in front of the replica's own port, still loopback-only, same protocol."""
    env = dict(os.environ, RAYSCALE_STATE_DIR=str(tmp_path / "state"), RAYSCALE_RAY_TEMP_DIR=f"/tmp/rsh-{os.getpid()}")
    port = free_port()
    cli = [sys.executable, "-m", "rayscale.cli"]
    up = subprocess.run(
        [
            *cli,
            "up",
            "--replicas",
            "1",
            "--model",
            str(model_dir),
            "--port",
            str(port),
            "--ingress",
            "haproxy",
            "--provider",
            "null",
            "--cpus-per-replica",
            "0.5",
            "--no-exporter",
            "--num-gpus",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        assert _listening_addresses(port) == {"127.0.0.1"}
        body, headers = protocol.build_infer_request(random_images(3, seed=21))
        status, data, h = _post(f"http://127.0.0.1:{port}/v2/models/{MODEL_NAME}/infer", body, headers)
        assert status == 200
        emb = protocol.parse_infer_response(data, h.get(protocol.HEADER_LENGTH))
        assert emb.shape == (3, 512) and not emb.any()  # the null engine: zeros, serving path only
        status, data, _ = _post(f"http://127.0.0.1:{port}/v2/models/nope/infer", body, headers)
        assert status == 404 and "nope" in json.loads(data)["error"]
    finally:
        down = subprocess.run([*cli, "down"], env=env, capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stderr[-2000:]


def test_model_config_counts_gpus_across_nodes_and_shared_gpus_once():
    """Every node has a GPU 0: the config's GPU count must not collapse them, nor count a shared one twice."""
    cfg = ServeConfig(gpus_per_replica=1.0)
    two_nodes = [
        ReplicaRecord(replica="r1", node="a", pid=1, gpu_ids=["0"]),
        ReplicaRecord(replica="r2", node="b", pid=2, gpu_ids=["0"]),
    ]
    assert replicas_from_config(triton_model_config(cfg, two_nodes)) == 2
    shared = ServeConfig(gpus_per_replica=0.25)
    one_gpu = [ReplicaRecord(replica=f"r{i}", node="a", pid=i, gpu_ids=["0"]) for i in range(4)]
    config = triton_model_config(shared, one_gpu)
    assert replicas_from_config(config) == 1 and config["instance_group"][0]["count"] == 4
    assert config["parameters"]["gpus_per_replica"]["string_value"] == "0.25"


def test_an_engine_that_answers_too_few_outputs_fails_every_request_of_the_batch():
    """Each request gets an answer or an error: none waits forever for an output that never came."""
    import asyncio

    from rayscale.serve.batcher import ImageBatcher

    def short_by_one(parts: list[np.ndarray]) -> tuple[list[np.ndarray], int, int]:
        return [np.zeros((len(p), 4)) for p in parts[:-1]], 0, 0

    async def main() -> list[BaseException | np.ndarray]:
        batcher = ImageBatcher(short_by_one, max_batch_size=8, batch_wait_ms=50, batches_in_flight=1)
        try:
            return await asyncio.wait_for(
                asyncio.gather(*(batcher.submit(np.zeros((1, 2))) for _ in range(3)), return_exceptions=True), timeout=10
            )
        finally:
            batcher.close()

    answers = asyncio.run(main())
    assert len(answers) == 3 and all(isinstance(a, RuntimeError) and "2 outputs for a batch of 3" in str(a) for a in answers)

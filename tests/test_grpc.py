"""The Open Inference Protocol over gRPC, as Triton's clients use it: tritonclient.grpc and `rayscale bench --grpc`.

Each server is the real gRPC service on loopback, running on an asyncio loop in a thread of the
test process, over a small replica written here: a real ImageBatcher over a real CPU Engine (or
a NullEngine where the values do not matter) and real serving statistics.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from rayscale.config import EMBED_DIM, IMAGE_BYTES, IMAGE_SIZE, INPUT_NAME, MODEL_NAME, OUTPUT_NAME
from rayscale.engine import Engine, NullEngine, random_images
from rayscale.errors import Unauthorized
from rayscale.serve.batcher import ImageBatcher
from rayscale.serve.grpc_service import start_grpc_server
from rayscale.serve.stats import ReplicaStats, StatsCollector

from conftest import free_port, start_local_ray

pytestmark = pytest.mark.timeout(300)

TOKEN = "s3cret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
MAX_BATCH = 4
MAX_MESSAGE_BYTES = 8 * IMAGE_BYTES + (64 << 10)  # room for 8 images: a batch of 5 reaches the model's own check


class Replica:
    """What the gRPC service sees of a replica: a batcher over an engine, statistics, a token, readiness."""

    def __init__(self, engine: Any, *, token: str | None = None, max_queued_requests: int = -1):
        self.max_batch_size = MAX_BATCH
        self.token = token
        self.draining = False
        self.stats = ReplicaStats()
        self.collector = StatsCollector()
        self.batcher = ImageBatcher(
            engine.encode_parts, max_batch_size=MAX_BATCH, batch_wait_ms=1.0, batches_in_flight=1,
            max_queued_requests=max_queued_requests, on_batch=self._on_batch,
        )  # fmt: skip

    async def infer(self, images: np.ndarray) -> np.ndarray:
        out, _, _ = await self.batcher.submit(images)
        return out

    def check_token(self, token: str | None) -> None:
        if self.token is not None and token != self.token:
            raise Unauthorized("missing or wrong API token: send 'authorization: Bearer <token>' metadata")

    def model_metadata(self) -> dict:
        return {
            "name": MODEL_NAME, "versions": ["1"], "platform": "onnxruntime_onnx",
            "inputs": [{"name": INPUT_NAME, "datatype": "UINT8", "shape": [-1, IMAGE_SIZE, IMAGE_SIZE, 3]}],
            "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, EMBED_DIM]}],
            "parameters": {"precision": "fp32"},
        }  # fmt: skip

    def server_metadata(self) -> dict:
        return {"name": "rayscale", "version": "0.1.0", "extensions": ["binary_tensor_data", "statistics", "model_configuration"]}

    async def is_ready(self) -> bool:
        return not self.draining

    async def model_config(self) -> dict:
        return {
            "name": MODEL_NAME, "platform": "onnxruntime_onnx", "backend": "rayscale", "max_batch_size": MAX_BATCH,
            "input": [{"name": INPUT_NAME, "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC", "dims": [IMAGE_SIZE, IMAGE_SIZE, 3]}],
            "output": [{"name": OUTPUT_NAME, "data_type": "TYPE_FP32", "dims": [EMBED_DIM]}],
            "instance_group": [{"name": "OpenClipEncoder", "kind": "KIND_CPU", "count": 1}],
            "parameters": {"rayscale_gpus": {"string_value": "0"}},
            "a_field_triton_does_not_know": True,
        }  # fmt: skip

    async def model_statistics(self) -> dict:
        return {"model_stats": self.collector.snapshot()["model_stats"]}

    def _on_batch(self, timing: Any, batch: list, started_ns: int) -> None:
        now = time.perf_counter_ns()
        self.stats.record_batch(
            images=timing.images, request_images=[p.n for p in batch], queue_ns=[started_ns - p.enqueued_ns for p in batch],
            total_ns=[now - p.enqueued_ns for p in batch], input_ns=timing.input_ns, infer_ns=timing.infer_ns,
            output_ns=timing.output_ns,
        )  # fmt: skip
        self.collector.record("replica-0", self.stats.take(), 0)


class Served:
    """The gRPC service over a Replica, on its own event loop in a thread of this process."""

    def __init__(self, make_replica: Callable[[], Replica]):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start() -> tuple[Replica, Any, int]:
            replica = make_replica()
            server, port = await start_grpc_server(replica, host="127.0.0.1", port=0, max_message_bytes=MAX_MESSAGE_BYTES)
            return replica, server, port

        self.replica, self.server, self.port = self.run(start())
        self.url = f"127.0.0.1:{self.port}"

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        self.run(self.server.stop(0))
        self.replica.batcher.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@contextlib.contextmanager
def serving(make_replica: Callable[[], Replica]) -> Iterator[Served]:
    served = Served(make_replica)
    try:
        yield served
    finally:
        served.close()


@pytest.fixture(scope="module")
def engine(model_dir):
    return Engine(model_dir, provider="cpu", max_batch_size=MAX_BATCH)


@pytest.fixture(scope="module")
def served(engine):
    with serving(lambda: Replica(engine, token=TOKEN)) as s:
        yield s


@pytest.fixture(scope="module")
def client(served):
    c = grpcclient.InferenceServerClient(served.url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(served):
    channel = grpc.insecure_channel(
        served.url, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    )
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def image_input(images: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(INPUT_NAME, list(images.shape), "UINT8")
    inp.set_data_from_numpy(images)
    return inp


def raw_request(images: np.ndarray, **fields: Any) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=MODEL_NAME, **fields)
    request.inputs.add(name=INPUT_NAME, datatype="UINT8", shape=list(images.shape))
    request.raw_input_contents.append(images.tobytes())
    return request


# ---- health, metadata, configuration, statistics -----------------------------------------------


def test_health_needs_no_token_and_readiness_follows_draining(served, client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL_NAME)
    assert client.is_model_ready(MODEL_NAME, "1")
    served.replica.draining = True
    try:
        assert client.is_server_live()
        assert not client.is_server_ready() and not client.is_model_ready(MODEL_NAME)
    finally:
        served.replica.draining = False
    with pytest.raises(InferenceServerException) as e:
        client.is_model_ready("resnet50")
    assert e.value.status() == "StatusCode.NOT_FOUND" and "resnet50" in e.value.message()


def test_metadata_and_config_in_triton_form(client):
    server = client.get_server_metadata(headers=AUTH, as_json=True)
    assert server["name"] == "rayscale" and "statistics" in server["extensions"]
    model = client.get_model_metadata(MODEL_NAME, headers=AUTH, as_json=True)
    assert model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": INPUT_NAME, "datatype": "UINT8", "shape": ["-1", "224", "224", "3"]}]
    assert model["outputs"][0]["name"] == OUTPUT_NAME and model["outputs"][0]["datatype"] == "FP32"
    config = client.get_model_config(MODEL_NAME, headers=AUTH, as_json=True)["config"]
    assert config["max_batch_size"] == MAX_BATCH
    assert config["input"][0]["data_type"] == "TYPE_UINT8" and config["input"][0]["dims"] == ["224", "224", "3"]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["parameters"]["rayscale_gpus"]["string_value"] == "0"


def test_statistics_count_the_images_served(client):
    def images_served() -> int:
        stats = client.get_inference_statistics(MODEL_NAME, headers=AUTH, as_json=True)["model_stats"]
        assert [s["name"] for s in stats] == [MODEL_NAME]
        return int(stats[0].get("inference_count", 0))

    before = images_served()
    client.infer(MODEL_NAME, [image_input(random_images(2, seed=5))], headers=AUTH)
    assert images_served() == before + 2
    assert client.get_inference_statistics(headers=AUTH, as_json=True)["model_stats"][0]["name"] == MODEL_NAME


# ---- inference ---------------------------------------------------------------------------------


def test_infer_returns_the_engines_embeddings(client, engine):
    images = random_images(3, seed=1)
    result = client.infer(
        MODEL_NAME, [image_input(images)], outputs=[grpcclient.InferRequestedOutput(OUTPUT_NAME)],
        request_id="req-7", model_version="1", headers=AUTH,
    )  # fmt: skip
    embeddings = result.as_numpy(OUTPUT_NAME)
    assert embeddings.dtype == np.float32 and embeddings.shape == (3, EMBED_DIM)
    np.testing.assert_allclose(embeddings, engine.encode(images), rtol=1e-4, atol=1e-5)
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("req-7", MODEL_NAME, "1")


def test_typed_uint_contents_are_accepted_too(stub, engine):
    images = random_images(1, seed=2)
    request = service_pb2.ModelInferRequest(model_name=MODEL_NAME)
    request.inputs.add(name=INPUT_NAME, datatype="UINT8", shape=list(images.shape)).contents.uint_contents.extend(
        images.ravel().tolist()
    )
    response = stub.ModelInfer(request, metadata=tuple(AUTH.items()))
    embeddings = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(1, EMBED_DIM)
    np.testing.assert_allclose(embeddings, engine.encode(images), rtol=1e-4, atol=1e-5)


def _shape(shape: list[int]) -> Callable[[service_pb2.ModelInferRequest], None]:
    def change(r: service_pb2.ModelInferRequest) -> None:
        del r.inputs[0].shape[:]
        r.inputs[0].shape.extend(shape)

    return change


def _shared_memory(r: service_pb2.ModelInferRequest) -> None:
    r.inputs[0].parameters["shared_memory_region"].string_param = "region0"
    r.ClearField("raw_input_contents")


BAD_REQUESTS = [
    ("unknown model", lambda r: setattr(r, "model_name", "resnet50"), "NOT_FOUND", "unknown model 'resnet50'"),
    ("unknown version", lambda r: setattr(r, "model_version", "2"), "NOT_FOUND", "unknown version '2'"),
    ("wrong input name", lambda r: setattr(r.inputs[0], "name", "PIXELS"), "INVALID_ARGUMENT", "unknown input 'PIXELS'"),
    ("wrong datatype", lambda r: setattr(r.inputs[0], "datatype", "FP32"), "INVALID_ARGUMENT", "datatype UINT8"),
    ("wrong image shape", _shape([1, 224, 224, 4]), "INVALID_ARGUMENT", "shape [N, 224, 224, 3]"),
    ("empty batch", _shape([0, 224, 224, 3]), "INVALID_ARGUMENT", "batch size must be ≥ 1"),
    ("wrong byte count", lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 100), "INVALID_ARGUMENT", "has 100 bytes"),
    ("no data", lambda r: r.ClearField("raw_input_contents"), "INVALID_ARGUMENT", "carries no data"),
    ("two inputs", lambda r: r.inputs.add(name="MASK", datatype="UINT8", shape=[1]), "INVALID_ARGUMENT", "exactly one input"),
    ("unknown output", lambda r: r.outputs.add(name="LOGITS"), "INVALID_ARGUMENT", "unknown output 'LOGITS'"),
    ("shared memory input", _shared_memory, "UNIMPLEMENTED", "shared memory inputs are not supported"),
]


@pytest.mark.parametrize("mutate, code, needle", [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS])
def test_bad_infer_requests_get_their_status_and_a_message(stub, mutate, code, needle):
    request = raw_request(random_images(1, seed=3))
    mutate(request)
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(request, metadata=tuple(AUTH.items()), timeout=30)
    assert e.value.code().name == code and needle in e.value.details()


def test_batch_limits_through_tritonclient(client):
    with pytest.raises(InferenceServerException) as e:
        client.infer(MODEL_NAME, [image_input(random_images(MAX_BATCH + 1))], headers=AUTH)
    assert (
        e.value.status() == "StatusCode.INVALID_ARGUMENT"
        and f"exceeds the model's max_batch_size {MAX_BATCH}" in e.value.message()
    )
    with pytest.raises(InferenceServerException) as e:  # past max_message_bytes: gRPC itself refuses it
        client.infer(MODEL_NAME, [image_input(random_images(9))], headers=AUTH)
    assert e.value.status() == "StatusCode.RESOURCE_EXHAUSTED" and str(MAX_MESSAGE_BYTES) in e.value.message()
    assert client.infer(MODEL_NAME, [image_input(random_images(MAX_BATCH))], headers=AUTH).as_numpy(OUTPUT_NAME).shape == (
        MAX_BATCH, EMBED_DIM,
    )  # fmt: skip


def test_missing_or_wrong_token_is_unauthenticated(client):
    calls = (
        lambda headers: client.get_server_metadata(headers=headers),
        lambda headers: client.get_model_config(MODEL_NAME, headers=headers),
        lambda headers: client.infer(MODEL_NAME, [image_input(random_images(1))], headers=headers),
    )
    for headers in (None, {"authorization": "Bearer nope"}, {"authorization": TOKEN}):
        for call in calls:
            with pytest.raises(InferenceServerException) as e:
                call(headers)
            assert e.value.status() == "StatusCode.UNAUTHENTICATED" and "token" in e.value.message()


def test_extensions_rayscale_does_not_serve_say_so(client, stub):
    for call, needle in (
        (lambda: client.get_model_repository_index(headers=AUTH), "model repository"),
        (lambda: client.load_model(MODEL_NAME, headers=AUTH), "model repository"),
        (lambda: client.get_system_shared_memory_status(headers=AUTH), "shared memory"),
        (lambda: client.get_cuda_shared_memory_status(headers=AUTH), "shared memory"),
        (lambda: client.get_trace_settings(headers=AUTH), "trace"),
        (lambda: client.get_log_settings(headers=AUTH), "logging"),
    ):
        with pytest.raises(InferenceServerException) as e:
            call()
        assert e.value.status() == "StatusCode.UNIMPLEMENTED" and needle in e.value.message()
    with pytest.raises(grpc.RpcError) as e:
        list(stub.ModelStreamInfer(iter([raw_request(random_images(1))]), metadata=tuple(AUTH.items()), timeout=30))
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED and "use ModelInfer" in e.value.details()


# ---- overload ----------------------------------------------------------------------------------


class GatedEngine(NullEngine):
    """Zero embeddings, once the test opens the gate: holds a batch in the engine so the queue fills."""

    def __init__(self) -> None:
        super().__init__(max_batch_size=MAX_BATCH)
        self.gate = threading.Event()

    def encode_parts(self, parts: list[np.ndarray]) -> tuple[list[np.ndarray], int, int]:
        self.gate.wait(timeout=60)
        return super().encode_parts(parts)


def test_full_queue_is_unavailable_at_once_and_the_server_recovers():
    engine = GatedEngine()
    with serving(lambda: Replica(engine, max_queued_requests=1)) as s:
        client = grpcclient.InferenceServerClient(s.url)
        results: list[Any] = []
        done = threading.Semaphore(0)

        def callback(result: Any, error: Any) -> None:
            results.append(error or result)
            done.release()

        inputs = [image_input(random_images(1))]

        def wait_for(state: tuple[int, int], what: str) -> None:
            deadline = time.monotonic() + 10
            while (s.replica.batcher.running_batches, s.replica.batcher.queued_requests) != state:
                assert time.monotonic() < deadline, what
                time.sleep(0.01)

        client.async_infer(MODEL_NAME, inputs, callback)  # held in the engine
        wait_for((1, 0), "the first request never reached the engine")
        client.async_infer(MODEL_NAME, inputs, callback)  # queued behind it (one batch slot)
        wait_for((1, 1), "the second request was not queued")
        started = time.perf_counter()
        with pytest.raises(InferenceServerException) as e:
            client.infer(MODEL_NAME, inputs)
        assert time.perf_counter() - started < 1.0
        assert e.value.status() == "StatusCode.UNAVAILABLE" and "max_queued_requests=1" in e.value.message()
        engine.gate.set()
        for _ in range(2):
            assert done.acquire(timeout=30)
        assert [r.as_numpy(OUTPUT_NAME).shape for r in results] == [(1, EMBED_DIM)] * 2
        assert client.infer(MODEL_NAME, inputs).as_numpy(OUTPUT_NAME).shape == (1, EMBED_DIM)
        client.close()


def test_a_port_in_use_is_refused_with_a_message():
    from rayscale.errors import ServerError

    with serving(lambda: Replica(NullEngine(max_batch_size=MAX_BATCH))) as s:

        async def second() -> None:
            await start_grpc_server(s.replica, host="127.0.0.1", port=s.port, max_message_bytes=MAX_MESSAGE_BYTES)

        with pytest.raises(ServerError, match=f"127.0.0.1:{s.port}"):
            s.run(second())


# ---- rayscale bench --grpc ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def null_served():
    with serving(lambda: Replica(NullEngine(max_batch_size=MAX_BATCH), token=TOKEN)) as s:
        yield s


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    start_local_ray(num_cpus=2, namespace="rayscale")
    yield
    ray.shutdown()


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(url="http://127.0.0.1:8001", transport="grpc"), "host:port"),
        (dict(url="127.0.0.1", transport="grpc"), "host:port"),
        (dict(url="127.0.0.1:8001", transport="quic"), "unknown transport 'quic'"),
        (dict(url="127.0.0.1:8001", transport="grpc", binary=False), "--json applies to HTTP only"),
        (dict(handle=True, transport="grpc"), "pick one"),
    ],
)
def test_bad_grpc_bench_settings_are_refused(kwargs, needle):
    from rayscale.errors import ConfigError
    from rayscale.loadgen import BenchConfig

    with pytest.raises(ConfigError, match=needle):
        BenchConfig(concurrency=[1], **kwargs)


def test_bench_over_grpc_counts_every_request(null_served, ray_cluster, model_dir, tmp_path):
    from rayscale.loadgen import BenchConfig, run_bench
    from rayscale.results import load_results

    out = tmp_path / "grpc.json"
    cfg = BenchConfig(
        url=f"grpc://{null_served.url}", transport="grpc", api_token=TOKEN, concurrency=[4], images_per_request=[2],
        warmup_s=0.5, window_s=1.0, duration_s=3.0, max_windows=3, clients=1, client_cpus=0, model_dir=str(model_dir),
        out=str(out),
    )  # fmt: skip
    result = run_bench(cfg)
    (point,) = load_results(out).points
    assert result.status == "complete" and result.config["transport"] == "grpc"
    assert point.transport == "grpc" and point.images_per_request == 2
    assert point.requests_sent > 0 and point.requests_ok > 0 and point.images_per_s > 0
    assert point.requests_ok + point.requests_failed + point.requests_incomplete == point.requests_sent
    assert point.server is not None and point.server.images == 2 * point.server.requests > 0


def test_cli_bench_grpc_flag_reaches_both_clients():
    def bench(*args: str) -> str:
        env = {k: v for k, v in os.environ.items() if k != "RAYSCALE_API_TOKEN"}
        entry = "import sys; from rayscale.cli import main; sys.argv[0] = 'rayscale'; main()"
        proc = subprocess.run(
            [sys.executable, "-c", entry, "bench", "--grpc", *args], capture_output=True, text=True, timeout=120, env=env
        )
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        return line

    assert "a gRPC URL is host:port" in bench("--url", "http://127.0.0.1:8001")
    closed = f"127.0.0.1:{free_port()}"
    for client in ("rayscale", "perf_analyzer"):
        assert f"cannot reach {closed} over gRPC" in bench("--url", closed, "--client", client, "--concurrency", "1")


# ---- perf_analyzer -i grpc ---------------------------------------------------------------------


def test_perf_analyzer_measures_rayscale_over_grpc(null_served, model_dir, tmp_path):
    from rayscale.loadgen import BenchConfig
    from rayscale.perf_analyzer import MARKER_NAME, bench_with_perf_analyzer, default_cache_dir, ensure_perf_analyzer
    from rayscale.results import load_results

    # Its marker is written last: without it perf_analyzer is absent or still being installed.
    if not os.environ.get("RAYSCALE_PERF_ANALYZER") and not (default_cache_dir() / MARKER_NAME).is_file():
        pytest.skip("perf_analyzer is not installed (rayscale.perf_analyzer.ensure_perf_analyzer installs it)")
    install = ensure_perf_analyzer()
    out = tmp_path / "pa-grpc.json"
    cfg = BenchConfig(
        url=null_served.url, transport="grpc", api_token=TOKEN, concurrency=[2], images_per_request=[2], window_s=1.2,
        stability=0.9, max_windows=4, duration_s=4.8, model_dir=str(model_dir), out=str(out),
    )  # fmt: skip
    before = null_served.replica.collector.snapshot()["model_stats"][0]["inference_count"]
    result = bench_with_perf_analyzer(cfg, install=install)
    (point,) = load_results(out).points
    assert result.config["transport"] == "grpc" and result.config["client"] == "perf_analyzer"
    # A busy machine may keep perf_analyzer from three agreeing windows; it measured all the same.
    assert point.status in ("ok", "unstable"), point.error
    assert point.images_per_s > 0 and point.requests_ok > 0
    served = null_served.replica.collector.snapshot()["model_stats"][0]["inference_count"] - before
    assert served >= 2 * point.requests_ok

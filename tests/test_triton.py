"""The Triton baseline: a real tritonserver (bundled in nvidia-pytriton) serving the same model.

The server runs on the CPU here; the same code path serves GPUs (KIND_GPU instance groups).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from rayscale.config import EMBED_DIM, IMAGE_SIZE, INPUT_NAME, MODEL_NAME, OUTPUT_NAME, ServeConfig
from rayscale.errors import ConfigError, ModelNotFoundError, ServerError
from rayscale.triton import (
    ModelBatching,
    TritonConfig,
    ensure_triton,
    triton_down,
    triton_status,
    triton_up,
    write_onnxruntime_repo,
    write_python_backend_repo,
)
from rayscale.triton.repository import DEFAULT_INSTANCES_PER_GPU
from rayscale.triton.server import _session_members

from conftest import MIN_CPU_S_PER_1000_IMAGES_ON_CPU, free_port

RAYSCALE = ServeConfig()  # the limits rayscale serves with; Triton must use the same


def parse_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def assert_same_contract(cfg: mc.ModelConfig) -> None:
    assert cfg.name == MODEL_NAME
    assert cfg.max_batch_size == RAYSCALE.max_batch_size
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [(INPUT_NAME, mc.TYPE_UINT8, [IMAGE_SIZE, IMAGE_SIZE, 3])]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [(OUTPUT_NAME, mc.TYPE_FP32, [EMBED_DIM])]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == int(RAYSCALE.batch_wait_ms * 1000)


def cli(*args: str) -> subprocess.CompletedProcess:
    code = "from rayscale.cli.triton import triton_app; triton_app(prog_name='rayscale triton')"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---- model repositories --------------------------------------------------------------------------


def test_python_backend_repo_serves_rayscale_contract_on_every_gpu(model_dir, tmp_path):
    repo = write_python_backend_repo(model_dir, tmp_path / "repo", ModelBatching(instances_per_gpu=3), gpus=4)
    cfg = parse_config(repo / MODEL_NAME / "config.pbtxt")
    assert_same_contract(cfg)
    assert cfg.backend == "python"
    assert [(g.kind, list(g.gpus), g.count) for g in cfg.instance_group] == [
        (mc.ModelInstanceGroup.KIND_GPU, [i], 3) for i in range(4)
    ]
    version = repo / MODEL_NAME / "1"
    assert "class TritonPythonModel" in (version / "model.py").read_text()
    assert (version / "model.onnx").read_bytes() == (model_dir / "model.onnx").read_bytes()


def test_python_backend_repo_on_cpu_uses_cpu_instances(model_dir, tmp_path):
    batching = ModelBatching(instances_per_gpu=2, preferred_batch_sizes=(64, 16))
    repo = write_python_backend_repo(model_dir, tmp_path / "repo", batching, gpus=1, provider="cpu")
    cfg = parse_config(repo / MODEL_NAME / "config.pbtxt")
    assert_same_contract(cfg)
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2)]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [16, 64]


def test_onnxruntime_repos_one_per_gpu_count(model_dir, tmp_path):
    repos = write_onnxruntime_repo(model_dir, tmp_path / "out", gpus_list=[8, 1, 2, 4], accelerator="tensorrt", cuda_graphs=True)
    assert sorted(repos) == [1, 2, 4, 8]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["repositories"] == {str(g): f"gpus-{g}" for g in (1, 2, 4, 8)}
    onnx_bytes = (model_dir / "model.onnx").read_bytes()
    for gpus, repo in repos.items():
        cfg = parse_config(repo / MODEL_NAME / "config.pbtxt")
        assert_same_contract(cfg)
        assert cfg.backend == "onnxruntime"
        assert [list(g.gpus) for g in cfg.instance_group] == [[i] for i in range(gpus)]
        assert all(g.kind == mc.ModelInstanceGroup.KIND_GPU and g.count == DEFAULT_INSTANCES_PER_GPU for g in cfg.instance_group)
        (trt,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
        assert trt.name == "tensorrt"
        assert trt.parameters["precision_mode"] == "FP16"
        assert trt.parameters["trt_profile_max_shapes"] == f"IMAGE:{RAYSCALE.max_batch_size}x224x224x3"
        assert trt.parameters["trt_cuda_graph_enable"] == "1"
        assert sorted(w.batch_size for w in cfg.model_warmup) == [1, RAYSCALE.max_batch_size]
        assert (repo / MODEL_NAME / "1" / "model.onnx").read_bytes() == onnx_bytes


def test_onnxruntime_repo_plain_cuda_provider_has_no_accelerator(model_dir, tmp_path):
    repos = write_onnxruntime_repo(
        model_dir, tmp_path, ModelBatching(preferred_batch_sizes=(128, 256)), gpus_list=[2], warmup=False
    )
    cfg = parse_config(repos[2] / MODEL_NAME / "config.pbtxt")
    assert not cfg.optimization.HasField("execution_accelerators")
    assert list(cfg.dynamic_batching.preferred_batch_size) == [128, 256]
    assert len(cfg.model_warmup) == 0


def test_cuda_graphs_need_tensorrt(model_dir, tmp_path):
    with pytest.raises(ConfigError, match="--accelerator tensorrt"):
        write_onnxruntime_repo(model_dir, tmp_path, gpus_list=[1], cuda_graphs=True)


def test_repo_cli_writes_what_the_k8s_init_container_serves(model_dir, tmp_path):
    out = tmp_path / "model_repository"
    done = cli("repo", "--gpus", "1,2", "--out", str(out), "--model", str(model_dir), "--batch-wait-ms", "0.5")
    assert done.returncode == 0, done.stderr
    for gpus in (1, 2):
        cfg = parse_config(out / f"gpus-{gpus}" / MODEL_NAME / "config.pbtxt")
        assert len(cfg.instance_group) == gpus
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert json.loads((out / "manifest.json").read_text())["settings"]["batch_wait_ms"] == 0.5


def test_the_old_queue_delay_flag_still_sets_the_batch_wait(model_dir, tmp_path):
    done = cli("repo", "--gpus", "1", "--out", str(tmp_path), "--model", str(model_dir), "--max-queue-delay-us", "750")
    assert done.returncode == 0, done.stderr
    assert parse_config(tmp_path / "gpus-1" / MODEL_NAME / "config.pbtxt").dynamic_batching.max_queue_delay_microseconds == 750
    both = cli(
        "repo",
        "--gpus",
        "1",
        "--out",
        str(tmp_path),
        "--model",
        str(model_dir),
        "--max-queue-delay-us",
        "750",
        "--batch-wait-ms",
        "5",
    )
    assert both.returncode != 0 and "not both" in both.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["repo", "--gpus", "0,1"], "gpus values must be ≥ 1, got 0"),
        (["repo", "--gpus", "1", "--model", "/nonexistent/model"], "rayscale export"),
        (["repo", "--gpus", "1", "--accelerator", "tvm"], "accelerator must be one of none, tensorrt"),
        (["up", "--gpus", "0"], "gpus must be ≥ 1, got 0"),
        (["up", "--model", "/nonexistent/model", "--provider", "cpu"], "rayscale export"),
        (["up", "--instances-per-gpu", "0"], "instances_per_gpu must be in 1..16, got 0"),
        # the same batch bound as `rayscale up` and the engine
        (["up", "--max-batch-size", "4097"], "max_batch_size must be in 1..4096 images, got 4097"),
        (["repo", "--gpus", "1", "--max-batch-size", "0"], "max_batch_size must be in 1..4096 images, got 0"),
    ],
)
def test_cli_bad_input_is_one_line_error(args, message, model_dir):
    if "--model" not in args:
        args = [*args, "--model", str(model_dir)]
    done = cli(*args)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr


# ---- a running server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton(model_dir, tmp_path_factory):
    """A real tritonserver on the CPU serving the model fixture's export; stopped after the module."""
    install = ensure_triton()
    state_dir = tmp_path_factory.mktemp("triton-state")
    config = TritonConfig(
        gpus=1, instances_per_gpu=1, provider="cpu", http_port=free_port(), grpc_port=free_port(),
        metrics_port=free_port(), model_dir=str(model_dir), ready_timeout_s=180,
        batch_wait_ms=50,  # requests sent together batch even when a loaded machine starts their threads ms apart
    )  # fmt: skip
    server = triton_up(config, state_dir=state_dir, install=install)
    yield server
    triton_down(state_dir=state_dir)
    assert _session_members(server.pid) == []


@pytest.fixture(scope="module")
def engine(model_dir):
    from rayscale.engine import Engine

    return Engine(model_dir, provider="cpu", warmup=False)


def infer(server, images: np.ndarray) -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_address, network_timeout=120)
    inp = httpclient.InferInput(INPUT_NAME, list(images.shape), "UINT8")
    inp.set_data_from_numpy(images, binary_data=True)
    out = httpclient.InferRequestedOutput(OUTPUT_NAME, binary_data=True)
    result = client.infer(MODEL_NAME, [inp], outputs=[out])
    return result.as_numpy(OUTPUT_NAME)


def stats(server) -> dict:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_address)
    (model,) = client.get_inference_statistics(MODEL_NAME)["model_stats"]
    return model


def test_triton_embeddings_equal_rayscale_engine(triton, engine):
    from rayscale.export import parity_batch

    images = parity_batch(3, seed=7)
    got = infer(triton, images)
    want = engine.encode(images)
    assert got.shape == (3, EMBED_DIM) and got.dtype == np.float32
    assert cosine_rows(got, want).min() >= 0.9999
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_concurrent_requests_are_batched_and_each_gets_its_own_embeddings(triton, engine):
    sizes = [1, 3, 2, 1, 2, 1]
    batches = [np.random.default_rng(100 + i).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8) for i, n in enumerate(sizes)]
    before = stats(triton)
    results: dict[int, np.ndarray] = {}

    def send(i):
        results[i] = infer(triton, batches[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(sizes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = stats(triton)
    want = engine.encode(np.concatenate(batches))
    got = np.concatenate([results[i] for i in range(len(sizes))])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # Triton's statistics: requests and images counted exactly, fewer executions than requests (batched).
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == len(sizes)
    assert after["inference_count"] - before["inference_count"] == sum(sizes)
    assert after["execution_count"] - before["execution_count"] < len(sizes)
    assert after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"]


def test_stats_and_metrics_endpoints_are_reachable(triton):
    import urllib.request

    with urllib.request.urlopen(f"{triton.url}/v2/models/{MODEL_NAME}/stats", timeout=10) as r:
        body = json.loads(r.read())
    assert body["model_stats"][0]["name"] == MODEL_NAME
    with urllib.request.urlopen(triton.metrics_url, timeout=10) as r:
        assert b"nv_inference_request_success" in r.read()


def test_bench_reads_the_cpu_time_of_tritons_process_tree(triton):
    """Inference runs in the Python backend's stub, a child of tritonserver: the tree's CPU time counts it."""
    from rayscale.loadgen import BenchConfig
    from rayscale.loadgen.target import ServerProbe, host_cpu_over
    from rayscale.metrics.cpu import CLOCK_TICKS_PER_S, process_cpu

    for url, transport in ((triton.url, "http"), (f"127.0.0.1:{triton.grpc_port}", "grpc")):
        probe = ServerProbe(BenchConfig(url=url, transport=transport, concurrency=[1]), rayscale_app=False)
        assert probe.triton_pid == triton.pid
    other = ServerProbe(BenchConfig(url=f"http://127.0.0.1:{free_port()}", concurrency=[1]), rayscale_app=False)
    assert other.triton_pid is None and other.read().triton_cpu_s is None

    before, server_ticks = probe.read(), process_cpu(triton.pid).own_ticks
    images = np.random.default_rng(0).integers(0, 256, size=(8, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    infer(triton, images)
    after = probe.read()
    cpu = host_cpu_over(before, after, measured_s=1.0, images=len(images), client_cpu_s=None)
    assert cpu.server_parts == ["triton"] and before.stats is not None
    assert cpu.server_cpu_s_per_1000_images > MIN_CPU_S_PER_1000_IMAGES_ON_CPU
    server_s = (process_cpu(triton.pid).own_ticks - server_ticks) / CLOCK_TICKS_PER_S
    assert cpu.triton_cpu_s > server_s + len(images) * MIN_CPU_S_PER_1000_IMAGES_ON_CPU / 1000  # the stub's share


def test_status_and_state_record_what_runs(triton):
    st = triton_status(state_dir=triton.state_dir)
    assert st.running and st.ready
    state = json.loads((Path(triton.state_dir) / "triton-state.json").read_text())
    assert state["pid"] == triton.pid and state["http_port"] == triton.http_port
    assert state["description"] == "python backend + onnxruntime in the stub, 1 instance on the CPU"
    assert state["triton_version"].startswith("2.")
    assert state["config"]["max_batch_size"] == RAYSCALE.max_batch_size


def test_second_up_on_same_state_dir_is_refused(triton, model_dir):
    config = TritonConfig(provider="cpu", http_port=free_port(), model_dir=str(model_dir))
    with pytest.raises(ServerError, match="already running.*rayscale triton down"):
        triton_up(config, state_dir=triton.state_dir)


def test_busy_port_is_refused_before_starting(model_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        config = TritonConfig(
            provider="cpu", http_port=busy, grpc_port=free_port(), metrics_port=free_port(), model_dir=str(model_dir)
        )
        with pytest.raises(ServerError, match=f"http port {busy} .* pass another --port"):
            triton_up(config, state_dir=tmp_path)
    assert not (tmp_path / "triton-state.json").exists()


def test_missing_model_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="rayscale export"):
        triton_up(TritonConfig(provider="cpu", model_dir=str(tmp_path / "none")), state_dir=tmp_path)


def test_cli_up_status_down_leaves_no_process(model_dir, tmp_path):
    ensure_triton()
    port = free_port()
    state = str(tmp_path / "state")
    up = cli(
        "up", "--provider", "cpu", "--port", str(port), "--model", str(model_dir), "--state-dir", state,
        "--instances-per-gpu", "1", "--max-batch-size", "8",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert f"ready at http://127.0.0.1:{port}" in up.stdout
    pid = json.loads((Path(state) / "triton-state.json").read_text())["pid"]
    try:
        assert cli("status", "--state-dir", state).returncode == 0
        assert _session_members(pid), "the server and its backend stub run in their own session"
    finally:
        down = cli("down", "--state-dir", state)
    assert down.returncode == 0 and f"stopped Triton (pid {pid}" in down.stdout
    assert _session_members(pid) == []
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # closed connections may linger in TIME_WAIT
        s.bind(("127.0.0.1", port))  # nothing listens on the port any more
    after = cli("status", "--state-dir", state)
    assert after.returncode == 1 and "no Triton server recorded" in after.stdout


# ---- GPU (runs where an NVIDIA GPU is visible) ---------------------------------------------------


def _gpu_count() -> int:
    from rayscale.environment import gpu_inventory

    return len(gpu_inventory().get("gpus", []))


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_count() == 0, reason="needs an NVIDIA GPU")
def test_gpu_instances_run_onnxruntime_cuda_in_the_stub(model_dir, tmp_path):
    from rayscale.engine import Engine

    config = TritonConfig(
        gpus=1, instances_per_gpu=2, provider="cuda", http_port=free_port(), grpc_port=free_port(),
        metrics_port=free_port(), model_dir=str(model_dir), ready_timeout_s=300,
    )  # fmt: skip
    server = triton_up(config, state_dir=tmp_path)
    try:
        cfg = parse_config(Path(server.repo_dir) / MODEL_NAME / "config.pbtxt")
        assert [(g.kind, list(g.gpus), g.count) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, [0], 2)]
        assert server.description == "python backend + onnxruntime in the stub, 2 instances per GPU on 1 GPU"
        images = np.random.default_rng(5).integers(0, 256, (37, 224, 224, 3), dtype=np.uint8)
        got = infer(server, images)
        want = Engine(model_dir, provider="cuda").encode(images)
        assert cosine_rows(got, want).min() >= 0.9999
    finally:
        triton_down(state_dir=tmp_path)
    assert _session_members(server.pid) == []


def test_forced_interpreter_is_used_as_is_or_refused_with_the_fix(monkeypatch):
    managed = ensure_triton()
    monkeypatch.setenv("RAYSCALE_TRITON_PYTHON", managed.python)
    forced = ensure_triton()
    assert forced.mode == "interpreter" and forced.tritonserver_bin == managed.tritonserver_bin
    assert forced.onnxruntime_version == managed.onnxruntime_version
    monkeypatch.setenv("RAYSCALE_TRITON_PYTHON", sys.executable)  # this interpreter has no nvidia-pytriton
    with pytest.raises(ServerError, match="pip install nvidia-pytriton==0.7.0|shared libpython"):
        ensure_triton()

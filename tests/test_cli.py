"""The `rayscale` command as users run it: bad input is one `error:` line, exit code 1, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rayscale.results import EngineBenchResult, load_results

from conftest import free_port

# The console script's entry point, in a fresh interpreter (what `rayscale ...` runs).
ENTRY = "import sys; from rayscale.cli import main; sys.argv[0] = 'rayscale'; main()"


def rayscale(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAYSCALE_API_TOKEN"}
    return subprocess.run([sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, timeout=timeout_s, env=env)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The single `error:` line of a failed command, after checking it failed cleanly."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_export_unknown_precision(tmp_path):
    line = error_line(rayscale("export", "--precision", "fp8", "--out", str(tmp_path / "m")))
    assert "precision must be fp16 or fp32, got 'fp8'" in line
    assert not (tmp_path / "m").exists()  # refused before anything was written


def test_engine_bench_without_a_model():
    line = error_line(rayscale("engine-bench", "--model", "/nonexistent"))
    assert "model not found at /nonexistent" in line and "rayscale export" in line


def test_engine_bench_with_a_corrupt_model(model_dir, tmp_path):
    (tmp_path / "model.json").write_bytes((model_dir / "model.json").read_bytes())
    (tmp_path / "model.onnx").write_bytes(b"half a download")
    line = error_line(rayscale("engine-bench", "--model", str(tmp_path), "--batch-sizes", "1"))
    assert f"cannot load {tmp_path / 'model.onnx'}" in line and "rayscale export" in line


def test_engine_bench_empty_batch_sizes(tmp_path):
    line = error_line(rayscale("engine-bench", "--batch-sizes", "", "--model", str(tmp_path)))
    assert "batch sizes is empty" in line


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--rate", "0"], "--rate values must be > 0, got 0"),
        (["--rate", "100,fast"], "--rate must be a comma-separated list of numbers"),
        (["--rate", "500,inf"], "--rate values must be finite, got inf"),
        (["--concurrency", ""], "--concurrency is empty"),
        (["--concurrency", "0"], "--concurrency values must be ≥ 1, got 0"),
        (["--images-per-request", "1,x"], "--images-per-request must be a comma-separated list of integers"),
    ],
)
def test_bench_bad_load_settings(args, expected, tmp_path):
    line = error_line(rayscale("bench", *args, "--out", str(tmp_path / "r.json")))
    assert expected in line
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("port", [1, None], ids=["port-1", "free-port"])
def test_bench_unreachable_server_fails_before_any_load(port, tmp_path):
    url = f"http://127.0.0.1:{port or free_port()}"  # nothing listens there
    out = tmp_path / "r.json"
    line = error_line(rayscale("bench", "--url", url, "--concurrency", "1", "--out", str(out), timeout_s=60))
    assert f"cannot reach {url}" in line and "rayscale up" in line
    assert not out.exists()


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3"])
def test_up_on_a_public_address_needs_a_token(host):
    line = error_line(rayscale("up", "--host", host))
    assert f"--host {host} exposes the server" in line and "--api-token" in line


def test_engine_bench_writes_a_results_file_and_keeps_it(model_dir, tmp_path):
    out = tmp_path / "engine.json"
    args = ("engine-bench", "--model", str(model_dir), "--batch-sizes", "1,2", "--min-time", "0.2", "--out", str(out))

    proc = rayscale(*args)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout

    result = load_results(out)
    assert isinstance(result, EngineBenchResult)
    assert [p.batch_size for p in result.points] == [1, 2]
    for p in result.points:
        assert p.backend == "onnxruntime" and p.provider == "cpu" and p.input_location == "host"
        assert p.iterations >= 5 and p.images_per_s > 0
        assert 0 < p.latency_p50_ms <= p.latency_p99_ms
        # images/s and mean latency describe the same loop
        assert p.images_per_s == pytest.approx(p.batch_size * 1000 / p.latency_mean_ms, rel=1e-6)
    info = json.loads((model_dir / "model.json").read_text())
    assert result.model["sha256"] == info["sha256"]  # the numbers name the model that made them
    assert "engine-bench" in result.command and "--batch-sizes 1,2" in result.command
    assert any("CPU" in w for w in result.warnings)

    before = out.read_bytes()
    line = error_line(rayscale(*args))
    assert f"{out} exists" in line and "--overwrite" in line
    assert out.read_bytes() == before

    again = rayscale(*args, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert isinstance(load_results(out), EngineBenchResult)

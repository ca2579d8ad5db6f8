"""``rayscale triton ...``: the Triton Inference Server baseline. Each command calls one library function."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from rayscale.cli.common import fail
from rayscale.config import BATCH_WAIT_MS, DEFAULT_MODEL_DIR, LOCAL_HOST, is_loopback, parse_int_list
from rayscale.errors import ConfigError, RayscaleError
from rayscale.triton.repository import DEFAULT_INSTANCES_PER_GPU

__all__ = ["triton_app"]

triton_app = typer.Typer(
    help="Triton Inference Server baseline: install it, write model repositories, start and stop a local server.",
    no_args_is_help=True,
)


def _sizes(text: str, what: str) -> list[int]:
    return parse_int_list(text, what) if text.strip() else []


def _batch_wait_ms(batch_wait_ms: float, max_queue_delay_us: int | None) -> float:
    """--batch-wait-ms, or the same wait given under its old name --max-queue-delay-us (µs)."""
    if max_queue_delay_us is None:
        return batch_wait_ms
    if batch_wait_ms != BATCH_WAIT_MS:
        raise ConfigError("give --batch-wait-ms (ms) or its old name --max-queue-delay-us (µs), not both")
    return max_queue_delay_us / 1000.0


@triton_app.command()
def setup(
    gpu_libs: bool = typer.Option(False, "--gpu-libs", help="Also install onnxruntime's CUDA and cuDNN wheels."),
) -> None:
    """Create (or check) the Triton environment: a venv with nvidia-pytriton's bundled tritonserver."""
    from rayscale.triton.install import ensure_triton

    try:
        install = ensure_triton(gpu_libs=gpu_libs)
    except RayscaleError as e:
        raise fail(e) from None
    typer.echo(f"tritonserver: {install.tritonserver_bin}")
    typer.echo(f"python:       {install.python} ({install.mode})")
    typer.echo("versions:     " + ", ".join(f"{k} {v}" for k, v in sorted(install.versions.items())))


@triton_app.command()
def up(
    gpus: int = typer.Option(1, help="GPUs to serve on (devices 0..N-1); one instance group per GPU."),
    instances_per_gpu: int = typer.Option(
        DEFAULT_INSTANCES_PER_GPU, help="Model instances (onnxruntime sessions) per GPU, or in all on the CPU."
    ),
    max_batch_size: int = typer.Option(256, help="Largest batch in images, as rayscale's max_batch_size."),
    batch_wait_ms: float = typer.Option(
        BATCH_WAIT_MS, help="How long a batch may wait to fill (ms), as rayscale's; Triton's max_queue_delay_microseconds."
    ),
    max_queue_delay_us: int | None = typer.Option(None, hidden=True, help="Old name of --batch-wait-ms, in µs."),
    preferred_batch_sizes: str = typer.Option(
        "", help="Comma-separated preferred batch sizes (default: none, and Triton then prefers the max batch size)."
    ),
    port: int = typer.Option(8100, help="HTTP port; gRPC uses port+1, metrics port+2."),
    host: str = typer.Option(LOCAL_HOST, help="Address to bind; 0.0.0.0 exposes the server to the network."),
    model: Path = typer.Option(DEFAULT_MODEL_DIR, help="Exported model directory (model.onnx + model.json)."),
    provider: str = typer.Option("auto", help="auto | cuda | cpu"),
    state_dir: Path | None = typer.Option(None, help="Where the state file, log and repository go."),
    ready_timeout_s: float = typer.Option(600.0, help="How long to wait for the model to be ready."),
    engine_options: str = typer.Option(
        "", help="onnxruntime settings as rayscale's --engine-options (like for like), e.g. cuda_graph=1."
    ),
) -> None:
    """Start tritonserver with the Python-backend model and wait until it is ready."""
    from rayscale.engine_options import EngineOptions
    from rayscale.triton.server import TritonConfig, triton_up

    try:
        config = TritonConfig(
            gpus=gpus,
            instances_per_gpu=instances_per_gpu,
            max_batch_size=max_batch_size,
            batch_wait_ms=_batch_wait_ms(batch_wait_ms, max_queue_delay_us),
            preferred_batch_sizes=_sizes(preferred_batch_sizes, "preferred batch sizes"),
            http_port=port,
            host=host,
            model_dir=str(model),
            provider=provider,
            ready_timeout_s=ready_timeout_s,
            engine=EngineOptions.parse(engine_options),
        )
        if not is_loopback(host):
            typer.echo(f"warning: Triton binds {host}: anyone who can reach it can send requests", err=True)
        server = triton_up(config, state_dir=state_dir)
    except RayscaleError as e:
        raise fail(e) from None
    typer.echo(f"Triton {server.triton_version} ready at {server.url} (pid {server.pid}, {server.startup_s:.1f} s)")
    typer.echo(f"{server.description}; metrics at {server.metrics_url}; log {server.log_path}")


@triton_app.command()
def down(state_dir: Path | None = typer.Option(None, help="State dir given to `up`.")) -> None:
    """Stop the server started by `up` and every backend process it started."""
    from rayscale.triton.server import triton_down

    try:
        server = triton_down(state_dir=state_dir)
    except RayscaleError as e:
        raise fail(e) from None
    typer.echo("no Triton server recorded" if server is None else f"stopped Triton (pid {server.pid}, {server.url})")


@triton_app.command()
def status(
    state_dir: Path | None = typer.Option(None, help="State dir given to `up`."),
    as_json: bool = typer.Option(False, "--json", help="Print the full state as JSON."),
) -> None:
    """Whether the server runs and its model is ready; exit status 1 when it is not."""
    from rayscale.triton.server import triton_status

    try:
        st = triton_status(state_dir=state_dir)
    except RayscaleError as e:
        raise fail(e) from None
    typer.echo(json.dumps(st.to_dict(), indent=2) if as_json else st.message)
    if not st.ready:
        raise typer.Exit(1)


@triton_app.command()
def repo(
    gpus: str = typer.Option("1,2,4,8", help="GPU counts; one repository per count (<out>/gpus-<N>)."),
    out: Path = typer.Option(Path("model_repository"), help="Output directory."),
    model: Path = typer.Option(DEFAULT_MODEL_DIR, help="Exported model directory (model.onnx + model.json)."),
    max_batch_size: int = typer.Option(256, help="Largest batch in images, as rayscale's max_batch_size."),
    batch_wait_ms: float = typer.Option(
        BATCH_WAIT_MS, help="How long a batch may wait to fill (ms), as rayscale's; Triton's max_queue_delay_microseconds."
    ),
    max_queue_delay_us: int | None = typer.Option(None, hidden=True, help="Old name of --batch-wait-ms, in µs."),
    instances_per_gpu: int = typer.Option(DEFAULT_INSTANCES_PER_GPU, help="Model instances per GPU."),
    preferred_batch_sizes: str = typer.Option(
        "", help="Comma-separated preferred batch sizes (default: none, and Triton then prefers the max batch size)."
    ),
    accelerator: str = typer.Option("none", help="none | tensorrt (onnxruntime's TensorRT execution provider)."),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", help="CUDA graphs (needs --accelerator tensorrt)."),
    trt_precision: str = typer.Option("fp16", help="TensorRT precision: fp16 | fp32."),
    warmup: bool = typer.Option(True, help="Add model_warmup entries (batch 1, preferred sizes, max)."),
) -> None:
    """Write onnxruntime-backend model repositories for the official Triton container."""
    from rayscale.triton.repository import ModelBatching, write_onnxruntime_repo

    try:
        batching = ModelBatching(
            instances_per_gpu=instances_per_gpu,
            max_batch_size=max_batch_size,
            batch_wait_ms=_batch_wait_ms(batch_wait_ms, max_queue_delay_us),
            preferred_batch_sizes=tuple(_sizes(preferred_batch_sizes, "preferred batch sizes")),
        )
        repos = write_onnxruntime_repo(
            model,
            out,
            batching,
            gpus_list=parse_int_list(gpus, "gpus"),
            accelerator=accelerator,
            cuda_graphs=cuda_graphs,
            trt_precision=trt_precision,
            warmup=warmup,
        )
    except RayscaleError as e:
        raise fail(e) from None
    for count, path in repos.items():
        typer.echo(f"{count} GPU{'s' if count > 1 else ''}: tritonserver --model-repository {path}")

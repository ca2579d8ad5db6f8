"""The `rayscale` command: one small function per command, each calling one library function.

Every user-facing error is a ``RayscaleError``: printed as one line, exit code 1, no traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

from rayscale.config import DEFAULT_MODEL_DIR, LOCAL_HOST, MODEL_NAME, PROCESSES_PER_GPU, ServeConfig, parse_float_list, parse_int_list
from rayscale.errors import RayscaleError

__all__ = ["app", "main"]

app = typer.Typer(
    name="rayscale",
    help="How well does my vision inference service scale, and what does each image cost? "
    "Serve OpenCLIP ViT-B/32 with Ray Serve, load it, compare with Triton, report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _fail(e: BaseException) -> typer.Exit:
    typer.echo(f"error: {e}", err=True)
    return typer.Exit(1)


def _command_line() -> str:
    return " ".join(["rayscale", *sys.argv[1:]])


@app.command()
def export(
    out: Path = typer.Option(DEFAULT_MODEL_DIR, help="Directory for model.onnx and model.json."),
    precision: str = typer.Option("fp16", help="fp16 (GPU serving) or fp32."),
    pretrained: Optional[str] = typer.Option(None, help="open_clip checkpoint file, or a pretrained tag where a hub is reachable. Without it: random weights."),
    opset: int = typer.Option(17, help="ONNX opset."),
    optimize: bool = typer.Option(True, help="Fuse attention/LayerNorm/GELU with onnxruntime's transformer optimizer."),
) -> None:
    """Export the OpenCLIP ViT-B/32 image encoder to ONNX (uint8 NHWC in, FP32 [N,512] out) and check parity."""
    from rayscale.export import ExportConfig, export_model

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = ExportConfig(out_dir=str(out), precision=precision, pretrained=pretrained, opset=opset, optimize=optimize)
            if pretrained is None:
                typer.secho("warning: no --pretrained given: exporting RANDOM weights (speed is real, embeddings are not)", fg="yellow", err=True)
            info = export_model(cfg)
    except RayscaleError as e:
        raise _fail(e) from None
    p = info.parity
    typer.echo(f"wrote {out}/model.onnx ({info.size_bytes / 1e6:.0f} MB, {info.precision}, opset {info.opset}, weights: {info.weights})")
    typer.echo(f"parity vs open_clip on {p['provider']}: min cosine {p['min_cosine']:.6f} (threshold {p['threshold']})")
    typer.echo("fused operators: " + (", ".join(f"{k}={v}" for k, v in sorted(info.fused_operators.items())) or "none"))
    typer.echo(f"sha256 {info.sha256}")


@app.command("engine-bench")
def engine_bench(
    batch_sizes: str = typer.Option("1,8,32,128,256", help="Comma-separated batch sizes."),
    model: Path = typer.Option(DEFAULT_MODEL_DIR, help="Exported model directory."),
    provider: str = typer.Option("auto", help="auto | cuda | cpu"),
    min_time_s: float = typer.Option(2.0, "--min-time", help="Seconds timed per batch size and mode."),
    torch_eager: str = typer.Option("auto", help="Also time torch eager fp16 (auto: on a GPU)."),
    out: Optional[Path] = typer.Option(None, help="Results JSON (written atomically)."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out file."),
) -> None:
    """Measure the engine alone (images/s and latency per batch size): the ceiling for served numbers."""
    from rayscale.engine_bench import EngineBenchConfig, run_engine_bench

    try:
        cfg = EngineBenchConfig(model_dir=str(model), batch_sizes=batch_sizes, provider=provider, min_time_s=min_time_s,
                                torch_eager=torch_eager, out=str(out) if out else None, overwrite=overwrite, command=_command_line())
        result = run_engine_bench(cfg)
    except RayscaleError as e:
        raise _fail(e) from None
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"engine: {result.model.get('precision')} {', '.join(g['name'] for g in result.environment['gpus']) or 'CPU'}")
    for col in ("backend", "input", "batch", "img/s", "p50 ms", "p99 ms"):
        table.add_column(col)
    for p in result.points:
        table.add_row(p.backend, p.input_location, str(p.batch_size), f"{p.images_per_s:,.0f}", f"{p.latency_p50_ms:.2f}", f"{p.latency_p99_ms:.2f}")
    Console().print(table)
    for w in result.warnings:
        typer.secho(f"warning: {w}", fg="yellow", err=True)
    if out:
        typer.echo(f"wrote {out}")


@app.command()
def up(
    replicas: int = typer.Option(1, help="Replicas, one GPU each by default."),
    model: Path = typer.Option(DEFAULT_MODEL_DIR, help="Exported model directory (exported first if missing and the export extra is installed)."),
    host: str = typer.Option(LOCAL_HOST, help="HTTP bind address; anything but loopback exposes the server."),
    port: int = typer.Option(8000, help="HTTP port."),
    max_batch_size: int = typer.Option(256, help="Largest batch, in images."),
    batch_wait_ms: float = typer.Option(2.0, help="How long a batch may wait to fill once a GPU slot is free."),
    batches_in_flight: int = typer.Option(4, help="Batches a replica runs at once (copy/compute overlap)."),
    max_ongoing_requests: int = typer.Option(512, help="Requests a replica accepts at once."),
    max_queued_requests: int = typer.Option(256, help="Queued requests per replica before quick 503s."),
    gpus_per_replica: Optional[float] = typer.Option(None, help="GPUs per replica (default: 1 when the cluster has GPUs, else 0)."),
    cpus_per_replica: float = typer.Option(1.0, help="CPUs per replica."),
    provider: str = typer.Option("auto", help="onnxruntime provider: auto | cuda | cpu, or null (zeros at once: measures the serving path alone)"),
    address: Optional[str] = typer.Option(None, help="Join this Ray cluster instead of starting a local one."),
    api_token: Optional[str] = typer.Option(None, envvar="RAYSCALE_API_TOKEN", help="Bearer token required on every request (needed with a public --host)."),
    ingress: str = typer.Option("direct", help="direct: rayscale's load balancer straight to each replica process (default) | proxy: Serve's Python proxy | haproxy: Ray Serve's HAProxy mode (binds every interface; see README)."),
    processes_per_replica: int = typer.Option(0, help=f"Replica processes sharing each replica's GPU (0: auto, {PROCESSES_PER_GPU} per GPU on GPUs, 1 on the CPU)."),
    grpc_port: int = typer.Option(8001, help="gRPC port of the default ingress (0: no gRPC)."),
    exporter: bool = typer.Option(True, help="Start the Prometheus exporter on each node (port 9400)."),
    exporter_port: int = typer.Option(9400, help="Exporter port."),
    num_gpus: Optional[int] = typer.Option(None, help="GPUs a locally started cluster advertises (default: detected)."),
) -> None:
    """Start a Ray Serve app whose replicas each hold one GPU, speaking the Open Inference Protocol."""
    from rayscale.serve.cluster import up as serve_up

    if host not in (LOCAL_HOST, "localhost", "::1") and not api_token:
        raise _fail(RayscaleError(f"--host {host} exposes the server: also pass --api-token (or set RAYSCALE_API_TOKEN)"))
    try:
        gpr = gpus_per_replica if gpus_per_replica is not None else _default_gpus_per_replica(address, num_gpus)
        cfg = ServeConfig(model_dir=str(model), replicas=replicas, host=host, port=port, max_batch_size=max_batch_size,
                          batch_wait_ms=batch_wait_ms, batches_in_flight=batches_in_flight,
                          max_ongoing_requests=max_ongoing_requests, max_queued_requests=max_queued_requests,
                          gpus_per_replica=gpr, cpus_per_replica=cpus_per_replica, provider=provider, api_token=api_token,
                          ingress=ingress, processes_per_replica=processes_per_replica, grpc_port=grpc_port)
        result = serve_up(cfg, address=address, exporter=exporter, exporter_port=exporter_port, num_gpus=num_gpus)
    except RayscaleError as e:
        raise _fail(e) from None
    for w in result.warnings:
        typer.secho(f"warning: {w}", fg="yellow", err=True)
    typer.echo(f"rayscale is up: {result.replicas} replica(s) × {result.gpus_per_replica:g} GPU, "
               f"{result.processes_per_replica} process(es) each, ingress {result.ingress}, "
               f"model {result.precision} sha256 {result.model_sha256[:12]}")
    for r in result.replica_info:
        typer.echo(f"  replica {r['replica']}: GPU {','.join(r['gpu_ids']) or '-'} provider {r['provider']} pid {r['pid']}")
    for name, url in result.endpoints().items():
        typer.echo(f"  {name:8s} {url}")
    if result.grpc_target:
        typer.echo(f"  {'grpc':8s} {result.grpc_target} (inference.GRPCInferenceService)")
    typer.echo("next: rayscale bench --concurrency 1,16,64 --images-per-request 32    stop: rayscale down")


def _default_gpus_per_replica(address: Optional[str], num_gpus: Optional[int]) -> float:
    if num_gpus is not None:
        return 1.0 if num_gpus > 0 else 0.0
    from rayscale.environment import gpu_inventory

    if address is None and not gpu_inventory()["gpus"]:
        typer.secho("warning: no NVIDIA GPU found: replicas run on the CPU (--gpus-per-replica 0)", fg="yellow", err=True)
        return 0.0
    return 1.0


@app.command()
def down(
    address: Optional[str] = typer.Option(None, help="Ray cluster the app runs in (default: the one `up` started)."),
    keep_cluster: bool = typer.Option(False, help="Remove the app but leave the Ray cluster running."),
) -> None:
    """Remove the app (draining in-flight requests) and stop the Ray cluster `up` started."""
    from rayscale.serve.cluster import down as serve_down

    try:
        result = serve_down(address=address, stop_cluster=not keep_cluster)
    except RayscaleError as e:
        raise _fail(e) from None
    typer.echo(("app removed" if result["app_deleted"] else "no app running") + ("; Ray cluster stopped" if result["cluster_stopped"] else ""))


@app.command()
def status(
    address: Optional[str] = typer.Option(None, help="Ray cluster address."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show replicas, their state and GPU, and the model served."""
    import json

    from rayscale.serve.cluster import status as serve_status

    try:
        st = serve_status(address=address)
    except RayscaleError as e:
        raise _fail(e) from None
    if json_output:
        typer.echo(json.dumps(st.to_dict(), indent=2))
        return
    if st.app_status == "NOT_STARTED":
        typer.echo(f"not running: {st.message}")
        raise typer.Exit(3)
    typer.echo(f"app {st.app_name}: {st.app_status} {st.message}".rstrip())
    typer.echo("replica states: " + ", ".join(f"{k}={v}" for k, v in sorted(st.replica_states.items())))
    for r in st.replicas:
        typer.echo(f"  replica {r['replica']}: node {r['hostname']} GPU {','.join(r['gpu_ids']) or '-'} provider {r['provider']}")
    if st.model:
        typer.echo(f"model {MODEL_NAME}: {st.model['precision']} sha256 {str(st.model['sha256'])[:12]}")
    if st.url:
        typer.echo(f"ingress {st.ingress}: http {st.url}" + (f"  grpc {st.grpc_target}" if st.grpc_target else "")
                   + f"  ({st.processes_per_replica} process(es) per replica)")


@app.command()
def bench(
    url: Optional[str] = typer.Option(
        None, help="Open Inference Protocol server (default http://127.0.0.1:8000; with --grpc host:port, default 127.0.0.1:8001)."
    ),
    handle: bool = typer.Option(False, "--handle", help="Call the rayscale app through a DeploymentHandle (in-cluster)."),
    grpc: bool = typer.Option(False, "--grpc", help="Send over gRPC (Triton's GRPCInferenceService) instead of HTTP."),
    model: str = typer.Option(MODEL_NAME, help="Model name on the server."),
    replicas: Optional[str] = typer.Option(
        None, help="Replica counts to sweep (rescales the running rayscale app); default: as it runs now."
    ),
    concurrency: Optional[str] = typer.Option(None, help="Closed loop: in-flight requests, e.g. 1,4,16,64,128."),
    rate: Optional[str] = typer.Option(None, help="Open loop: requests/s, e.g. 100,500,2000."),
    arrival: str = typer.Option("constant", help="Open-loop arrivals: constant | poisson."),
    images_per_request: str = typer.Option("1", help="Images per request (comma-separated to sweep)."),
    binary: bool = typer.Option(True, "--binary/--json", help="Binary tensor extension or JSON tensors."),
    duration: float = typer.Option(120.0, help="Most seconds measured per point."),
    warmup: float = typer.Option(5.0, help="Warm-up seconds per point (not measured)."),
    window: float = typer.Option(5.0, help="Measurement window, seconds."),
    stability: float = typer.Option(0.1, help="Last 3 windows must agree within this fraction (throughput and p95)."),
    max_windows: int = typer.Option(10, help="Windows before a point is flagged unstable."),
    clients: int = typer.Option(0, help="Client actors (0: automatic)."),
    client_cpus: float = typer.Option(0.5, help="CPUs reserved per client actor."),
    target: str = typer.Option("auto", help="Label for the server in results (auto: its own name)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address."),
    model_dir: Optional[Path] = typer.Option(None, help="model.json to record when the server cannot tell."),
    timeout: float = typer.Option(60.0, help="Per-request timeout, seconds."),
    api_token: Optional[str] = typer.Option(None, envvar="RAYSCALE_API_TOKEN", help="Bearer token for the server."),
    out: Optional[Path] = typer.Option(None, help="Results JSON (default benchmarks/results/bench-<target>-<time>.json)."),
    csv: bool = typer.Option(False, "--csv", help="Also write a CSV beside the JSON."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out file."),
    resume: bool = typer.Option(False, help="Continue an existing --out file, skipping its finished points."),
    metrics_port: Optional[int] = typer.Option(None, help="Serve live load metrics for Prometheus on this port (e.g. 9401)."),
    client: str = typer.Option("rayscale", help="Load engine: rayscale (Ray actors) or perf_analyzer (Triton's client)."),
) -> None:
    """Drive load from Ray actors and measure throughput and honest latency percentiles."""
    from rayscale.loadgen import BenchConfig, run_bench

    try:
        if concurrency is None and rate is None:
            concurrency = "1,4,16,64,128"
        if url is None and not handle:
            url = "127.0.0.1:8001" if grpc else "http://127.0.0.1:8000"
        cfg = BenchConfig(
            url=url, handle=handle, transport="grpc" if grpc else "http", model=model, replicas=parse_int_list(replicas, "--replicas") if replicas is not None else None,
            concurrency=parse_int_list(concurrency, "--concurrency") if concurrency is not None else None,
            rates_rps=parse_float_list(rate, "--rate") if rate is not None else None,
            arrival=arrival, images_per_request=parse_int_list(images_per_request, "--images-per-request"),
            binary=binary, duration_s=duration, warmup_s=warmup, window_s=window, stability=stability,
            max_windows=max_windows, clients=clients, client_cpus=client_cpus, target=target, address=address,
            model_dir=str(model_dir) if model_dir else None, request_timeout_s=timeout, api_token=api_token,
            out=str(out) if out else None, csv=csv, overwrite=overwrite, resume=resume, metrics_port=metrics_port,
            command=_command_line(),
        )
    except RayscaleError as e:
        raise _fail(e) from None
    from rayscale.loadgen.progress import ProgressPrinter

    if client not in ("rayscale", "perf_analyzer"):
        raise _fail(RayscaleError(f"unknown --client {client!r}: use rayscale or perf_analyzer"))
    printer = ProgressPrinter()
    try:
        if client == "perf_analyzer":
            from rayscale.perf_analyzer import bench_with_perf_analyzer

            result = bench_with_perf_analyzer(cfg, on_event=printer)
        else:
            result = run_bench(cfg, on_event=printer)
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted: finished points kept in {printer.out or cfg.out or 'the results file'} (marked incomplete)", err=True)
        raise typer.Exit(130) from None
    except RayscaleError as e:
        raise _fail(e) from None
    printer.summary(result)


@app.command("exporter")
def exporter(
    port: int = typer.Option(9400, help="Port for /metrics."),
    host: str = typer.Option(LOCAL_HOST, help="Bind address (default loopback only)."),
    app_name: str = typer.Option("rayscale", "--app", help="Serve app whose serving metrics to export."),
) -> None:
    """Run a Prometheus endpoint with GPU (NVML), serving and Ray-cluster metrics."""
    from rayscale.metrics import exporter_command

    try:
        exporter_command(port=port, host=host, app=app_name)
    except RayscaleError as e:
        raise _fail(e) from None


@app.command()
def tune(
    target: Optional[str] = typer.Option(None, help="rayscale | triton (required)."),
    gpus: Optional[int] = typer.Option(None, help="GPUs every candidate serves on (required)."),
    slo_p99_ms: Optional[float] = typer.Option(None, help="Latency SLO (required): a point counts only with p99 at or under it."),
    out: Optional[Path] = typer.Option(None, help="Directory for one bench results file per candidate and tune.json (required)."),
    images_per_request: int = typer.Option(32, help="Images per request."),
    budget_minutes: float = typer.Option(20.0, help="Stop starting candidates after this long."),
    strategy: str = typer.Option("grid", help="grid: every candidate in order | hill: climb from the defaults."),
    space: Optional[list[str]] = typer.Option(None, help="Replace one dimension's values, e.g. batches_in_flight=2,4,8 (repeatable)."),
    repeats: int = typer.Option(0, help="Re-measure the top candidates this many times and report the spread."),
    resume: bool = typer.Option(False, help="Continue the search in --out, measuring only what is missing."),
    concurrency_start: int = typer.Option(1, help="First concurrency of each candidate's sweep (then doubled)."),
    max_concurrency: int = typer.Option(1024, help="Highest concurrency a sweep may reach."),
    provider: str = typer.Option("auto", help="auto | cuda | cpu, or null for rayscale (serving path only)."),
    model: Path = typer.Option(DEFAULT_MODEL_DIR, help="Exported model directory."),
    port: int = typer.Option(0, help="HTTP port of the candidate servers (0: 8000 rayscale, 8100 Triton)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster to use instead of a local one."),
    cpus_per_replica: float = typer.Option(1.0, help="CPUs per rayscale replica."),
    duration: float = typer.Option(120.0, help="Most seconds measured per point (as bench)."),
    warmup: float = typer.Option(5.0, help="Warm-up seconds per point (as bench)."),
    window: float = typer.Option(5.0, help="Measurement window, seconds (as bench)."),
) -> None:
    """Find the best configuration under a p99 SLO: start each candidate server, sweep concurrency, keep the best."""
    from rayscale.tune import TuneConfig, closest_answer, parse_space_overrides, run_tune
    from rayscale.tune.progress import print_progress

    try:
        missing = [flag for flag, value in (("--target", target), ("--gpus", gpus), ("--slo-p99-ms", slo_p99_ms), ("--out", out)) if value is None]
        if missing:
            raise RayscaleError(f"missing {', '.join(missing)}: e.g. rayscale tune --target rayscale --gpus 1 --slo-p99-ms 100 --out tune/")
        cfg = TuneConfig(
            target=target, gpus=gpus, slo_p99_ms=slo_p99_ms, out=str(out), images_per_request=images_per_request,
            budget_minutes=budget_minutes, strategy=strategy, repeats=repeats, resume=resume,
            space=parse_space_overrides(target, space or [], gpus=gpus), concurrency_start=concurrency_start,
            concurrency_max=max_concurrency, provider=provider, model_dir=str(model), port=port, address=address,
            cpus_per_replica=cpus_per_replica, duration_s=duration, warmup_s=warmup, window_s=window,
            command=_command_line(),
        )
        result = run_tune(cfg, on_event=print_progress)
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted: every finished point is kept in {out}; continue with --resume", err=True)
        raise typer.Exit(130) from None
    except RayscaleError as e:
        raise _fail(e) from None
    for c in sorted(result.candidates, key=lambda c: c.score, reverse=True):
        typer.echo(f"  {c.describe()}  [{c.status}, stopped: {c.stop_reason}]")
    typer.echo(f"{len(result.candidates)} candidate(s), {result.budget_used_s / 60:.1f} of {result.budget_s / 60:g} min, "
               f"ended by {result.ended_by}; wrote {out}/tune.json")
    if result.best is None:
        typer.echo(closest_answer(result), err=True)
        raise typer.Exit(1)
    typer.echo(result.verdict)
    typer.echo(f"reproduce: {result.best.reproduce} && {result.bench_command}")


def _register_subcommands() -> None:
    from rayscale.k8s import k8s_app
    from rayscale.report.cli import report_command
    from rayscale.triton.cli import triton_app

    app.command("report")(report_command)
    app.add_typer(triton_app, name="triton")
    app.add_typer(k8s_app, name="k8s")


_register_subcommands()


def main() -> None:
    logging.basicConfig(level=os.environ.get("RAYSCALE_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except RayscaleError as e:  # anything a command did not catch itself
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""``rayscale bench``: load from Ray actors (or Triton's perf_analyzer) against a running server."""

from __future__ import annotations

from pathlib import Path

import typer

from rayscale.cli.common import command_line, fail
from rayscale.config import MODEL_NAME, parse_float_list, parse_int_list
from rayscale.errors import RayscaleError

__all__ = ["bench"]


def bench(
    url: str | None = typer.Option(
        None,
        help="One Open Inference Protocol server for every client (with --grpc host:port). Default: the rayscale app's ingress on each node, each client aiming at its own node's.",
    ),
    handle: bool = typer.Option(False, "--handle", help="Call the rayscale app through a DeploymentHandle (in-cluster)."),
    grpc: bool = typer.Option(False, "--grpc", help="Send over gRPC (Triton's GRPCInferenceService) instead of HTTP."),
    model: str = typer.Option(MODEL_NAME, help="Model name on the server."),
    replicas: str | None = typer.Option(
        None, help="Replica counts to sweep (rescales the running rayscale app); default: as it runs now."
    ),
    concurrency: str | None = typer.Option(None, help="Closed loop: in-flight requests, e.g. 1,4,16,64,128."),
    rate: str | None = typer.Option(None, help="Open loop: requests/s, e.g. 100,500,2000."),
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
    address: str | None = typer.Option(None, help="Ray cluster address."),
    model_dir: Path | None = typer.Option(None, help="model.json to record when the server cannot tell."),
    timeout: float = typer.Option(60.0, help="Per-request timeout, seconds."),
    api_token: str | None = typer.Option(None, envvar="RAYSCALE_API_TOKEN", help="Bearer token for the server."),
    out: Path | None = typer.Option(None, help="Results JSON (default benchmarks/results/bench-<target>-<time>.json)."),
    csv: bool = typer.Option(False, "--csv", help="Also write a CSV beside the JSON."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out file."),
    resume: bool = typer.Option(False, help="Continue an existing --out file, skipping its finished points."),
    metrics_port: int | None = typer.Option(None, help="Serve live load metrics for Prometheus on this port (e.g. 9401)."),
    client: str = typer.Option("rayscale", help="Load engine: rayscale (Ray actors) or perf_analyzer (Triton's client)."),
) -> None:
    """Drive load from Ray actors and measure throughput and honest latency percentiles."""
    from rayscale.loadgen import BenchConfig, run_bench

    try:
        if concurrency is None and rate is None:
            concurrency = "1,4,16,64,128"
        if url is None and not handle and client == "perf_analyzer":  # one process here: this node's ingress
            url = "127.0.0.1:8001" if grpc else "http://127.0.0.1:8000"
        cfg = BenchConfig(
            url=url,
            handle=handle,
            transport="grpc" if grpc else "http",
            model=model,
            replicas=parse_int_list(replicas, "--replicas") if replicas is not None else None,
            concurrency=parse_int_list(concurrency, "--concurrency") if concurrency is not None else None,
            rates_rps=parse_float_list(rate, "--rate") if rate is not None else None,
            arrival=arrival,
            images_per_request=parse_int_list(images_per_request, "--images-per-request"),
            binary=binary,
            duration_s=duration,
            warmup_s=warmup,
            window_s=window,
            stability=stability,
            max_windows=max_windows,
            clients=clients,
            client_cpus=client_cpus,
            target=target,
            address=address,
            model_dir=str(model_dir) if model_dir else None,
            request_timeout_s=timeout,
            api_token=api_token,
            out=str(out) if out else None,
            csv=csv,
            overwrite=overwrite,
            resume=resume,
            metrics_port=metrics_port,
            command=command_line(),
        )
    except RayscaleError as e:
        raise fail(e) from None
    from rayscale.loadgen.progress import ProgressPrinter

    if client not in ("rayscale", "perf_analyzer"):
        raise fail(RayscaleError(f"unknown --client {client!r}: use rayscale or perf_analyzer"))
    printer = ProgressPrinter()
    try:
        if client == "perf_analyzer":
            from rayscale.perf_analyzer import bench_with_perf_analyzer

            result = bench_with_perf_analyzer(cfg, on_event=printer)
        else:
            result = run_bench(cfg, on_event=printer)
    except KeyboardInterrupt:
        typer.echo(
            f"\ninterrupted: finished points kept in {printer.out or cfg.out or 'the results file'} (marked incomplete)", err=True
        )
        raise typer.Exit(130) from None
    except RayscaleError as e:
        raise fail(e) from None
    printer.summary(result)

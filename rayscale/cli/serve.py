"""``rayscale up``, ``down`` and ``status``: the Ray Serve app and the cluster it runs in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from rayscale.cli.common import fail, warn
from rayscale.config import DEFAULT_MODEL_DIR, LOCAL_HOST, MODEL_NAME, PROCESSES_PER_GPU, ServeConfig, is_loopback
from rayscale.errors import RayscaleError
from rayscale.tables import Table, print_table

if TYPE_CHECKING:
    from rayscale.serve.registry import ReplicaRecord

__all__ = ["down", "status", "up"]


def up(
    replicas: int = typer.Option(1, help="Replicas, one GPU each by default."),
    model: Path = typer.Option(
        DEFAULT_MODEL_DIR, help="Exported model directory (exported first if missing and the export extra is installed)."
    ),
    host: str = typer.Option(LOCAL_HOST, help="HTTP bind address; anything but loopback exposes the server."),
    port: int = typer.Option(8000, help="HTTP port."),
    max_batch_size: int = typer.Option(256, help="Largest batch, in images."),
    batch_wait_ms: float = typer.Option(2.0, help="How long a batch may wait to fill once a GPU slot is free."),
    batches_in_flight: int = typer.Option(4, help="Batches a replica runs at once (copy/compute overlap)."),
    max_ongoing_requests: int = typer.Option(512, help="Requests a replica accepts at once."),
    max_queued_requests: int = typer.Option(256, help="Queued requests per replica before quick 503s."),
    gpus_per_replica: float | None = typer.Option(None, help="GPUs per replica (default: 1 when the cluster has GPUs, else 0)."),
    cpus_per_replica: float = typer.Option(1.0, help="CPUs per replica."),
    provider: str = typer.Option(
        "auto", help="onnxruntime provider: auto | cuda | cpu, or null (zeros at once: measures the serving path alone)"
    ),
    address: str | None = typer.Option(None, help="Join this Ray cluster instead of starting a local one."),
    api_token: str | None = typer.Option(
        None, envvar="RAYSCALE_API_TOKEN", help="Bearer token required on every request (needed with a public --host)."
    ),
    ingress: str = typer.Option(
        "direct",
        help="direct: rayscale's load balancer straight to each replica process (default) | proxy: Serve's Python proxy | haproxy: Ray Serve's HAProxy mode (binds every interface; see README).",
    ),
    processes_per_replica: int = typer.Option(
        0, help=f"Replica processes sharing each replica's GPU (0: auto, {PROCESSES_PER_GPU} per GPU on GPUs, 1 on the CPU)."
    ),
    grpc_port: int = typer.Option(8001, help="gRPC port of the default ingress (0: no gRPC)."),
    exporter: bool = typer.Option(True, help="Start the Prometheus exporter on each node (port 9400)."),
    exporter_port: int = typer.Option(9400, help="Exporter port."),
    num_gpus: int | None = typer.Option(None, help="GPUs a locally started cluster advertises (default: detected)."),
    engine_options: str = typer.Option(
        "", help="Engine settings, key=value,... e.g. cuda_graph=1 or backend=torch (see README)."
    ),
) -> None:
    """Start a Ray Serve app whose replicas each hold one GPU, speaking the Open Inference Protocol."""
    from rayscale.engine_options import EngineOptions
    from rayscale.serve.cluster import up as serve_up

    if not is_loopback(host) and not api_token:
        raise fail(RayscaleError(f"--host {host} exposes the server: also pass --api-token (or set RAYSCALE_API_TOKEN)"))
    try:
        gpr = gpus_per_replica if gpus_per_replica is not None else _default_gpus_per_replica(address, num_gpus)
        cfg = ServeConfig(
            model_dir=str(model),
            replicas=replicas,
            host=host,
            port=port,
            max_batch_size=max_batch_size,
            batch_wait_ms=batch_wait_ms,
            batches_in_flight=batches_in_flight,
            max_ongoing_requests=max_ongoing_requests,
            max_queued_requests=max_queued_requests,
            gpus_per_replica=gpr,
            cpus_per_replica=cpus_per_replica,
            provider=provider,
            api_token=api_token,
            ingress=ingress,
            processes_per_replica=processes_per_replica,
            grpc_port=grpc_port,
            engine=EngineOptions.parse(engine_options),
        )
        result = serve_up(cfg, address=address, exporter=exporter, exporter_port=exporter_port, num_gpus=num_gpus)
    except RayscaleError as e:
        raise fail(e) from None
    for w in result.warnings:
        warn(w)
    typer.echo(
        f"rayscale is up: {result.replicas} replica(s) × {result.gpus_per_replica:g} GPU, "
        f"{result.processes_per_replica} process(es) each, ingress {result.ingress}, "
        f"model {result.precision} sha256 {result.model_sha256[:12]}"
    )
    print_table(_replica_table(result.replica_info, ["replica", "node", "GPU", "provider", "pid"]))
    for name, url in result.endpoints().items():
        typer.echo(f"  {name:8s} {url}")
    if result.grpc_target:
        typer.echo(f"  {'grpc':8s} {result.grpc_target} (inference.GRPCInferenceService)")
    if len(result.ingresses) > 1:  # every serving node answers on its own address: clients there aim at it
        for ing in result.ingresses:
            typer.echo(f"  ingress on node {ing.node_ip}: {ing.url}" + (f"  grpc {ing.grpc_target}" if ing.grpc_target else ""))
    typer.echo("next: rayscale bench --concurrency 1,16,64 --images-per-request 32    stop: rayscale down")


def _replica_table(replicas: list[ReplicaRecord], columns: list[str]) -> Table:
    """One row per replica process, with the given columns of what the app reported about it."""
    cells = {
        "replica": lambda r: r.replica,
        "node": lambda r: r.node_ip or r.hostname,
        "GPU": lambda r: ",".join(r.gpu_ids) or "-",
        "provider": lambda r: r.provider,
        "pid": lambda r: r.pid,
    }
    table = Table(columns)
    for r in replicas:
        table.add_row(*(cells[c](r) for c in columns))
    return table


def _default_gpus_per_replica(address: str | None, num_gpus: int | None) -> float:
    if num_gpus is not None:
        return 1.0 if num_gpus > 0 else 0.0
    from rayscale.environment import gpu_inventory

    if address is None and not gpu_inventory()["gpus"]:
        warn("no NVIDIA GPU found: replicas run on the CPU (--gpus-per-replica 0)")
        return 0.0
    return 1.0


def down(
    address: str | None = typer.Option(None, help="Ray cluster the app runs in (default: the one `up` started)."),
    keep_cluster: bool = typer.Option(False, help="Remove the app but leave the Ray cluster running."),
) -> None:
    """Remove the app (draining in-flight requests) and stop the Ray cluster `up` started."""
    from rayscale.serve.cluster import down as serve_down

    try:
        result = serve_down(address=address, stop_cluster=not keep_cluster)
    except RayscaleError as e:
        raise fail(e) from None
    typer.echo(
        ("app removed" if result.app_deleted else "no app running") + ("; Ray cluster stopped" if result.cluster_stopped else "")
    )


def status(
    address: str | None = typer.Option(None, help="Ray cluster address."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show replicas, their state and GPU, and the model served."""
    from rayscale.serve.cluster import status as serve_status

    try:
        st = serve_status(address=address)
    except RayscaleError as e:
        raise fail(e) from None
    if json_output:
        typer.echo(json.dumps(st.to_dict(), indent=2))
        return
    if st.app_status == "NOT_STARTED":
        typer.echo(f"not running: {st.message}")
        raise typer.Exit(3)
    typer.echo(f"app {st.app_name}: {st.app_status} {st.message}".rstrip())
    typer.echo("replica states: " + ", ".join(f"{k}={v}" for k, v in sorted(st.replica_states.items())))
    print_table(_replica_table(st.replicas, ["replica", "node", "GPU", "provider"]))
    if st.model:
        typer.echo(f"model {MODEL_NAME}: {st.model['precision']} sha256 {str(st.model['sha256'])[:12]}")
    if st.url:
        typer.echo(
            f"ingress {st.ingress}: http {st.url}"
            + (f"  grpc {st.grpc_target}" if st.grpc_target else "")
            + f"  ({st.processes_per_replica} process(es) per replica)"
        )
    for ing in st.ingresses:
        typer.echo(
            f"  node {ing.node_ip}: {ing.url}, routes to {ing.local_up} process(es) here and {ing.remote_up} elsewhere"
            + (f", HAProxy restarted {ing.restarts}×" if ing.restarts else "")
            + (f" ({ing.last_error})" if ing.last_error else "")
        )

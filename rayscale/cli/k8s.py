"""``rayscale k8s render``: the Kubernetes manifests for one size, written to a directory."""

from __future__ import annotations

from pathlib import Path

import typer

from rayscale.config import ServeConfig
from rayscale.errors import ConfigError
from rayscale.k8s import (
    DEFAULT_IMAGE,
    DEFAULT_NAMESPACE,
    GRPC_PORT,
    INGRESS_SERVICE_NAME,
    K8S_INGRESSES,
    gpu_workers_for,
    serve_url,
    write_manifests,
)

__all__ = ["k8s_app", "render_command"]

k8s_app = typer.Typer(
    help="Kubernetes manifests (KubeRay RayService, Triton, benchmark RayJob, monitoring) for a GPU cluster.",
    no_args_is_help=True,
)


@k8s_app.callback()
def _group() -> None:
    """Kubernetes manifests for a GPU cluster with the KubeRay operator."""


@k8s_app.command("render")
def render_command(
    replicas: int = typer.Option(..., "--replicas", help="Serve replicas; GPU workers and Triton's GPUs follow."),
    gpus_per_replica: float = typer.Option(1.0, "--gpus-per-replica", help="GPU share per replica, in (0, 1]."),
    image: str = typer.Option(DEFAULT_IMAGE, "--image", help="The rayscale image built from k8s/Dockerfile."),
    namespace: str = typer.Option(DEFAULT_NAMESPACE, "--namespace", help="Namespace for every object."),
    ingress: str = typer.Option(
        "direct",
        "--ingress",
        help="direct: rayscale's HAProxy on every GPU worker pod (Service rayscale-ingress); proxy: Serve's proxies.",
    ),
    processes_per_replica: int = typer.Option(
        0, "--processes-per-replica", help="Serve replica processes per replica, sharing its GPU; 0: auto (4 per GPU)."
    ),
    out: Path = typer.Option(..., "--out", help="Directory to write (kubectl apply -k DIR; DIR/monitoring apart)."),
) -> None:
    """Write the manifests for one size: `kubectl apply -k OUT` and `kubectl apply -k OUT/monitoring`."""
    if ingress not in K8S_INGRESSES:
        raise ConfigError(f"--ingress must be one of {', '.join(K8S_INGRESSES)}, got {ingress!r}")
    serve = ServeConfig(ingress=ingress, processes_per_replica=processes_per_replica)
    paths = write_manifests(
        out, replicas=replicas, gpus_per_replica=gpus_per_replica, image=image, namespace=namespace, serve=serve
    )
    workers = gpu_workers_for(replicas, gpus_per_replica)
    typer.echo(f"wrote {len(paths)} files to {out}: {replicas} Serve replicas on {workers} GPU workers, Triton on {workers} GPUs")
    typer.echo(
        f"clients in the cluster: {serve_url(serve)}"
        + (f" (gRPC {INGRESS_SERVICE_NAME}:{GRPC_PORT})" if ingress == "direct" else "")
    )
    typer.echo(f"apply: kubectl apply -k {out}   (monitoring: kubectl apply -k {out / 'monitoring'})")

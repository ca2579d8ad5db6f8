"""``rayscale exporter``: a Prometheus endpoint on this machine until Ctrl-C."""

from __future__ import annotations

import time

import typer

from rayscale.cli.common import fail
from rayscale.config import LOCAL_HOST
from rayscale.errors import RayscaleError

__all__ = ["exporter"]

# How often an exporter started before the Ray cluster looks for it.
_JOIN_POLL_S = 10.0


def exporter(
    port: int = typer.Option(9400, help="Port for /metrics."),
    host: str = typer.Option(LOCAL_HOST, help="Bind address (default loopback only)."),
    app_name: str = typer.Option("rayscale", "--app", help="Serve app whose serving metrics to export."),
) -> None:
    """Run a Prometheus endpoint with GPU (NVML), serving and Ray-cluster metrics."""
    from rayscale.metrics import connect_ray, read_gpus, serve_exporter

    try:
        connected = connect_ray()
        server = serve_exporter(host, port, app_name=app_name)
    except RayscaleError as e:
        raise fail(e) from None
    gpus = len(read_gpus())
    serving = f"serving metrics of app {app_name!r}" if connected else "no Ray cluster running: GPU metrics only"
    typer.echo(f"metrics at {server.url} ({gpus} GPU{'s' if gpus != 1 else ''}; {serving}); Ctrl-C stops")
    try:
        while True:
            time.sleep(_JOIN_POLL_S)
            if not connected and connect_ray():  # a cluster started after the exporter
                connected = True
                typer.echo(f"joined the Ray cluster: now exporting serving metrics of app {app_name!r}")
    except KeyboardInterrupt:
        pass
    finally:
        server.close()

"""The `rayscale` command: one small function per command, each calling one library function.

A module per command group: ``export`` (export, engine-bench), ``serve`` (up, down, status),
``bench``, ``metrics`` (exporter), ``tune``, ``report``, ``triton`` and ``k8s`` (sub-apps).
Every user-facing error is a ``RayscaleError``: printed as one line, exit code 1, no traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from rayscale.cli import bench, export, metrics, report, serve, tune
from rayscale.cli.k8s import k8s_app
from rayscale.cli.triton import triton_app
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

app.command()(export.export)
app.command("engine-bench")(export.engine_bench)
app.command()(serve.up)
app.command()(serve.down)
app.command()(serve.status)
app.command()(bench.bench)
app.command("exporter")(metrics.exporter)
app.command()(tune.tune)
app.command("report")(report.report_command)
app.add_typer(triton_app, name="triton")
app.add_typer(k8s_app, name="k8s")


def main() -> None:
    logging.basicConfig(level=os.environ.get("RAYSCALE_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except RayscaleError as e:  # anything a command did not catch itself
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)

"""``rayscale report``: load results files, build the report, write it, print where it went."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rayscale.cli.common import fail
from rayscale.errors import RayscaleError

__all__ = ["report_command"]


_HELP = {
    "results": "Results files from `rayscale bench` (or directories of them).",
    "engine": "A `rayscale engine-bench` file: report throughput as a fraction of the engine ceiling.",
    "costs": "Hourly price of each GPU count, e.g. '1gpu:1.5,2gpu:3.0,4gpu:6.0'.",
    "gpu_hour_cost": "Price of one GPU-hour in dollars (instead of --costs).",
    "cpu_hour_cost": "Price in dollars of one CPU replica for an hour: runs without GPUs are costed only with it.",
    "slo_p99_ms": "Latency SLO: pick the highest throughput with p99 at or under it, and report goodput.",
    "throughput_target": "Images/s to reach: pick the cheapest configuration that does.",
    "out": "Report directory (default: reports/ and the first results file's name).",
    "allow_mismatch": "Compare results with different model, precision, batch size, input or GPU type, and say so.",
    "title": "Title of report.html and report.md (default: 'rayscale report: ' and the report directory's name).",
}


def report_command(
    results: Annotated[list[Path], typer.Argument(help=_HELP["results"], metavar="RESULTS", show_default=False)],
    engine: Annotated[Path | None, typer.Option("--engine", help=_HELP["engine"])] = None,
    costs: Annotated[str | None, typer.Option("--costs", help=_HELP["costs"])] = None,
    gpu_hour_cost: Annotated[float | None, typer.Option("--gpu-hour-cost", help=_HELP["gpu_hour_cost"])] = None,
    cpu_hour_cost: Annotated[float | None, typer.Option("--cpu-hour-cost", help=_HELP["cpu_hour_cost"])] = None,
    slo_p99_ms: Annotated[float | None, typer.Option("--slo-p99-ms", help=_HELP["slo_p99_ms"])] = None,
    throughput_target: Annotated[float | None, typer.Option("--throughput-target", help=_HELP["throughput_target"])] = None,
    out: Annotated[Path | None, typer.Option("--out", help=_HELP["out"])] = None,
    allow_mismatch: Annotated[bool, typer.Option("--allow-mismatch", help=_HELP["allow_mismatch"])] = False,
    title: Annotated[str | None, typer.Option("--title", help=_HELP["title"])] = None,
) -> None:
    """Write report.html, report.md, report.json, summary.csv and PNG plots from benchmark results."""
    from rayscale.report import report_config, run_report
    from rayscale.report.sections import peaks_table
    from rayscale.tables import print_table

    try:
        config = report_config(
            costs=costs,
            gpu_hour_cost=gpu_hour_cost,
            cpu_hour_cost=cpu_hour_cost,
            slo_p99_ms=slo_p99_ms,
            throughput_target=throughput_target,
            allow_mismatch=allow_mismatch,
        )
        written = run_report(results, config, engine=engine, out=out, title=title)
    except RayscaleError as e:
        raise fail(e) from None
    print_table(peaks_table(written.report))
    page = written.file("report.html")
    typer.echo(f"wrote {len(written.files)} files to {page.parent}/ ({', '.join(p.name for p in written.files)})")
    typer.echo(f"open {page} (one file: tables, plots and setup), or read {page.parent / 'report.md'}")

"""``rayscale tune``: the best server configuration under a p99 SLO, and a line per step of the search."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from rayscale.cli.common import command_line, fail
from rayscale.config import DEFAULT_MODEL_DIR
from rayscale.errors import RayscaleError
from rayscale.tables import Table, print_table

if TYPE_CHECKING:
    from rayscale.tune.events import TuneEvent
    from rayscale.tune.results import TuneResult

__all__ = ["candidates_table", "print_progress", "progress_line", "tune"]


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
            command=command_line(),
        )
        result = run_tune(cfg, on_event=print_progress)
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted: every finished point is kept in {out}; continue with --resume", err=True)
        raise typer.Exit(130) from None
    except RayscaleError as e:
        raise fail(e) from None
    print_table(candidates_table(result))
    typer.echo(f"{len(result.candidates)} candidate(s), {result.budget_used_s / 60:.1f} of {result.budget_s / 60:g} min, "
               f"ended by {result.ended_by}; wrote {out}/tune.json")
    if result.best is None:
        typer.echo(closest_answer(result), err=True)
        raise typer.Exit(1)
    typer.echo(result.verdict)
    typer.echo(f"reproduce: {result.best.reproduce} && {result.bench_command}")


def candidates_table(result: TuneResult) -> Table:
    """Every candidate measured, best first: its goodput under the SLO and why its sweep stopped."""
    table = Table(["candidate", "goodput img/s", "at concurrency", "p99 ms", "peak img/s", "lowest p99 ms", "status",
                   "stopped by"],
                  title=f"rayscale tune: {result.target}, p99 ≤ {result.slo_p99_ms:g} ms ({result.status})")
    for c in sorted(result.candidates, key=lambda c: c.score, reverse=True):
        met = c.goodput_images_per_s is not None
        table.add_row(c.label, f"{c.goodput_images_per_s:,.1f}" if met else "–", c.goodput_concurrency if met else "–",
                      f"{c.goodput_p99_ms:.1f}" if met else "–", f"{c.peak_images_per_s:,.1f}",
                      "–" if c.lowest_p99_ms is None else f"{c.lowest_p99_ms:.1f}", c.status, c.stop_reason or "–")  # fmt: skip
    return table


def progress_line(event: TuneEvent) -> str:
    """One line on stderr per event of the search."""
    from rayscale.tune.events import CandidateFailed, CandidateSkipped, CandidateStarted, PointMeasured, RepeatsStarted

    if isinstance(event, CandidateStarted):
        return f"{event.label}: starting ({event.command})"
    if isinstance(event, PointMeasured):
        p = event.point
        return f"  c={p.concurrency}: {p.images_per_s:,.1f} img/s, p99 {p.latency.p99_ms:.1f} ms, {p.status}"
    if isinstance(event, CandidateSkipped):
        return f"{event.label}: already measured (stopped: {event.reason})"
    if isinstance(event, CandidateFailed):
        return f"{event.label}: failed: {event.error.splitlines()[0]}"
    if isinstance(event, RepeatsStarted):
        return f"{event.label}: {event.runs} repeat(s) at concurrency {event.concurrency}"
    s = event.summary
    return f"  → {s.describe()} [{s.status}, stopped: {s.stop_reason}]"


def print_progress(event: TuneEvent) -> None:
    typer.echo(progress_line(event), err=True)

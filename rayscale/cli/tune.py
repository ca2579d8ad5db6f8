"""``rayscale tune``: the best server configuration under a p99 SLO, and a line per step of the search."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from rayscale.cli.common import command_line, fail
from rayscale.config import DEFAULT_MODEL_DIR
from rayscale.errors import RayscaleError
from rayscale.tables import Table, print_table

if TYPE_CHECKING:
    from rayscale.tune.events import TuneEvent
    from rayscale.tune.results import TuneResult

__all__ = ["candidates_table", "print_progress", "progress_line", "summary_lines", "tune"]


def tune(
    target: str | None = typer.Option(None, help="rayscale | triton (required)."),
    gpus: int | None = typer.Option(None, help="GPUs every candidate serves on (required)."),
    slo_p99_ms: float | None = typer.Option(None, help="Latency SLO (required): a load counts only with p99 at or under it."),
    out: Path | None = typer.Option(None, help="Directory for one bench results file per candidate and tune.json (required)."),
    images_per_request: int = typer.Option(32, help="Images per request."),
    budget_minutes: float = typer.Option(20.0, help="This run's time, repeats included (a resumed run gets its own)."),
    strategy: str = typer.Option("hill", help="hill: seeds, then climbs with restarts | grid: every candidate."),
    space: list[str] | None = typer.Option(None, help="Replace one dimension's values, e.g. batch_wait_ms=0,2 (repeatable)."),
    seeds: int = typer.Option(3, help="hill: first-dimension values measured before climbing."),
    restarts: int = typer.Option(1, help="hill: further climbs, from the next-best seeds."),
    repeats: int = typer.Option(0, help="Re-measure the top candidates this many times at their SLO load (standard windows)."),
    repeat_top: int = typer.Option(2, help="How many top candidates --repeats re-measures."),
    resume: bool = typer.Option(False, help="Continue the search in --out, measuring only what is missing."),
    concurrency_start: int = typer.Option(8, help="Closed loop: the first candidate's first concurrency."),
    max_concurrency: int = typer.Option(1024, help="Highest concurrency a candidate's search may reach."),
    rate_start: float | None = typer.Option(
        None, "--rate-start", "--rate", help="Open loop instead: the first candidate's first rate, requests/s."
    ),
    max_rate: float = typer.Option(1_000_000.0, help="Open loop: the highest rate a candidate's search may reach."),
    arrival: str = typer.Option("constant", help="Open-loop arrivals: constant | poisson."),
    resolution: float = typer.Option(
        0.25, help="A candidate's search ends when its highest pass is within this fraction of its lowest miss."
    ),
    provider: str = typer.Option("auto", help="auto | cuda | cpu, or null for rayscale (serving path only)."),
    model: Path = typer.Option(DEFAULT_MODEL_DIR, help="Exported model directory."),
    port: int = typer.Option(0, help="HTTP port of the candidate servers (0: 8000 rayscale, 8100 Triton)."),
    address: str | None = typer.Option(None, help="Ray cluster to use instead of a local one."),
    cpus_per_replica: float = typer.Option(1.0, help="CPUs per rayscale replica."),
    reload: bool = typer.Option(True, help="Triton: change settings by reloading the model (--no-reload: restart the server)."),
    warmup: float = typer.Option(1.0, help="Search: warm-up seconds per point."),
    window: float = typer.Option(1.5, help="Search: measurement window, seconds."),
    max_windows: int = typer.Option(3, help="Search: most windows per point (three agreeing end it)."),
    repeat_warmup: float = typer.Option(3.0, help="Repeats: warm-up seconds per run."),
    repeat_window: float = typer.Option(2.5, help="Repeats: measurement window, seconds."),
    repeat_max_windows: int = typer.Option(6, help="Repeats: most windows per run."),
    clients: int = typer.Option(0, help="Client actors per point (0: sized from the load, as bench)."),
    client_cpus: float = typer.Option(0.5, help="CPUs reserved per client actor."),
) -> None:
    """Find the best configuration under a p99 SLO: each candidate's highest load within it, the best goodput.

    Exit status: 0 the search finished and its best candidate meets the SLO; 3 it finished and none
    does; 4 this run's budget ran out first (--resume continues); 1 an error; 130 interrupted.
    """
    from rayscale.tune import TuneConfig, parse_space_overrides, run_tune

    try:
        if target is None or gpus is None or slo_p99_ms is None or out is None:
            missing = [
                flag
                for flag, value in (("--target", target), ("--gpus", gpus), ("--slo-p99-ms", slo_p99_ms), ("--out", out))
                if value is None
            ]
            raise RayscaleError(
                f"missing {', '.join(missing)}: e.g. rayscale tune --target rayscale --gpus 1 --slo-p99-ms 100 --out tune/"
            )
        cfg = TuneConfig(
            target=target,
            gpus=gpus,
            slo_p99_ms=slo_p99_ms,
            out=str(out),
            images_per_request=images_per_request,
            budget_minutes=budget_minutes,
            strategy=strategy,
            space=parse_space_overrides(target, space or [], gpus=gpus),
            seeds=seeds,
            restarts=restarts,
            repeats=repeats,
            repeat_top=repeat_top,
            resume=resume,
            concurrency_start=concurrency_start,
            concurrency_max=max_concurrency,
            rate_start_rps=rate_start,
            rate_max_rps=max_rate,
            arrival=arrival,
            resolution=resolution,
            provider=provider,
            model_dir=str(model),
            port=port,
            address=address,
            cpus_per_replica=cpus_per_replica,
            triton_reload=reload,
            warmup_s=warmup,
            window_s=window,
            max_windows=max_windows,
            repeat_warmup_s=repeat_warmup,
            repeat_window_s=repeat_window,
            repeat_max_windows=repeat_max_windows,
            clients=clients,
            client_cpus=client_cpus,
            command=command_line(),
        )
        result = run_tune(cfg, on_event=print_progress)
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted: every finished point is kept in {out}; continue with --resume", err=True)
        raise typer.Exit(130) from None
    except RayscaleError as e:
        raise fail(e) from None
    print_table(candidates_table(result))
    for line in summary_lines(result, out):
        typer.echo(line)
    raise typer.Exit(result.exit_status)


def summary_lines(result: TuneResult, out: Path | str) -> list[str]:
    """What the search found, for stdout after the candidates' table: the answer and what to do next."""
    from rayscale.tune import closest_answer

    lines = [
        f"{len(result.candidates)} candidate(s), {result.budget_used_s / 60:.1f} of {result.budget_s / 60:g} min "
        f"({result.total_used_s / 60:.1f} in all), ended by {result.ended_by}; wrote {out}/tune.json"
    ]
    if result.status != "complete":
        best = f"best so far: {result.best.describe()}" if result.best else "no candidate meets the SLO so far"
        lines.append(f"the budget ran out before the search finished ({best}): continue with --resume")
    elif result.best is None:
        lines.append(closest_answer(result))
    if result.best is not None:
        lines.append(result.verdict)
        lines.append(f"reproduce: {result.best.reproduce} && {result.bench_command}")
    return lines


def candidates_table(result: TuneResult) -> Table:
    """Every candidate measured, best first: its goodput under the SLO and why its sweep stopped."""
    from rayscale.tune.results import format_load

    table = Table(
        ["candidate", "goodput img/s", "at load", "p99 ms", "peak img/s", "lowest p99 ms", "status", "stopped by"],
        title=f"rayscale tune: {result.target}, p99 ≤ {result.slo_p99_ms:g} ms ({result.status})",
    )
    for c in sorted(result.candidates, key=lambda c: c.score, reverse=True):
        met = c.goodput_images_per_s is not None
        table.add_row(c.label, f"{c.goodput_images_per_s:,.1f}" if met else "–",
                      format_load(c.slo_load, c.closed_loop) if met else "–",
                      f"{c.p99_ms:.1f}" if met and c.p99_ms is not None else "–", f"{c.peak_images_per_s:,.1f}",
                      "–" if c.lowest_p99_ms is None else f"{c.lowest_p99_ms:.1f}", c.status, c.stop_reason or "–")  # fmt: skip
    return table


def progress_line(event: TuneEvent) -> str:
    """One line on stderr per event of the search."""
    from rayscale.tune.events import (
        CandidateFailed,
        CandidateSkipped,
        CandidateStarted,
        PointMeasured,
        RepeatsStarted,
        SearchStopped,
    )
    from rayscale.tune.results import format_load

    if isinstance(event, CandidateStarted):
        how = {"in place": "reconfigured in place", "reloaded": "model reloaded", "reused": "already served"}
        took = "" if event.switch == "reused" else f" in {event.switch_s:.1f} s"
        return f"{event.label}: {how.get(event.switch, event.switch)}{took} ({event.command})"
    if isinstance(event, PointMeasured):
        p = event.point
        load = format_load(p.concurrency if p.concurrency is not None else p.rate_rps, p.concurrency is not None)
        verdict = "meets the SLO" if event.meets_slo else "misses the SLO"
        return f"  {load}: {p.images_per_s:,.1f} img/s, p99 {p.latency.p99_ms:.1f} ms, {p.status}: {verdict}"
    if isinstance(event, CandidateSkipped):
        return f"{event.label}: already measured (stopped: {event.reason})"
    if isinstance(event, CandidateFailed):
        return f"{event.label}: failed: {event.error.splitlines()[0]}"
    if isinstance(event, RepeatsStarted):
        return f"{event.label}: {event.runs} repeat(s) at {event.load}"
    if isinstance(event, SearchStopped):
        return f"stopped: {event.reason}"
    s = event.summary
    return f"  → {s.describe()} [{s.status}, stopped: {s.stop_reason}]"


def print_progress(event: TuneEvent) -> None:
    typer.echo(progress_line(event), err=True)

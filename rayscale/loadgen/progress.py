"""A terminal view of a running sweep: one line per window, a table per finished sweep."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from rayscale.loadgen.events import (
    Event,
    PointFinished,
    PointRetried,
    PointSkipped,
    PointStarted,
    Rescaling,
    SweepStarted,
    WindowMeasured,
)
from rayscale.results import BenchResult, PointResult, PointStatus
from rayscale.tables import Table, print_table

__all__ = ["ProgressPrinter", "bench_table"]

_STATUS_COLOUR = {PointStatus.OK: "green", PointStatus.UNSTABLE: "yellow"}


def _label(p: PointResult) -> str:
    load = f"c={p.concurrency}" if p.concurrency is not None else f"rate={p.rate_rps:g}/s"
    return f"{p.target} {p.transport} replicas={p.replicas} ipr={p.images_per_request} {load}"


class ProgressPrinter:
    """An ``on_event`` observer; ``out`` is the results file once the sweep has named it."""

    def __init__(self, console: Console | None = None):
        # soft_wrap: a line longer than the window (or than 80 columns in a log file) stays one line.
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.out: Path | None = None

    def __call__(self, event: Event) -> None:
        print_ = self.console.print
        match event:
            case SweepStarted(out=out):
                self.out = out
            case Rescaling(replicas=replicas):
                print_(f"[bold]scaling the app to {replicas} replica(s)…[/bold]")
            case PointStarted(point=p):
                print_(f"[cyan]{_label(p)}[/cyan]: warming up")
            case WindowMeasured(window=w, index=index, stable=stable, p99_ms=p99_ms):
                flag = " [green]stable[/green]" if stable else ""
                print_(f"  window {index}: {w.images_per_s:,.1f} img/s  p95 {w.p95_ms:.1f} ms  "
                       f"p99 {p99_ms:.1f} ms  errors {w.errors}{flag}")  # fmt: skip
            case PointRetried(point=p, clients=clients):
                print_(f"  [yellow]client CPU {p.client_cpu_pct:.0f}% with {p.clients} actor(s): "
                       f"measuring again with {clients}[/yellow]")  # fmt: skip
            case PointFinished(point=p):
                colour = _STATUS_COLOUR.get(p.status, "red")
                print_(
                    f"  → [{colour}]{p.status}[/{colour}] {p.images_per_s:,.1f} img/s, p50 {_ms(p, 'p50_ms')} ms, "
                    f"p99 {_ms(p, 'p99_ms')} ms, sent {p.requests_sent} ok {p.requests_ok} failed {p.requests_failed}, "
                    f"{p.clients} client actor(s)"
                    + (f" [red]client CPU {p.client_cpu_pct:.0f}%[/red]" if p.client_cpu_saturated else "")
                    + (f" ({p.error})" if p.error else "")
                )
            case PointSkipped(point=p):
                print_(f"[dim]{_label(p)}: already in the results file, skipped[/dim]")

    def summary(self, result: BenchResult, console: Console | None = None) -> None:
        """The sweep's table and where its results went, on stdout (or ``console``)."""
        console = console or Console(soft_wrap=True)
        print_table(bench_table(result), console)
        console.print(f"results: {result.config.get('out')}", markup=False, highlight=False)


def bench_table(result: BenchResult) -> Table:
    """One row per point of a sweep: what was measured and what it reached."""
    table = Table(["target", "transport", "replicas", "ipr", "load", "img/s", "req/s", "p50 ms", "p99 ms", "errors",
                   "status"], title=f"rayscale bench ({result.status})")  # fmt: skip
    for p in result.points:
        load = str(p.concurrency) if p.concurrency is not None else f"{p.rate_rps:g}/s"
        table.add_row(p.target, p.transport, p.replicas, p.images_per_request, load, f"{p.images_per_s:,.1f}",
                      f"{p.requests_per_s:,.1f}", _ms(p, "p50_ms"), _ms(p, "p99_ms"), p.requests_failed, p.status)  # fmt: skip
    return table


def _ms(point: PointResult, field: str) -> str:
    """A latency percentile, or a dash where no latency sample was kept (an unstable perf_analyzer point)."""
    value = point.latency.measured(field)
    return "–" if value is None else f"{value:.1f}"

"""A terminal view of a running sweep: one line per window, a table per finished sweep."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from rayscale.results import BenchResult, PointResult

__all__ = ["ProgressPrinter"]


def _label(p: PointResult) -> str:
    load = f"c={p.concurrency}" if p.concurrency is not None else f"rate={p.rate_rps:g}/s"
    return f"{p.target} {p.transport} replicas={p.replicas} ipr={p.images_per_request} {load}"


class ProgressPrinter:
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.out: str | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "rescale":
            self.console.print(f"[bold]scaling the app to {event['replicas']} replica(s)…[/bold]")
        elif kind == "start":
            self.console.print(f"[cyan]{_label(event['point'])}[/cyan]: warming up")
        elif kind == "window":
            w = event["window"]
            flag = " [green]stable[/green]" if event["stable"] else ""
            self.console.print(
                f"  window {event['index']}: {w.images_per_s:,.1f} img/s  p95 {w.p95_ms:.1f} ms  "
                f"p99 {event['p99_ms']:.1f} ms  errors {w.errors}{flag}"
            )
        elif kind == "point":
            p = event["point"]
            colour = {"ok": "green", "unstable": "yellow"}.get(p.status, "red")
            self.console.print(
                f"  → [{colour}]{p.status}[/{colour}] {p.images_per_s:,.1f} img/s, p50 {_ms(p, 'p50_ms')} ms, "
                f"p99 {_ms(p, 'p99_ms')} ms, sent {p.requests_sent} ok {p.requests_ok} failed {p.requests_failed}"
                + (f" [red]client CPU {p.client_cpu_pct:.0f}%[/red]" if p.client_cpu_saturated else "")
                + (f" ({p.error})" if p.error else "")
            )
        elif kind == "skip":
            self.console.print(f"[dim]{_label(event['point'])}: already in the results file, skipped[/dim]")

    def summary(self, result: BenchResult) -> None:
        table = Table(title=f"rayscale bench ({result.status})")
        for col in ("target", "transport", "replicas", "ipr", "load", "img/s", "req/s", "p50 ms", "p99 ms", "errors", "status"):
            table.add_column(col)
        for p in result.points:
            load = str(p.concurrency) if p.concurrency is not None else f"{p.rate_rps:g}/s"
            table.add_row(p.target, p.transport, str(p.replicas), str(p.images_per_request), load,
                          f"{p.images_per_s:,.1f}", f"{p.requests_per_s:,.1f}", _ms(p, "p50_ms"),
                          _ms(p, "p99_ms"), str(p.requests_failed), p.status)
        Console().print(table)
        Console().print(f"results: {result.config.get('out')}")


def _ms(point, field: str) -> str:
    """A latency percentile, or a dash where no latency sample was kept (an unstable perf_analyzer point)."""
    value = point.latency.measured(field)
    return "–" if value is None else f"{value:.1f}"

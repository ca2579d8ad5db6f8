"""A terminal view of a running search: a line per candidate and per measured point, on stderr."""

from __future__ import annotations

from typing import Any

import typer

__all__ = ["print_progress"]


def print_progress(event: dict[str, Any]) -> None:
    kind = event["event"]
    if kind == "candidate":
        typer.echo(f"{event['label']}: starting ({event['command']})", err=True)
    elif kind == "point":
        p = event["point"]
        typer.echo(f"  c={p.concurrency}: {p.images_per_s:,.1f} img/s, p99 {p.latency.p99_ms:.1f} ms, {p.status}", err=True)
    elif kind == "skip":
        typer.echo(f"{event['label']}: already measured (stopped: {event['reason']})", err=True)
    elif kind == "failed":
        typer.echo(f"{event['label']}: failed: {event['error'].splitlines()[0]}", err=True)
    elif kind == "repeat":
        typer.echo(f"{event['label']}: {event['runs']} repeat(s) at concurrency {event['concurrency']}", err=True)
    elif kind == "candidate_done":
        s = event["summary"]
        typer.echo(f"  → {s.describe()} [{s.status}, stopped: {s.stop_reason}]", err=True)

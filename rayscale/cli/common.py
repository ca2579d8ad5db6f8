"""What every command shares: the one-line error and the command line recorded in results files."""

from __future__ import annotations

import sys

import typer

__all__ = ["command_line", "fail", "warn"]


def fail(e: BaseException) -> typer.Exit:
    """Prints ``error: ...`` on stderr; raise the returned Exit (exit code 1, no traceback)."""
    typer.echo(f"error: {e}", err=True)
    return typer.Exit(1)


def warn(message: str) -> None:
    typer.secho(f"warning: {message}", fg="yellow", err=True)


def command_line() -> str:
    return " ".join(["rayscale", *sys.argv[1:]])

"""Tables for people: one typed ``Table``, printed whole wherever the output goes.

On a terminal a table is drawn with rich and fitted to the window, folding a cell that does not
fit rather than cutting it. Anywhere else (a file, a pipe, a CI log) it is plain aligned text at
its full width, because a log is where results are kept and read later: rich would squeeze it to
80 columns and cut headers and figures to "tar…". Numeric columns are right-aligned in both.
The report renders the same ``Table`` as Markdown and HTML.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rich.cells import cell_len
from rich.console import Console

__all__ = ["Table", "is_numeric_column", "print_table", "render_text"]

_NUMBER = re.compile(r"[≈~<>≤≥]?[×$+-]?\$?[\d,]*\.?\d+(?:e[+-]?\d+)?(?:%|×| ms| s|/s)?")
_EMPTY = {"", "–", "-", "—"}


@dataclass
class Table:
    """A header and rows of text cells, each row as long as the header; ``title`` is said above it."""

    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    title: str = ""

    def add_row(self, *cells: object) -> None:
        if len(cells) != len(self.header):
            raise ValueError(f"a row of {len(cells)} cells in a table of {len(self.header)} columns")
        self.rows.append([str(c) for c in cells])


def is_numeric_column(table: Table, index: int) -> bool:
    """Every cell that holds a value reads as a number (dashes mark none): such a column is right-aligned."""
    values = [row[index].strip() for row in table.rows if row[index].strip() not in _EMPTY]
    return bool(values) and all(_NUMBER.fullmatch(v) for v in values)


def render_text(table: Table) -> str:
    """The table as plain aligned text, every header and cell whole, with a rule under the header."""
    right = [is_numeric_column(table, i) for i in range(len(table.header))]
    widths = [max(cell_len(cell) for cell in column) for column in zip(table.header, *table.rows, strict=True)]

    def line(cells: list[str]) -> str:
        padded = []
        for cell, width, numeric in zip(cells, widths, right, strict=True):
            pad = " " * (width - cell_len(cell))
            padded.append(pad + cell if numeric else cell + pad)
        return "  ".join(padded).rstrip()

    lines = [table.title] if table.title else []
    lines += [line(table.header), "  ".join("-" * w for w in widths)]
    lines += [line(row) for row in table.rows]
    return "\n".join(lines)


def _rich_table(table: Table):
    from rich.table import Table as RichTable
    from rich.text import Text

    drawn = RichTable(title=table.title or None, header_style="bold")
    for i, name in enumerate(table.header):
        numeric = is_numeric_column(table, i)
        drawn.add_column(Text(name), justify="right" if numeric else "left", no_wrap=numeric, overflow="fold")
    for row in table.rows:
        drawn.add_row(*(Text(cell) for cell in row))
    return drawn


def print_table(table: Table, console: Console | None = None) -> None:
    """Draw the table on a terminal; write it as plain text at full width anywhere else."""
    console = console or Console()
    if console.is_terminal:
        console.print(_rich_table(table))
    else:
        console.print(render_text(table), soft_wrap=True, markup=False, highlight=False, emoji=False)

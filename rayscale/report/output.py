"""Writing a report: report.md, report.html, report.json, summary.csv and the PNG plots, each atomically."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, fields
from pathlib import Path

from rayscale.files import write_text_atomic
from rayscale.report.document import to_markdown
from rayscale.report.html import render_html
from rayscale.report.sections import report_document
from rayscale.report.types import PointRow, Report

__all__ = ["summary_csv", "write_report"]


def summary_csv(report: Report) -> str:
    """One row per measured point; flags joined with '; '."""
    columns = [f.name for f in fields(PointRow)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in report.points:
        record = asdict(row)
        record["flags"] = "; ".join(row.flags)
        writer.writerow({k: "" if v is None else v for k, v in record.items()})
    return buf.getvalue()


def write_report(report: Report, out_dir: str | os.PathLike, *, title: str | None = None) -> list[Path]:
    """Write the plots, report.md, report.html, report.json and summary.csv into ``out_dir``; return their paths.

    report.md and report.html render one document built from ``report``; the page carries the plots inside it.
    """
    from rayscale.report.plots import write_plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(report, out)
    title = title or f"rayscale report: {out.resolve().name}"
    written = list(plots)
    document = report_document(report, [p.name for p in plots], title)
    written.append(write_text_atomic(out / "report.md", to_markdown(document)))
    written.append(write_text_atomic(out / "report.html", render_html(document, {p.name: p.read_bytes() for p in plots})))
    written.append(write_text_atomic(out / "report.json", json.dumps(report.to_dict(), indent=2) + "\n"))
    written.append(write_text_atomic(out / "summary.csv", summary_csv(report)))
    return written

"""The scaling report: peak throughput, latency, scaling efficiency, cost per 1000 images, plots.

``build_report`` computes every figure from results files under one ``ReportConfig`` (prices,
SLO, target, knee rule) and returns a typed ``Report``; ``write_report`` writes report.md,
report.html, report.json, summary.csv and PNG plots. ``run_report`` does what ``rayscale report``
does: loads the files, builds and writes the report, and returns it with the files written.

Modules, each named for what it holds (each states the definitions it implements):

* ``types``: the typed report (``Report``, ``PointRow``, ``GroupSummary``, ``Pick``, ...).
* ``provenance``: what each file recorded; ``check_comparable`` and the setup table.
* ``rows``: one measured point as one row (size, load, flags, usable), with ``goodput`` and ``costs``.
* ``figures``: a group's knee, bottleneck and engine ceiling; ``groups``: group summaries,
  scaling efficiency and like-for-like comparisons; ``picks``: best under the SLO, cheapest.
* ``analysis``: ``build_report``, which runs those steps in order.
* ``sections``: the report as one ``document`` (headings, tables, lists, figures), rendered by
  ``document.to_markdown`` (report.md) and ``html`` (report.html, self-contained); ``plots``: the PNGs.
* ``output``: writing every file; ``inputs``, ``run``: loading and the command.
"""

from rayscale.report.analysis import build_report
from rayscale.report.config import ReportConfig
from rayscale.report.costs import cost_per_1000_images_usd, parse_costs
from rayscale.report.figures import find_knee
from rayscale.report.goodput import goodput_images_per_s
from rayscale.report.inputs import load_bench_results, load_engine_result
from rayscale.report.layout import Layout, layout_of
from rayscale.report.output import write_report
from rayscale.report.provenance import check_comparable
from rayscale.report.run import WrittenReport, default_out_dir, report_config, run_report
from rayscale.report.types import Bottleneck, Comparison, GroupSummary, Knee, Mismatch, Pick, PointRow, Report

__all__ = [
    "Bottleneck",
    "Comparison",
    "GroupSummary",
    "Knee",
    "Layout",
    "Mismatch",
    "Pick",
    "PointRow",
    "Report",
    "ReportConfig",
    "WrittenReport",
    "build_report",
    "check_comparable",
    "cost_per_1000_images_usd",
    "default_out_dir",
    "find_knee",
    "goodput_images_per_s",
    "layout_of",
    "load_bench_results",
    "load_engine_result",
    "parse_costs",
    "report_config",
    "run_report",
    "write_report",
]

"""The scaling report: peak throughput, latency, scaling efficiency, cost per 1000 images, plots.

``build_report`` computes every figure from results files (``analysis``) under one
``ReportConfig`` (prices, SLO, target, knee rule); ``write_report`` writes report.md,
report.json, summary.csv and PNG plots. ``run_report`` does what ``rayscale report`` does:
loads the files, builds and writes the report, and returns the files written.
"""

from rayscale.report.analysis import (
    Bottleneck,
    Comparison,
    GroupSummary,
    Knee,
    Mismatch,
    Pick,
    PointRow,
    Report,
    build_report,
    check_comparable,
    cost_per_1000_images_usd,
    find_knee,
    goodput_images_per_s,
    parse_costs,
)
from rayscale.report.config import ReportConfig
from rayscale.report.inputs import load_bench_results, load_engine_result
from rayscale.report.layout import Layout, layout_of
from rayscale.report.output import write_report
from rayscale.report.run import default_out_dir, report_config, run_report

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

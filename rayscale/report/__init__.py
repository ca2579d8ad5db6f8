"""The scaling report: peak throughput, latency, scaling efficiency, cost per 1000 images, plots.

``build_report`` computes every figure from results files (``analysis``) under one
``ReportConfig`` (prices, SLO, target, knee rule); ``write_report`` writes report.md,
report.json, summary.csv and PNG plots. The CLI (``cli.report_command``) only loads files,
builds the config from its flags and calls these two.
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
    "find_knee",
    "goodput_images_per_s",
    "layout_of",
    "load_bench_results",
    "load_engine_result",
    "parse_costs",
    "write_report",
]

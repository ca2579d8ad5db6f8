"""A report from results files, the way `rayscale report` makes one: load, build, write; returns the files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rayscale.report.analysis import build_report
from rayscale.report.config import ReportConfig
from rayscale.report.costs import parse_costs
from rayscale.report.inputs import load_bench_results, load_engine_result
from rayscale.report.output import write_report
from rayscale.report.types import Report

__all__ = ["WrittenReport", "default_out_dir", "report_config", "run_report"]


@dataclass
class WrittenReport:
    report: Report
    files: list[Path]  # plots, report.md, report.html, report.json, summary.csv

    def file(self, name: str) -> Path:
        return next(p for p in self.files if p.name == name)


def default_out_dir(results: list[Path]) -> Path:
    first = Path(results[0])
    name = first.name if first.is_dir() else first.stem
    return Path("reports") / (name or "report")


def report_config(
    *,
    costs: str | None = None,
    gpu_hour_cost: float | None = None,
    cpu_hour_cost: float | None = None,
    slo_p99_ms: float | None = None,
    throughput_target: float | None = None,
    allow_mismatch: bool = False,
) -> ReportConfig:
    """The flags as one ReportConfig: the only place the --costs text is parsed."""
    return ReportConfig(
        costs_usd_per_hour=parse_costs(costs) if costs is not None else None,
        gpu_hour_cost_usd=gpu_hour_cost,
        cpu_hour_cost_usd=cpu_hour_cost,
        slo_p99_ms=slo_p99_ms,
        throughput_target_ips=throughput_target,
        allow_mismatch=allow_mismatch,
    )


def run_report(
    results: list[Path],
    config: ReportConfig,
    *,
    engine: Path | None = None,
    out: Path | None = None,
    title: str | None = None,
) -> WrittenReport:
    """What the command does, callable without typer: returns the report and the files written."""
    bench, sources = load_bench_results(results)
    engine_result = load_engine_result(engine) if engine is not None else None
    report = build_report(
        bench, config, sources=sources, engine=engine_result, engine_source=str(engine) if engine is not None else None
    )
    return WrittenReport(report, write_report(report, out if out is not None else default_out_dir(results), title=title))

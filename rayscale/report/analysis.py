"""Every figure of the report, computed from results files with no plotting and no I/O.

``build_report`` checks that the files compare like with like (``provenance``), collects their
points (a later file's point replaces an earlier one's), turns each into a row (``rows``, with
``goodput`` and ``costs``), summarises each group (``groups``, with ``figures``), makes the picks
(``picks``) and notes what it left out and why. Each module states the definitions it implements;
the report's "Definitions" section repeats them.

* A **series** is one way of serving measured at several loads: (target, transport, mode,
  images per request, and the layout: hardware, ingress, processes per GPU).
"""

from __future__ import annotations

from typing import Any

from rayscale.errors import ConfigError, ResultsError
from rayscale.report.config import ReportConfig
from rayscale.report.goodput import goodput_parameters
from rayscale.report.groups import compare_like_for_like, set_scaling_efficiency, summarise_group
from rayscale.report.labels import format_load, series_labels, size_label
from rayscale.report.layout import layout_of
from rayscale.report.picks import pick_best_under_slo, pick_cheapest
from rayscale.report.provenance import check_comparable, describe_setup, max_batch_size
from rayscale.report.rows import load_of, point_row, size_of
from rayscale.report.types import GroupSummary, Pick, PointRow, Report
from rayscale.results import BenchResult, EngineBenchResult, PointResult

__all__ = ["build_report"]


def build_report(
    results: list[BenchResult],
    config: ReportConfig | None = None,
    *,
    sources: list[str] | None = None,
    engine: EngineBenchResult | None = None,
    engine_source: str | None = None,
) -> Report:
    """Compute every figure of the report from bench results (and optionally an engine bench).

    ``config`` holds the report's settings (prices, SLO, target, knee rule); ``sources`` names
    the files (for messages and the setup table); ``engine_source`` names the engine file.
    """
    config = _checked_config(config)
    sources = _checked_sources(results, sources)
    engine_name = engine_source or "engine"
    compared = list(results) + ([engine] if engine is not None else [])
    compared_names = sources + ([engine_name] if engine is not None else [])
    mismatches = check_comparable(compared, compared_names, allow_mismatch=config.allow_mismatch)
    notes: list[str] = [f"not comparable, reported anyway: {m.describe()}" for m in mismatches]

    series_keys, latest = _collect_points(results, sources, notes)
    labels = series_labels(series_keys)
    series = [labels[k] for k in series_keys]
    rows = [point_row(point, result, source, labels[pkey[0]], config) for pkey, (point, result, source) in latest.items()]
    max_batch = {(labels[pkey[0]], pkey[1]): max_batch_size(result) for pkey, (_, result, _) in latest.items()}
    groups = _summarise_groups(rows, series, config, engine, max_batch)
    notes += _exclusion_notes(groups, rows, config)
    best, best_by_series = _best_under_slo(rows, series, config.slo_p99_ms)
    cheapest = _cheapest_for_target(groups, config)
    notes += _pick_notes(best, cheapest, config)

    return Report(
        sources=compared_names,
        setup=describe_setup(results, sources, engine, engine_name),
        parameters=_parameters(
            config, rows, [point for point, _, _ in latest.values()], engine_name if engine is not None else None
        ),
        mismatches=mismatches,
        series=series,
        load_axis={labels[k]: ("rate_rps" if k[2] == "open" else "concurrency") for k in series_keys},
        points=rows,
        groups=groups,
        comparisons=compare_like_for_like(groups, series),
        best_under_slo=best,
        best_under_slo_by_series=best_by_series,
        cheapest_for_target=cheapest,
        notes=notes,
    )


def _checked_config(config: ReportConfig | None) -> ReportConfig:
    config = config if config is not None else ReportConfig()
    if not isinstance(config, ReportConfig):
        raise ConfigError(f"build_report takes a ReportConfig, got {type(config).__name__}")
    return config


def _checked_sources(results: list[BenchResult], sources: list[str] | None) -> list[str]:
    """The files' names, one per result, once every result is a bench result."""
    if not results:
        raise ResultsError("no bench results to report on: pass one or more files written by `rayscale bench`")
    for i, r in enumerate(results):
        if not isinstance(r, BenchResult):
            name = sources[i] if sources else f"results[{i}]"
            kind = getattr(r, "kind", "?")
            raise ResultsError(f"{name} is not a bench result (kind={kind!r}): pass engine-bench files with --engine")
    sources = list(sources) if sources else [f"results[{i}]" for i in range(len(results))]
    if len(sources) != len(results):
        raise ConfigError(f"sources names {len(sources)} files for {len(results)} results")
    return sources


def _collect_points(
    results: list[BenchResult], sources: list[str], notes: list[str]
) -> tuple[list[tuple], dict[tuple, tuple[PointResult, BenchResult, str]]]:
    """Series keys in first-seen order, and each point by what it measured (a later file replaces an earlier one)."""
    series_keys: list[tuple] = []
    latest: dict[tuple, tuple[PointResult, BenchResult, str]] = {}
    for result, source in zip(results, sources, strict=True):
        if result.status != "complete":
            notes.append(f"{source}: the run that wrote it is {result.status}: points it lacks were not measured")
        for point in result.points:
            layout = layout_of(point, result)
            skey = (point.target, point.transport, point.mode, point.images_per_request, layout)
            if skey not in series_keys:
                series_keys.append(skey)
            units = size_of(point, result, layout)[1]
            pkey = (skey, units, point.replicas, load_of(point))
            if pkey in latest and latest[pkey][2] != source:
                where = f"{point.target} at {size_label(layout.hardware, units)}, load {format_load(pkey[3])}"
                notes.append(f"{where}: {source} replaces {latest[pkey][2]}")
            latest[pkey] = (point, result, source)
    if not latest:
        raise ResultsError(f"no measured points in {', '.join(sources)}: run `rayscale bench` to completion first")
    return series_keys, latest


def _exclusion_notes(groups: list[GroupSummary], rows: list[PointRow], config: ReportConfig) -> list[str]:
    notes = []
    for g in groups:
        where = size_label(g.hardware, g.units)
        if g.peak_images_per_s is None:
            notes.append(f"{g.series} at {where}: no usable point (unstable, incomplete or failed), no peak")
        elif g.hourly_cost_usd is None and g.hardware == "GPU" and config.costs_usd_per_hour is not None:
            notes.append(f"--costs has no price for {g.gpus} GPU(s): no cost for {g.series} at {g.gpus} GPU(s)")
    gpu_priced = config.costs_usd_per_hour is not None or config.gpu_hour_cost_usd is not None
    if config.cpu_hour_cost_usd is None and any(g.hardware == "CPU" for g in groups):
        cpu_series = [s for s in dict.fromkeys(g.series for g in groups if g.hardware == "CPU")]
        which = "every configuration" if all(g.hardware == "CPU" for g in groups) else "; ".join(cpu_series)
        notes.append(
            f"{which} ran on CPU (no GPU in the hardware record): "
            + ("GPU prices do not apply to it, " if gpu_priced else "")
            + "pass --cpu-hour-cost (dollars per CPU replica-hour) to cost it"
        )
    for r in rows:
        if not r.usable:
            notes.append(
                f"{r.series} at {size_label(r.hardware, r.units)}, load {format_load(r.load)}: "
                f"{'; '.join(r.flags) or r.status}: excluded from peaks and picks"
            )
    return notes


def _summarise_groups(
    rows: list[PointRow],
    series: list[str],
    config: ReportConfig,
    engine: EngineBenchResult | None,
    max_batch: dict[tuple[str, int], int | None],
) -> list[GroupSummary]:
    """One summary per series and size, in series order then size, with scaling efficiency filled in."""
    groups: list[GroupSummary] = []
    for label in series:
        for units in sorted({r.units for r in rows if r.series == label}):
            group_rows = sorted(
                (r for r in rows if r.series == label and r.units == units), key=lambda r: (r.load is None, r.load or 0)
            )
            groups.append(summarise_group(group_rows, config, engine, max_batch.get((label, units))))
    set_scaling_efficiency(groups, series)
    return groups


def _best_under_slo(rows: list[PointRow], series: list[str], slo_p99_ms: float | None) -> tuple[Pick | None, dict[str, Pick]]:
    """The best point under the SLO overall and in each series (none without an SLO)."""
    if slo_p99_ms is None:
        return None, {}
    best_by_series: dict[str, Pick] = {}
    for label in series:
        pick = pick_best_under_slo([r for r in rows if r.series == label], slo_p99_ms)
        if pick is not None:
            best_by_series[label] = pick
    return pick_best_under_slo(rows, slo_p99_ms), best_by_series


def _cheapest_for_target(groups: list[GroupSummary], config: ReportConfig) -> Pick | None:
    if config.throughput_target_ips is None:
        return None
    return pick_cheapest(groups, config.throughput_target_ips, config.slo_p99_ms)


def _pick_notes(best: Pick | None, cheapest: Pick | None, config: ReportConfig) -> list[str]:
    """What a pick asked for and found nothing to pick."""
    slo_p99_ms, target_ips = config.slo_p99_ms, config.throughput_target_ips
    notes = []
    if slo_p99_ms is not None and best is None:
        notes.append(f"no usable point meets p99 ≤ {slo_p99_ms:g} ms")
    if target_ips is not None and cheapest is None:
        notes.append(
            f"no measured configuration reaches {target_ips:g} img/s"
            + (f" with p99 ≤ {slo_p99_ms:g} ms" if slo_p99_ms is not None else "")
        )
    return notes


def _parameters(config: ReportConfig, rows: list[PointRow], points: list[PointResult], engine_name: str | None) -> dict[str, Any]:
    """The settings the figures were computed under (the report's ``parameters``)."""
    costs = config.costs_usd_per_hour
    return {
        "costs_usd_per_hour": {str(k): v for k, v in sorted(costs.items())} if costs else None,
        "gpu_hour_cost_usd": config.gpu_hour_cost_usd,
        "cpu_hour_cost_usd": config.cpu_hour_cost_usd,
        "slo_p99_ms": config.slo_p99_ms,
        **goodput_parameters(rows, points),
        "throughput_target_ips": config.throughput_target_ips,
        "knee_factor": config.knee_factor,
        "knee_min_p99_growth": config.knee_min_p99_growth,
        "allow_mismatch": config.allow_mismatch,
        "engine": engine_name,
    }

"""The report's sections, built once as a ``Document`` that report.md and report.html both render.

Every table a reader sees is defined here, once: a column added to a section appears in both files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from rayscale.report.document import Block, BulletList, CodeBlock, Document, Figure, Heading, Paragraph, Table, to_markdown
from rayscale.report.figures import GPU_BUSY_PCT, GPU_IDLE_PCT, QUEUE_DOMINANT_SHARE
from rayscale.report.goodput import GOODPUT_HISTOGRAM, GOODPUT_MIXED, GOODPUT_P99_ESTIMATE
from rayscale.report.labels import format_load, size_label
from rayscale.report.rows import CLIENT_SATURATED_PCT
from rayscale.report.tune_section import tune_section_blocks
from rayscale.report.types import GroupSummary, Pick, Report

__all__ = ["peaks_table", "render_markdown", "report_document"]


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _goodput(value: float | None, method: str | None) -> str:
    """A goodput figure; ≈ marks one estimated from p99 (the point kept no latency histogram)."""
    text = _num(value)
    return "≈" + text if value is not None and method == GOODPUT_P99_ESTIMATE else text


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _cpu_s(value: float | None) -> str:
    """CPU-seconds per 1000 images: three significant digits (0.0512, 1.23, 45.6), whole above 100."""
    if value is None:
        return "–"
    if value <= 0 or value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{max(0, 2 - math.floor(math.log10(value)))}f}"


def _usd(value: float | None, digits: int | None = None) -> str:
    """Dollars: fixed decimals for prices, three significant digits for (small) costs per 1000 images."""
    if value is None:
        return "–"
    return f"${value:,.{digits}f}" if digits is not None else f"${value:#.3g}"


def _table(header: list[str], rows: Iterable[list[str]]) -> list[Block]:
    return [Table(header, [[str(c) for c in row] for row in rows])]


def _load_name(report: Report, series: str) -> str:
    return "rate (req/s)" if report.load_axis.get(series) == "rate_rps" else "concurrency"


def _pick_line(pick: Pick, report: Report) -> str:
    cost = ""
    if pick.cost_per_1000_images_usd is not None:
        cost = f", {_usd(pick.hourly_cost_usd, 2)}/h, {_usd(pick.cost_per_1000_images_usd)} per 1000 images"
    return (
        f"**{pick.series}** on {size_label(pick.hardware, pick.units)} at {_load_name(report, pick.series)} "
        f"{format_load(pick.load)}: "
        f"{_num(pick.images_per_s)} img/s, p99 {_num(pick.latency_p99_ms)} ms{cost} ({pick.reason})"
    )


def _values(values: dict[str, list[str]], many: bool) -> str:
    if not values:
        return "not recorded"
    if len(values) == 1:
        return next(iter(values))
    return "; ".join(f"{v} ({', '.join(files)})" for v, files in values.items()) if many else " / ".join(values)


def _summary(report: Report) -> list[Block]:
    items = []
    for series in report.series:
        peaked = [g for g in report.groups_of(series) if g.peak_images_per_s]
        if not peaked:
            items.append(f"**{series}**: no usable point.")
            continue
        top = max(peaked, key=lambda g: g.units)
        eff = f", scaling efficiency {_pct(top.efficiency)} of linear" if top.units != top.efficiency_base_gpus else ""
        cost = f", {_usd(top.cost_per_1000_images_usd)} per 1000 images" if top.cost_per_1000_images_usd else ""
        if top.hardware == "CPU" and top.hourly_cost_usd is None:
            cost = ", no cost (CPU run: pass --cpu-hour-cost)"
        host = ""
        if top.peak_server_cores_per_gpu is not None:
            host = (
                f", server host CPU {_num(top.peak_server_cores_per_gpu, 2)} cores per GPU "
                f"({_cpu_s(top.peak_server_cpu_s_per_1000_images)} CPU-s per 1000 images)"
            )
        items.append(
            f"**{series}**: peak {_num(top.peak_images_per_s)} img/s on {size_label(top.hardware, top.units)} "
            f"(p99 {_num(top.peak_latency_p99_ms)} ms){eff}{cost}{host}."
        )
    for c in report.comparisons:
        if c.leader is not None:
            items.append(
                f"{size_label(c.hardware, c.units)}, {c.like_for_like}: **{c.leader}** leads "
                f"{c.runner_up} at peak by ×{c.lead_ratio:.2f}."
            )
    slo = report.parameters.get("slo_p99_ms")
    if slo is not None:
        if report.best_under_slo:
            items.append(f"Best under the SLO (p99 ≤ {slo:g} ms): {_pick_line(report.best_under_slo, report)}.")
        else:
            items.append(f"No usable point meets p99 ≤ {slo:g} ms.")
    target = report.parameters.get("throughput_target_ips")
    if target is not None:
        if report.cheapest_for_target:
            items.append(f"Cheapest reaching {target:g} img/s: {_pick_line(report.cheapest_for_target, report)}.")
        else:
            items.append(f"No measured configuration reaches {target:g} img/s.")
    return [Heading(2, "Summary"), BulletList(items)]


def _setup(report: Report) -> list[Block]:
    s = report.setup
    blocks: list[Block] = [Heading(2, "Setup")]
    rows = [
        ["GPU", _values(s["gpu_type"], True)],
        ["GPUs on the host", _values(s["gpu_count_on_host"], True)],
        ["GPU driver", _values(s["gpu_driver"], True)],
        ["CPU", _values(s["cpu"], True)],
        ["memory (GiB)", _values(s["memory_gib"], True)],
        ["host", _values(s["hostname"], True)],
        ["git commit", _values(s["git_commit"], True)],
        ["model", _values(s["model_name"], True)],
        ["model sha256", _values(s["model_sha256"], True)],
        ["precision", _values(s["precision"], True)],
        ["weights", _values(s["weights"], True)],
        ["input (H×W×C)", _values(s["input"], True)],
    ]
    for package, versions in sorted(s["versions"].items()):
        rows.append([f"version: {package}", _values(versions, True)])
    blocks += _table(["setting", "value"], rows)
    if s.get("layout"):
        blocks += [
            Heading(3, "Serving layout"),
            Paragraph(
                "Transport (http, grpc or a DeploymentHandle call), the ingress in front of a rayscale app, "
                "and server processes (Triton: model instances) per GPU; files from before these were "
                "recorded read as HTTP through Serve's proxy with one process per replica."
            ),
        ]
        rows = [
            [target, layout, ", ".join(files)] for target, layouts in s["layout"].items() for layout, files in layouts.items()
        ]
        blocks += _table(["target", "transport, ingress, processes", "files"], rows)
    if s["serve_config"]:
        blocks += [Heading(3, "Serving and batching")]
        rows = [
            [targets, config, ", ".join(files)]
            for targets, configs in s["serve_config"].items()
            for config, files in configs.items()
        ]
        blocks += _table(["target", "settings", "files"], rows)
    if any(s["bench_config"].values()):
        blocks += [Heading(3, "Load settings")]
        blocks += _table(["file", "settings"], [[f, c or "–"] for f, c in s["bench_config"].items()])
    if s["commands"]:
        blocks += [Heading(3, "Commands")]
        for source, command in s["commands"].items():
            blocks += [Paragraph(f"`{source}`:"), CodeBlock(command)]
    return blocks


def _group_rows(groups: list[GroupSummary], report: Report, has_engine: bool, has_slo: bool) -> list[list[str]]:
    rows = []
    for g in groups:
        knee = "none" if g.knee is None else format_load(g.knee.load)
        if not g.usable_points:
            knee = "–"
        row = [str(g.units), str(g.replicas), _num(g.peak_images_per_s)]
        if has_slo:
            row += [_goodput(g.peak_goodput_images_per_s, g.peak_goodput_method)]
        row += [
            format_load(g.peak_load),
            _num(g.peak_latency_p50_ms),
            _num(g.peak_latency_p99_ms),
            _pct(g.efficiency),
            _usd(g.hourly_cost_usd, 2),
            _usd(g.cost_per_1000_images_usd),
        ]
        if has_slo:
            row += [_goodput(g.goodput_images_per_s, g.goodput_method), format_load(g.goodput_load)]
        row += [knee, g.bottleneck.cause if g.bottleneck else "–", f"{g.usable_points}/{g.points}"]
        if has_engine:
            ceiling = f"{_num(g.engine_ceiling_images_per_s, 0)} (batch {g.engine_batch_size})"
            row += [f"{_pct(g.engine_fraction)} of {ceiling}" if g.engine_fraction is not None else "–"]
        rows.append(row)
    return rows


def _scaling(report: Report) -> list[Block]:
    slo = report.parameters.get("slo_p99_ms")
    has_engine = report.parameters.get("engine") is not None
    blocks: list[Block] = [Heading(2, "Peak throughput, scaling and cost")]
    for series in report.series:
        groups = report.groups_of(series)
        load = _load_name(report, series)
        on_cpu = bool(groups) and groups[0].hardware == "CPU"
        header = ["replicas (CPU)" if on_cpu else "GPUs", "replicas", "peak img/s"]
        if slo is not None:
            header += ["goodput at peak"]
        header += [f"at {load}", "p50 ms", "p99 ms", "efficiency", "$/hour", "$/1000 img"]
        if slo is not None:
            header += [f"best goodput (≤{slo:g}ms)", f"at {load}"]
        header += [f"knee ({load})", "bottleneck", "usable points"]
        if has_engine:
            header += ["of engine ceiling"]
        blocks += [Heading(3, series)]
        blocks += _table(header, _group_rows(groups, report, has_engine, slo is not None))
        base = next((g.efficiency_base_gpus for g in groups if g.efficiency_base_gpus), None)
        if base and base != 1:
            unit = "replica(s)" if on_cpu else "GPU(s)"
            blocks += [Paragraph(f"Efficiency is relative to {base} {unit}: no usable peak at 1 in this series.")]
        if on_cpu:
            blocks += [
                Paragraph(
                    "Ran on CPU (no GPU in the hardware record): sizes are replicas"
                    + (
                        ""
                        if report.parameters.get("cpu_hour_cost_usd")
                        else "; no cost without --cpu-hour-cost, GPU prices never apply"
                    )
                    + "."
                )
            ]
    return blocks


def _latency(report: Report) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Latency at each load")]
    has_slo = report.parameters.get("slo_p99_ms") is not None
    for series in report.series:
        load = _load_name(report, series)
        for g in report.groups_of(series):
            blocks += [Heading(3, f"{series}, {size_label(g.hardware, g.units)}")]
            rows = []
            for r in report.points_of(series, g.units):
                status = r.status if r.usable else f"**{r.status}** (not used)"
                if r.flags and r.usable:
                    status += " (" + "; ".join(r.flags) + ")"
                goodput = [_goodput(r.goodput_images_per_s, r.goodput_method)] if has_slo else []
                rows.append(
                    [
                        format_load(r.load),
                        _num(r.images_per_s),
                        *goodput,
                        _num(r.requests_per_s),
                        _num(r.latency_mean_ms),
                        _num(r.latency_p50_ms),
                        _num(r.latency_p90_ms),
                        _num(r.latency_p95_ms),
                        _num(r.latency_p99_ms),
                        _num(r.latency_p999_ms),
                        _num(r.latency_max_ms),
                        _num(r.mean_batch_images),
                        _num(r.gpu_util_mean_pct, 0),
                        status,
                    ]
                )
            header = [
                load,
                "img/s",
                *(["goodput img/s"] if has_slo else []),
                "req/s",
                "mean ms",
                "p50",
                "p90",
                "p95",
                "p99",
                "p99.9",
                "max",
                "batch",
                "GPU %",
                "status",
            ]
            blocks += _table(header, rows)
    return blocks


HOST_CPU = (
    "CPU-seconds (user + system, every thread) over the same windows as each point's throughput, per 1000 "
    "images. Server: the processes named under *counts*: every replica process of a rayscale app and the "
    "HAProxy ingress on every node, or Triton's process tree (the server and its backend stubs) when it ran "
    "on the load generator's machine. Client: the load generator's actors. Cores per GPU: the server's "
    "CPU-seconds per second ÷ GPUs, the host cores each GPU needs at that rate."
)


def _host_cpu(report: Report) -> list[Block]:
    """Per series and size, each point's CPU per 1000 images and the server's cores per GPU; nothing
    when no point measured host CPU."""
    if not any(r.server_cpu_s_per_1000_images is not None or r.client_cpu_s_per_1000_images is not None for r in report.points):
        return []
    blocks: list[Block] = [Heading(2, "Host CPU per image"), Paragraph(HOST_CPU)]
    for series in report.series:
        load = _load_name(report, series)
        for g in report.groups_of(series):
            points = report.points_of(series, g.units)
            if all(r.server_cpu_parts is None and r.client_cpu_s_per_1000_images is None for r in points):
                continue
            rows = [
                [
                    format_load(r.load),
                    _num(r.images_per_s),
                    _cpu_s(r.server_cpu_s_per_1000_images),
                    r.server_cpu_parts or "not measured",
                    _cpu_s(r.client_cpu_s_per_1000_images),
                    _num(r.server_cores, 2),
                    _num(r.server_cores_per_gpu, 2),
                    r.status if r.usable else f"**{r.status}** (not used)",
                ]
                for r in points
            ]
            blocks += [Heading(3, f"{series}, {size_label(g.hardware, g.units)}")]
            blocks += _table(
                [
                    load,
                    "img/s",
                    "server CPU-s/1000 img",
                    "counts",
                    "client CPU-s/1000 img",
                    "server cores",
                    "server cores/GPU",
                    "status",
                ],
                rows,
            )
    if any(
        r.ingress is not None and r.server_cpu_parts is not None and "ingress" not in r.server_cpu_parts for r in report.points
    ):
        blocks.append(
            Paragraph(
                "Rows whose counts name no ingress leave out the processes in front of the replicas "
                "(HAProxy, or Serve's HTTP proxy), whose CPU was not measured: their server figures "
                "are lower bounds."
            )
        )
    return blocks


LIKE_FOR_LIKE = (
    "Leaders and ratios compare only configurations with the same transport (http, grpc or a "
    "DeploymentHandle call) and the same images per request, on the same hardware and GPU count: a "
    "handle call skips HTTP and larger requests spread per-request costs over more images, so a ratio "
    "across them would measure the setup, not the server. Other rows are shown, never ranked."
)


def _comparison(report: Report) -> list[Block]:
    """One row per configuration, grouped by like-for-like class; only a class of two or more has a leader."""
    if len(report.series) < 2:
        return []
    slo = report.parameters.get("slo_p99_ms")
    blocks: list[Block] = [Heading(2, "Side by side"), Paragraph(LIKE_FOR_LIKE)]
    header = ["size", "transport, img/request", "configuration", "peak img/s", "p99 ms at peak"]
    if slo is not None:
        header += [f"best goodput (≤{slo:g}ms)"]
    header += ["ranking"]
    rows = []
    for c in report.comparisons:
        for series, peak in sorted(c.peak_images_per_s.items(), key=lambda kv: kv[1], reverse=True):
            row = [size_label(c.hardware, c.units), c.like_for_like, series, _num(peak), _num(c.peak_latency_p99_ms.get(series))]
            if slo is not None:
                row += [_goodput(c.goodput_images_per_s.get(series), c.goodput_method.get(series))]
            if c.leader is None:
                ranking = "no like-for-like partner"
            elif series == c.leader:
                ranking = f"**leader**, ×{c.lead_ratio:.2f} over {c.runner_up}"
            else:
                ranking = f"×{c.peak_images_per_s[c.leader] / c.peak_images_per_s[series]:.2f} behind the leader"
            rows.append(row + [ranking])
    return blocks + _table(header, rows)


def _bottlenecks(report: Report) -> list[Block]:
    items = [
        f"**{g.series}, {size_label(g.hardware, g.units)}** — {g.bottleneck.cause}: {g.bottleneck.detail}."
        for g in report.groups
        if g.bottleneck
    ]
    return [Heading(2, "Bottlenecks at peak"), BulletList(items)] if items else []


def _flags(report: Report) -> list[Block]:
    blocks: list[Block] = []
    if report.mismatches:
        blocks += [
            Heading(2, "Not like for like"),
            Paragraph(
                "These results differ in settings that affect the numbers; "
                "they are compared only because `--allow-mismatch` was given."
            ),
            BulletList([m.describe() for m in report.mismatches]),
        ]
    if report.notes:
        blocks += [Heading(2, "Flagged points and notes"), BulletList(list(report.notes))]
    return blocks


def _goodput_definition(p: dict[str, Any]) -> str:
    """How this report's goodput figures were computed: from histograms, p99 estimates (marked ≈), or both."""
    method = p.get("goodput_method")
    text = f"**Goodput**: images/s from requests that took at most {p['slo_p99_ms']:g} ms (the SLO)."
    if method in (GOODPUT_HISTOGRAM, GOODPUT_MIXED):
        text += (
            " Where a point kept a latency histogram: its throughput × the share of its requests in "
            f"buckets within the SLO (buckets {p['goodput_bucket_width_pct']:.1f}% wide; a bucket straddling the "
            "SLO counts as missing it, so the figure is exact at a bucket edge and never overstated)."
        )
    if method in (GOODPUT_P99_ESTIMATE, GOODPUT_MIXED, None):
        text += (
            " Figures marked ≈ are estimated from results that keep percentiles only (perf_analyzer imports, "
            "older files): a point's throughput when its p99 meets the SLO (at least 99% of its requests did), "
            "0 when it does not."
        )
    return text


def _definitions(report: Report) -> list[Block]:
    p: dict[str, Any] = report.parameters
    price = "no GPU prices given"
    if p.get("costs_usd_per_hour"):
        price = "prices per GPU count: " + ", ".join(f"{k} GPU(s) ${v:g}/h" for k, v in p["costs_usd_per_hour"].items())
    elif p.get("gpu_hour_cost_usd"):
        price = f"${p['gpu_hour_cost_usd']:g} per GPU-hour"
    cpu_price = (
        f"${p['cpu_hour_cost_usd']:g} per CPU replica-hour" if p.get("cpu_hour_cost_usd") else "no cost without --cpu-hour-cost"
    )
    items = [
        "**Usable point**: status `ok`, stable measurement windows, images served. Unstable, incomplete and "
        "failed points are shown but never used as peaks or picks.",
        "**Peak throughput**: the highest images/s among a configuration's usable points.",
        "**Scaling efficiency** at N GPUs: peak(N) ÷ (N × peak(1)); 100% is linear scaling. Without a 1-GPU "
        "peak, per-GPU peak is compared with the smallest GPU count measured.",
        f"**Cost per 1000 images**: hourly cost of N GPUs ÷ (3600 × images/s) × 1000, at peak ({price}).",
        "**CPU runs**: a point whose server record says CPU (no GPU per replica, the CPU provider, Triton "
        "instances of kind CPU), or whose hardware record shows no GPU, is labelled CPU and sized by replicas; "
        f"it is never priced at a GPU price ({cpu_price}).",
        f"**Like for like**: {LIKE_FOR_LIKE}",
        f"**Host CPU**: {HOST_CPU}",
    ]
    if p.get("slo_p99_ms") is not None:
        items.append(_goodput_definition(p))
    items += [
        f"**Knee**: walking usable points in order of load, the first step where p99 grows by more than "
        f"{p['knee_factor']:g} × the relative throughput growth and by at least {p['knee_min_p99_growth']:.0%}; "
        "the knee is the load before that step. Past it, extra load buys latency, not throughput.",
        "**Best under the SLO**: the usable point with the highest images/s whose p99 ≤ the SLO.",
        "**Cheapest meeting the target**: among configurations whose throughput (under the SLO when one is "
        "given, else at peak) reaches the target, the lowest hourly cost (fewest GPUs without prices).",
        f"**Bottleneck** at a configuration's peak, first rule that fires: client CPU saturated "
        f"(≥ {CLIENT_SATURATED_PCT:.0f}% of a core, or flagged by the load generator) → *client*; busiest GPUs "
        f"≥ {GPU_BUSY_PCT:.0f}% utilised → *gpu*; server queue ≥ {QUEUE_DOMINANT_SHARE:.0%} of server time → "
        f"*queueing* (batching or replicas); GPUs < {GPU_IDLE_PCT:.0f}% utilised with little queueing → "
        "*serving-path* (proxy, decode, serialisation); otherwise *undetermined*.",
        "**Engine ceiling**: N × the engine's images/s (onnxruntime, input already on the GPU; input from host "
        "memory for an engine file without that row) at the largest measured batch size not above the server's "
        "max batch size.",
    ]
    return [Heading(2, "Definitions"), BulletList(items)]


def peaks_table(report: Report) -> Table:
    """Each configuration's peak at each size, in one table: what `rayscale report` prints."""
    slo = report.parameters.get("slo_p99_ms")
    header = ["configuration", "size", "peak img/s", "at load", "p50 ms", "p99 ms", "efficiency", "$/1000 img"]
    if slo is not None:
        header.append(f"best goodput (≤{slo:g}ms)")
    table = Table(header, title="peak of each configuration")
    for series in report.series:
        for g in report.groups_of(series):
            row = [
                series,
                size_label(g.hardware, g.units),
                _num(g.peak_images_per_s),
                format_load(g.peak_load),
                _num(g.peak_latency_p50_ms),
                _num(g.peak_latency_p99_ms),
                _pct(g.efficiency),
                _usd(g.cost_per_1000_images_usd),
            ]
            if slo is not None:
                row.append(_goodput(g.goodput_images_per_s, g.goodput_method))
            table.add_row(*row)
    return table


def _plots(plots: list[str]) -> list[Block]:
    if not plots:
        return []
    return [Heading(2, "Plots"), *(Figure(name, name.removesuffix(".png").replace("_", " ").capitalize()) for name in plots)]


def report_document(report: Report, plots: list[str], title: str = "rayscale report") -> Document:
    """Every section in reading order; ``plots`` are PNG file names relative to the report."""
    intro = Paragraph(f"From {len(report.sources)} results file(s): " + ", ".join(f"`{s}`" for s in report.sources) + ".")
    blocks: list[Block] = [intro]
    blocks += _summary(report)
    blocks += [Heading(3, "Peak of each configuration"), peaks_table(report)]
    blocks += _flags(report)
    blocks += _scaling(report)
    blocks += _comparison(report)
    blocks += tune_section_blocks(report)
    blocks += _latency(report)
    blocks += _host_cpu(report)
    blocks += _bottlenecks(report)
    blocks += _plots(plots)
    blocks += _setup(report)
    blocks += _definitions(report)
    return Document(title, blocks)


def render_markdown(report: Report, plots: list[str], title: str = "rayscale report") -> str:
    """The whole report.md; ``plots`` are PNG file names relative to the report."""
    return to_markdown(report_document(report, plots, title))

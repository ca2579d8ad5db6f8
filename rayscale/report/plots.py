"""The report's PNG plots (matplotlib, Agg backend: no display needed).

Each function draws one figure from a ``Report`` and saves it atomically; ``write_plots`` draws
them all and returns the paths written. Points that are not usable are drawn as red crosses so a
reader sees them, but lines join usable points only.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

from rayscale.errors import ConfigError
from rayscale.files import replacing
from rayscale.report.types import GroupSummary, Report

__all__ = [
    "plot_cost",
    "plot_latency_vs_throughput",
    "plot_scaling",
    "plot_targets_side_by_side",
    "plot_throughput_vs_load",
    "write_plots",
]

_LOAD_LABEL = {"concurrency": "concurrency (requests in flight)", "rate_rps": "offered rate (requests/s)"}


def _legend(ax, **kwargs) -> None:
    """A legend where the axes has labelled lines (a plot of only unlabelled ones gets none, and no warning)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _title(text: str) -> str:
    """A panel title wrapped to its panel's width: series labels are long, and side-by-side titles must not overlap."""
    return "\n".join(textwrap.wrap(text, 56))


def _figure_legend(fig, ax, **kwargs) -> None:
    """One legend for the whole figure, below its panels, from the labelled lines of ``ax``."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", fontsize="small", frameon=False, **kwargs)


def _size(group: GroupSummary) -> str:
    """'2 GPUs', or 'CPU ×2' for a series that ran without GPUs (sized by replicas)."""
    if group.hardware == "CPU":
        return f"CPU ×{group.units}"
    return f"{group.units} GPU{'s' if group.units > 1 else ''}"


def _size_axis(report: Report) -> str:
    return "GPUs (replicas on CPU)" if any(g.hardware == "CPU" for g in report.groups) else "GPUs"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'rayscale[report]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return path


def _panels(plt, count: int, width_in: float = 6.0, height_in: float = 4.2):
    cols = min(count, 2)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width_in * cols, height_in * rows), squeeze=False, layout="constrained")
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def plot_throughput_vs_load(report: Report, path: Path) -> Path:
    """Images/s against concurrency (or offered rate), one panel per series, one line per GPU count."""
    plt = _pyplot()
    fig, axes = _panels(plt, len(report.series))
    for ax, series in zip(axes, report.series, strict=True):
        for group in report.groups_of(series):
            rows = [r for r in report.points_of(series, group.units) if r.load is not None]
            usable = [r for r in rows if r.usable]
            line = ax.plot([r.load for r in usable], [r.images_per_s for r in usable], marker="o", label=_size(group))[0]
            bad = [r for r in rows if not r.usable]
            if bad:
                ax.scatter([r.load for r in bad], [r.images_per_s for r in bad], marker="x", color="red", zorder=3)
            if group.knee is not None:
                knee_ips = next((r.images_per_s for r in usable if r.load == group.knee.load), None)
                if knee_ips is not None:
                    ax.scatter(
                        [group.knee.load],
                        [knee_ips],
                        s=140,
                        facecolors="none",
                        edgecolors=line.get_color(),
                        linewidths=1.5,
                        zorder=4,
                    )
        ax.set_xscale("log", base=2)
        ax.set_xlabel(_LOAD_LABEL[report.load_axis[series]])
        ax.set_ylabel("throughput (images/s)")
        ax.set_title(_title(f"{series}: throughput (circle: knee, x: unusable)"), fontsize="medium")
        ax.grid(True, alpha=0.3)
        _legend(ax, fontsize="small")
    return _save(fig, path)


def plot_latency_vs_throughput(report: Report, path: Path) -> Path:
    """p50 (dashed) and p99 (solid) latency against throughput, one panel per series."""
    plt = _pyplot()
    fig, axes = _panels(plt, len(report.series))
    slo = report.parameters.get("slo_p99_ms")
    for ax, series in zip(axes, report.series, strict=True):
        for group in report.groups_of(series):
            usable = [r for r in report.points_of(series, group.units) if r.usable]
            usable.sort(key=lambda r: r.images_per_s)
            xs = [r.images_per_s for r in usable]
            line = ax.plot(xs, [r.latency_p99_ms for r in usable], marker="o", label=f"p99, {_size(group)}")[0]
            ax.plot(
                xs,
                [r.latency_p50_ms for r in usable],
                marker=".",
                linestyle="--",
                color=line.get_color(),
                label=f"p50, {_size(group)}",
            )
        if slo:
            ax.axhline(slo, color="black", linestyle=":", label=f"SLO p99 {slo:g} ms")
        ax.set_yscale("log")
        ax.set_xlabel("throughput (images/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_title(_title(f"{series}: latency vs throughput"), fontsize="medium")
        ax.grid(True, alpha=0.3, which="both")
        _legend(ax, fontsize="x-small")
    return _save(fig, path)


def plot_scaling(report: Report, path: Path) -> Path:
    """Peak throughput and scaling efficiency against GPU count, each with its ideal line."""
    plt = _pyplot()
    fig, (ax_thr, ax_eff) = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
    all_gpus = sorted({g.units for g in report.groups})
    for series in report.series:
        peaked = [(g.peak_images_per_s, g) for g in report.groups_of(series) if g.peak_images_per_s]
        if not peaked:
            continue
        groups = [g for _, g in peaked]
        gpus = [g.units for g in groups]
        line = ax_thr.plot(gpus, [peak for peak, _ in peaked], marker="o", label=series)[0]
        base_peak, base = peaked[0]
        ideal_x = [n for n in all_gpus if n >= base.units]
        ax_thr.plot(ideal_x, [base_peak / base.units * n for n in ideal_x], linestyle=":", color=line.get_color())
        ax_eff.plot(gpus, [100.0 * (g.efficiency or 0.0) for g in groups], marker="o", label=series)
    ax_eff.axhline(100.0, color="black", linestyle=":")
    for ax in (ax_thr, ax_eff):
        ax.set_xlabel(_size_axis(report))
        ax.set_xticks(all_gpus)
        ax.grid(True, alpha=0.3)
    _figure_legend(fig, ax_eff, ncols=min(2, max(1, len(report.series))))
    ax_thr.set_ylabel("peak throughput (images/s)")
    ax_thr.set_title("peak throughput vs GPUs (dotted: linear from the smallest)")
    ax_eff.set_ylabel("scaling efficiency (%)")
    ax_eff.set_ylim(bottom=0)
    ax_eff.set_title("scaling efficiency: peak(N) / (N × peak(1)) (dotted: 100%)")
    return _save(fig, path)


def _bar_label(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _grouped_bars(ax, report: Report, value, ylabel: str, title: str) -> None:
    gpus = sorted({g.units for g in report.groups})
    width = 0.8 / max(1, len(report.series))
    tallest = 0.0
    for i, series in enumerate(report.series):
        by_gpus = {g.units: value(g) for g in report.groups_of(series)}
        xs = [j + (i - (len(report.series) - 1) / 2) * width for j in range(len(gpus))]
        heights = [by_gpus.get(n) or 0.0 for n in gpus]
        bars = ax.bar(xs, heights, width=width, label=series)
        for bar, h in zip(bars, heights, strict=True):
            if h:
                ax.annotate(_bar_label(h), (bar.get_x() + bar.get_width() / 2, h), ha="center", va="bottom", fontsize="x-small")
        tallest = max([tallest, *heights])
    if tallest > 0:
        ax.set_ylim(0, tallest * 1.12)  # room for the labels above the bars
    ax.set_xticks(range(len(gpus)))
    ax.set_xticklabels([str(n) for n in gpus])
    ax.set_xlabel(_size_axis(report))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)


def plot_targets_side_by_side(report: Report, path: Path) -> Path:
    """Each series' peak throughput and its p99 at peak, bars side by side per GPU count."""
    plt = _pyplot()
    slo = report.parameters.get("slo_p99_ms")
    panels = 3 if slo else 2
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), layout="constrained")
    _grouped_bars(axes[0], report, lambda g: g.peak_images_per_s, "images/s", "peak throughput")
    _grouped_bars(axes[1], report, lambda g: g.peak_latency_p99_ms, "ms", "p99 latency at peak")
    if slo:
        _grouped_bars(axes[2], report, lambda g: g.goodput_images_per_s, "images/s",
                      f"best goodput, requests ≤ {slo:g} ms")  # fmt: skip
    _figure_legend(fig, axes[0], ncols=min(3, max(1, len(report.series))))
    return _save(fig, path)


def plot_cost(report: Report, path: Path) -> Path:
    """Dollars per 1000 images at peak throughput, per series and GPU count."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.6), layout="constrained")
    _grouped_bars(ax, report, lambda g: g.cost_per_1000_images_usd, "$ per 1000 images", "cost per 1000 images at peak")
    _figure_legend(fig, ax, ncols=min(2, max(1, len(report.series))))
    return _save(fig, path)


def write_plots(report: Report, out_dir: str | os.PathLike) -> list[Path]:
    """Draw every plot the report's data supports into ``out_dir``; return the files written."""
    out = Path(out_dir)
    written = [
        plot_throughput_vs_load(report, out / "throughput_vs_load.png"),
        plot_latency_vs_throughput(report, out / "latency_vs_throughput.png"),
        plot_scaling(report, out / "scaling_efficiency.png"),
        plot_targets_side_by_side(report, out / "targets_side_by_side.png"),
    ]
    if any(g.cost_per_1000_images_usd for g in report.groups):
        written.append(plot_cost(report, out / "cost_per_1000_images.png"))
    return written

"""The report's "Best of each under the SLO" section: the winners of `rayscale tune` side by side.

It appears when the directories of the report's results files hold tune.json files for both
rayscale and Triton at the same GPU count, images per request and SLO. Cost per 1000 images
uses the report's prices (``--costs`` or ``--gpu-hour-cost``); a search whose candidates ran
without GPUs is labelled CPU and priced only at ``--cpu-hour-cost``, as the rest of the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rayscale.errors import ResultsError
from rayscale.report.costs import cost_per_1000_images_usd
from rayscale.report.document import Block, Heading, Paragraph, Table
from rayscale.report.types import Report
from rayscale.tune.results import TUNE_FILE, TuneResult, load_tune_result

__all__ = ["FoundTune", "find_tune_results", "tune_pairs", "tune_section_blocks"]


@dataclass(frozen=True)
class FoundTune:
    directory: Path  # the tune directory: tune.json and one results file per candidate
    result: TuneResult


def find_tune_results(sources: list[str]) -> list[FoundTune]:
    """tune.json beside each results file (a tune directory holds both), each read once."""
    found: list[FoundTune] = []
    seen: set[Path] = set()
    for source in sources:
        for directory in (Path(source).parent, Path(source).parent.parent):
            path = (directory / TUNE_FILE).resolve()
            if path in seen or not path.is_file():
                continue
            seen.add(path)
            try:
                found.append(FoundTune(path.parent, load_tune_result(path)))
            except ResultsError:
                continue
    return found


def tune_pairs(found: list[FoundTune]) -> list[tuple[FoundTune, FoundTune]]:
    """(rayscale, triton) winners searched under the same GPU count, images per request and SLO."""
    def key(f: FoundTune) -> tuple:
        return (f.result.gpus, f.result.images_per_request, f.result.slo_p99_ms)

    rayscale = {key(f): f for f in found if f.result.target == "rayscale" and f.result.best is not None}
    triton = {key(f): f for f in found if f.result.target == "triton" and f.result.best is not None}
    return [(rayscale[k], triton[k]) for k in sorted(rayscale.keys() & triton.keys())]


def _hardware(report: Report, found: FoundTune) -> str:
    """CPU when every point the report read from the search's directory ran without GPUs."""
    rows = [r for r in report.points if Path(r.source).resolve().is_relative_to(found.directory)]
    return "CPU" if rows and all(r.hardware == "CPU" for r in rows) else "GPU"


def _hourly_cost(report: Report, hardware: str, gpus: int) -> float | None:
    if hardware == "CPU":
        per_replica = report.parameters.get("cpu_hour_cost_usd")
        return per_replica * gpus if per_replica else None
    costs = report.parameters.get("costs_usd_per_hour") or {}
    if costs:
        return costs.get(str(gpus))
    per_gpu = report.parameters.get("gpu_hour_cost_usd")
    return per_gpu * gpus if per_gpu else None


def _cost(report: Report, found: FoundTune) -> str:
    result = found.result
    hourly = _hourly_cost(report, _hardware(report, found), result.gpus)
    value = cost_per_1000_images_usd(hourly, result.best.goodput_images_per_s)
    return "–" if value is None else f"${value:#.3g}"


def _spread(result: TuneResult) -> str:
    spread = next((s for s in result.repeats if s.label == result.best.label and s.images_per_s), None)
    if spread is None:
        return "one run"
    return (f"{spread.images_per_s_min:,.0f} / {spread.images_per_s_median:,.0f} / {spread.images_per_s_max:,.0f} "
            f"({len(spread.images_per_s)} runs)")


def tune_section_blocks(report: Report) -> list[Block]:
    """The section's blocks, or none when no pair of tune results is there."""
    pairs = tune_pairs(find_tune_results(report.sources))
    if not pairs:
        return []
    blocks: list[Block] = [Heading(2, "Best of each under the SLO")]
    for ray_found, triton_found in pairs:
        ray_result, triton_result = ray_found.result, triton_found.result
        a, b = ray_result.best, triton_result.best
        hardware = {_hardware(report, ray_found), _hardware(report, triton_found)}
        size = f"{ray_result.gpus} GPU(s)" if hardware == {"GPU"} else f"the CPU ({ray_result.gpus} replica(s))"
        blocks.append(Paragraph(
            f"Found by `rayscale tune` on {size} at {ray_result.images_per_request} images/request, "
            f"p99 ≤ {ray_result.slo_p99_ms:g} ms (the best images/s of any point within the SLO)."
        ))
        blocks.append(Table(["", "rayscale", "triton"], [
            ["settings", a.label, b.label],
            ["images/s", f"{a.goodput_images_per_s:,.1f}", f"{b.goodput_images_per_s:,.1f}"],
            ["p99 ms", f"{a.goodput_p99_ms:.1f}", f"{b.goodput_p99_ms:.1f}"],
            ["concurrency", str(a.goodput_concurrency), str(b.goodput_concurrency)],
            ["cost per 1000 images", _cost(report, ray_found), _cost(report, triton_found)],
            ["repeats min / median / max img/s", _spread(ray_result), _spread(triton_result)],
            ["candidates measured, search minutes", f"{len(ray_result.candidates)}, {ray_result.budget_used_s / 60:.1f}",
             f"{len(triton_result.candidates)}, {triton_result.budget_used_s / 60:.1f}"],
            ["reproduce", f"`{a.reproduce}`", f"`{b.reproduce}`"],
        ]))
        leader, other = (a, b) if a.goodput_images_per_s >= b.goodput_images_per_s else (b, a)
        blocks.append(Paragraph(f"{leader.target} leads by {leader.goodput_images_per_s / other.goodput_images_per_s:.2f}× "
                                "under the SLO." + ("" if _cost(report, ray_found) != "–" else _price_hint(hardware))))
    return blocks


def _price_hint(hardware: set[str]) -> str:
    if "CPU" in hardware:
        return " Runs without GPUs are priced only with --cpu-hour-cost."
    return " Pass --gpu-hour-cost or --costs for cost per 1000 images."

"""The report's "Best of each under the SLO" section: the winners of `rayscale tune` side by side.

It appears when the directories of the report's results files hold tune.json files for both
rayscale and Triton at the same GPU count, images per request, SLO and loop. Cost per 1000 images
(at the median goodput of the winner's repeats, where it was repeated) uses the report's prices (``--costs`` or ``--gpu-hour-cost``); a search whose candidates ran
without GPUs is labelled CPU and priced only at ``--cpu-hour-cost``, as the rest of the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rayscale.errors import ResultsError
from rayscale.report.costs import cost_per_1000_images_usd
from rayscale.report.document import Block, Heading, Paragraph, Table
from rayscale.report.types import Report
from rayscale.tune.results import TUNE_FILE, CandidateSummary, Spread, TuneResult, format_load, load_tune_result

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
        return (f.result.gpus, f.result.images_per_request, f.result.slo_p99_ms, f.result.closed_loop)

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
    """At the median goodput of the winner's repeats (standard windows) where it was repeated."""
    result = found.result
    hourly = _hourly_cost(report, _hardware(report, found), result.gpus)
    spread = _winner_spread(result)
    goodput = spread.goodput_median if spread is not None else _winner(result).at_slo().goodput_images_per_s
    value = cost_per_1000_images_usd(hourly, goodput)
    return "–" if value is None else f"${value:#.3g}"


def _winner_spread(result: TuneResult) -> Spread | None:
    label = _winner(result).label
    return next((s for s in result.repeats if s.label == label and s.goodput_images_per_s), None)


def _spread(result: TuneResult) -> str:
    spread = _winner_spread(result)
    if spread is None:
        return "one run"
    runs = len(spread.goodput_images_per_s)
    return (
        f"{spread.goodput_min:,.0f} / {spread.goodput_median:,.0f} / {spread.goodput_max:,.0f} "
        f"({runs} runs, spread {spread.spread_pct:.1f} %, p99 within the SLO in {sum(spread.met_slo)} of {runs})"
    )


def tune_section_blocks(report: Report) -> list[Block]:
    """The section's blocks, or none when no pair of tune results is there."""
    pairs = tune_pairs(find_tune_results(report.sources))
    if not pairs:
        return []
    blocks: list[Block] = [Heading(2, "Best of each under the SLO")]
    for ray_found, triton_found in pairs:
        ray_result, triton_result = ray_found.result, triton_found.result
        a, b = _winner(ray_result), _winner(triton_result)
        at_a, at_b = a.at_slo(), b.at_slo()
        hardware = {_hardware(report, ray_found), _hardware(report, triton_found)}
        size = f"{ray_result.gpus} GPU(s)" if hardware == {"GPU"} else f"the CPU ({ray_result.gpus} replica(s))"
        blocks.append(
            Paragraph(
                f"Found by `rayscale tune` on {size} at {ray_result.images_per_request} images/request, "
                f"p99 ≤ {ray_result.slo_p99_ms:g} ms: each candidate at the highest load that met the SLO, its goodput "
                "(images/s of the requests within the SLO)."
            )
        )
        blocks.append(
            Table(
                ["", "rayscale", "triton"],
                [
                    ["settings", a.label, b.label],
                    ["goodput, images/s", f"{at_a.goodput_images_per_s:,.1f}", f"{at_b.goodput_images_per_s:,.1f}"],
                    ["at", format_load(at_a.load, a.closed_loop), format_load(at_b.load, b.closed_loop)],
                    ["p99 ms", f"{at_a.p99_ms:.1f}", f"{at_b.p99_ms:.1f}"],
                    ["repeats: goodput min / median / max", _spread(ray_result), _spread(triton_result)],
                    ["cost per 1000 images (at the repeats' median)", _cost(report, ray_found), _cost(report, triton_found)],
                    [
                        "candidates measured, search minutes",
                        f"{len(ray_result.candidates)}, {ray_result.total_used_s / 60:.1f}",
                        f"{len(triton_result.candidates)}, {triton_result.total_used_s / 60:.1f}",
                    ],
                    [
                        "reproduce",
                        f"`{a.reproduce} && {ray_result.bench_command}`",
                        f"`{b.reproduce} && {triton_result.bench_command}`",
                    ],
                ],
            )
        )
        blocks.append(
            Paragraph(_lead(ray_result, triton_result) + ("" if _cost(report, ray_found) != "–" else _price_hint(hardware)))
        )
    return blocks


def _winner(result: TuneResult) -> CandidateSummary:
    if result.best is None:  # tune_pairs pairs only searches with a winner
        raise ResultsError(f"the {result.target} search has no candidate that met the SLO")
    return result.best


def _lead(*results: TuneResult) -> str:
    """Who serves more under the SLO, and whether the repeats of both winners tell them apart."""
    (lead, lead_result), (other, other_result) = sorted(
        ((_winner(r).at_slo(), r) for r in results), key=lambda pair: pair[0].goodput_images_per_s, reverse=True
    )
    text = f"{lead_result.target} leads by {lead.goodput_images_per_s / other.goodput_images_per_s:.2f}× under the SLO."
    lead_spread, other_spread = _winner_spread(lead_result), _winner_spread(other_result)
    if lead_spread is not None and other_spread is not None and lead_spread.goodput_min <= other_spread.goodput_max:
        text += " Their repeats overlap: the two are equal within noise."
    return text


def _price_hint(hardware: set[str]) -> str:
    if "CPU" in hardware:
        return " Runs without GPUs are priced only with --cpu-hour-cost."
    return " Pass --gpu-hour-cost or --costs for cost per 1000 images."

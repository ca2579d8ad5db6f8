"""Configurations chosen by a rule, each a ``Pick`` that says why.

* **Best under the SLO**: the usable point with the highest images/s whose p99 ≤ the SLO.
* **Cheapest meeting the throughput target**: among groups whose capacity (the best images/s
  under the SLO when one is given, else the peak) reaches the target, the lowest hourly cost;
  without prices, the fewest GPUs. Ties go to the higher capacity.
"""

from __future__ import annotations

from rayscale.report.costs import cost_per_1000_images_usd
from rayscale.report.types import GroupSummary, Pick, PointRow

__all__ = ["pick_best_under_slo", "pick_cheapest"]


def pick_best_under_slo(rows: list[PointRow], slo_p99_ms: float) -> Pick | None:
    """The usable row with the highest images/s whose p99 meets the SLO (fewer GPUs on a tie); None if none does."""
    meeting = [r for r in rows if r.usable and r.latency_p99_ms is not None and r.latency_p99_ms <= slo_p99_ms]
    if not meeting:
        return None
    best = max(meeting, key=lambda r: (r.images_per_s, -r.gpus))
    return Pick(
        series=best.series,
        target=best.target,
        gpus=best.gpus,
        load=best.load,
        images_per_s=best.images_per_s,
        latency_p99_ms=best.latency_p99_ms,
        hourly_cost_usd=best.hourly_cost_usd,
        cost_per_1000_images_usd=best.cost_per_1000_images_usd,
        reason=f"highest throughput with p99 ≤ {slo_p99_ms:g} ms",
        hardware=best.hardware,
        units=best.units,
    )


def pick_cheapest(groups: list[GroupSummary], target_ips: float, slo_p99_ms: float | None) -> Pick | None:
    """The cheapest group whose capacity reaches ``target_ips`` (under the SLO when one is given); None if none does."""

    def capacity(g: GroupSummary) -> tuple[float | None, float | None, float | None]:
        if slo_p99_ms is not None:
            return g.slo_images_per_s, g.slo_load, g.slo_latency_p99_ms
        return g.peak_images_per_s, g.peak_load, g.peak_latency_p99_ms

    # (capacity, group) for each group that reaches the target
    candidates = [(cap, g) for g in groups if (cap := capacity(g)[0]) is not None and cap >= target_ips]
    if not candidates:
        return None
    priced = all(g.hourly_cost_usd is not None for _, g in candidates)
    if priced:
        ips, best = min(candidates, key=lambda c: (c[1].hourly_cost_usd, -c[0]))
        basis = "lowest hourly cost"
    else:
        ips, best = min(candidates, key=lambda c: (c[1].gpus, c[1].units, -c[0]))
        basis = "fewest GPUs (no price for every candidate)"
    _, load, p99 = capacity(best)
    slo_text = f" with p99 ≤ {slo_p99_ms:g} ms" if slo_p99_ms is not None else ""
    return Pick(
        series=best.series,
        target=best.target,
        gpus=best.gpus,
        load=load,
        images_per_s=ips,
        latency_p99_ms=p99,
        hourly_cost_usd=best.hourly_cost_usd,
        cost_per_1000_images_usd=cost_per_1000_images_usd(best.hourly_cost_usd, ips),
        reason=f"{basis} among configurations reaching {target_ips:g} img/s{slo_text}",
        hardware=best.hardware,
        units=best.units,
    )

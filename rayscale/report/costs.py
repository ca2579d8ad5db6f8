"""Prices: the ``--costs`` text, and what a sustained rate costs.

* **Cost per 1000 images**: ``hourly cost of N GPUs / (3600 × images/s) × 1000``.
"""

from __future__ import annotations

import math

from rayscale.errors import ConfigError

__all__ = ["cost_per_1000_images_usd", "parse_costs"]

_COSTS_EXAMPLE = "e.g. --costs '1gpu:1.5,2gpu:3.0,4gpu:6.0'"


def parse_costs(text: str) -> dict[int, float]:
    """'1gpu:1.5,2gpu:3' -> {1: 1.5, 2: 3.0}: hourly price in dollars of N GPUs together."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"--costs is empty: give the hourly price of each GPU count, {_COSTS_EXAMPLE}")
    costs: dict[int, float] = {}
    for part in parts:
        count_text, sep, price_text = part.partition(":")
        if not sep:
            raise ConfigError(f"--costs entry {part!r} has no ':': write GPUS:PRICE_PER_HOUR, {_COSTS_EXAMPLE}")
        count_text = count_text.strip().lower()
        for suffix in ("gpus", "gpu"):
            if count_text.endswith(suffix):
                count_text = count_text[: -len(suffix)].strip()
                break
        try:
            gpus = int(count_text)
        except ValueError:
            raise ConfigError(f"--costs entry {part!r}: GPU count must be an integer, {_COSTS_EXAMPLE}") from None
        try:
            price = float(price_text.strip().lstrip("$"))
        except ValueError:
            raise ConfigError(f"--costs entry {part!r}: price must be a number of dollars per hour, {_COSTS_EXAMPLE}") from None
        if gpus < 1:
            raise ConfigError(f"--costs entry {part!r}: GPU count must be ≥ 1, got {gpus}")
        if not math.isfinite(price) or price <= 0:
            raise ConfigError(f"--costs entry {part!r}: price must be > 0 dollars per hour, got {price_text.strip()}")
        if gpus in costs:
            raise ConfigError(f"--costs gives {gpus} GPU(s) twice: keep one price per GPU count")
        costs[gpus] = price
    return costs


def cost_per_1000_images_usd(hourly_cost_usd: float | None, images_per_s: float | None) -> float | None:
    """Dollars per 1000 images at a sustained rate: hourly / (3600 × images/s) × 1000."""
    if hourly_cost_usd is None or not images_per_s or images_per_s <= 0:
        return None
    return hourly_cost_usd / (3600.0 * images_per_s) * 1000.0

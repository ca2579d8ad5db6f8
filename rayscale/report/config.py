"""The report's settings: prices, the latency SLO, the throughput target and the knee rule.

One typed object, built by ``rayscale report`` from its flags (or by a caller in Python) and
passed to ``build_report`` as itself. Every quantity carries its unit in its name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rayscale.errors import ConfigError

__all__ = ["DEFAULT_KNEE_FACTOR", "DEFAULT_KNEE_MIN_P99_GROWTH", "ReportConfig"]

DEFAULT_KNEE_FACTOR = 2.0
DEFAULT_KNEE_MIN_P99_GROWTH = 0.10


def _positive(value: float | None, flag: str, unit: str) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{flag} must be > 0 {unit}, got {value:g}")


@dataclass(frozen=True)
class ReportConfig:
    """What a report needs beyond the results files.

    ``costs_usd_per_hour`` (``--costs``) prices N GPUs together; ``gpu_hour_cost_usd``
    (``--gpu-hour-cost``) prices one GPU-hour; give one or neither. Runs without GPUs are never
    priced at a GPU price: ``cpu_hour_cost_usd`` (``--cpu-hour-cost``) prices one CPU replica for
    an hour. ``slo_p99_ms`` enables goodput and the best-under-SLO pick; ``throughput_target_ips``
    the cheapest configuration reaching it.
    """

    costs_usd_per_hour: dict[int, float] | None = None
    gpu_hour_cost_usd: float | None = None
    cpu_hour_cost_usd: float | None = None
    slo_p99_ms: float | None = None
    throughput_target_ips: float | None = None
    allow_mismatch: bool = False
    knee_factor: float = DEFAULT_KNEE_FACTOR
    knee_min_p99_growth: float = DEFAULT_KNEE_MIN_P99_GROWTH

    def __post_init__(self) -> None:
        if self.costs_usd_per_hour is not None and self.gpu_hour_cost_usd is not None:
            raise ConfigError("give either --costs (a price per GPU count) or --gpu-hour-cost (a price per GPU), not both")
        for gpus, price in (self.costs_usd_per_hour or {}).items():
            if not (isinstance(gpus, int) and gpus >= 1):
                raise ConfigError(f"--costs GPU counts must be integers ≥ 1, got {gpus!r}")
            _positive(price, f"--costs price for {gpus} GPU(s)", "dollars per hour")
        _positive(self.gpu_hour_cost_usd, "--gpu-hour-cost", "dollars per GPU-hour")
        _positive(self.cpu_hour_cost_usd, "--cpu-hour-cost", "dollars per CPU replica-hour")
        _positive(self.slo_p99_ms, "--slo-p99-ms", "milliseconds")
        _positive(self.throughput_target_ips, "--throughput-target", "images/s")
        if not self.knee_factor > 0:
            raise ConfigError(f"knee_factor must be > 0, got {self.knee_factor:g}")
        if not self.knee_min_p99_growth >= 0:
            raise ConfigError(f"knee_min_p99_growth must be ≥ 0, got {self.knee_min_p99_growth:g}")

    def hourly_cost_usd(self, hardware: str, units: int) -> float | None:
        """Dollars per hour of ``units`` GPUs (hardware "GPU") or CPU replicas (hardware "CPU")."""
        if hardware == "CPU":
            return self.cpu_hour_cost_usd * units if self.cpu_hour_cost_usd is not None else None
        if self.costs_usd_per_hour is not None:
            return self.costs_usd_per_hour.get(units)
        if self.gpu_hour_cost_usd is not None:
            return self.gpu_hour_cost_usd * units
        return None

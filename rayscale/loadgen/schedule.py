"""Arrival schedules for open-loop load: when each request is *meant* to be sent.

Latency in open-loop mode is measured from these intended times, not from when the client
managed to send, so a stalled server (or client) shows up in the percentiles instead of being
hidden by the client slowing down (coordinated omission).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from rayscale.errors import ConfigError

__all__ = ["ARRIVALS", "arrival_offsets", "iter_arrivals"]

ARRIVALS = ("constant", "poisson")


def iter_arrivals(rate_rps: float, arrival: str, *, seed: int = 0, chunk: int = 4096) -> Iterator[float]:
    """Offsets in seconds from the start, forever: i/rate (constant) or Poisson arrivals."""
    if rate_rps <= 0:
        raise ConfigError(f"rate must be > 0 requests/s, got {rate_rps:g}")
    if arrival not in ARRIVALS:
        raise ConfigError(f"unknown arrival {arrival!r}: use one of {', '.join(ARRIVALS)}")
    rng = np.random.default_rng(seed)
    t = 0.0
    i = 0
    while True:
        if arrival == "constant":
            offsets = (np.arange(i, i + chunk) / rate_rps).tolist()
            i += chunk
        else:
            gaps = rng.exponential(1.0 / rate_rps, size=chunk)
            offsets = (t + np.cumsum(gaps)).tolist()
            t = offsets[-1]
        yield from offsets


def arrival_offsets(rate_rps: float, duration_s: float, arrival: str, *, seed: int = 0) -> np.ndarray:
    """All intended send offsets in [0, duration_s)."""
    out = []
    for t in iter_arrivals(rate_rps, arrival, seed=seed):
        if t >= duration_s:
            break
        out.append(t)
    return np.asarray(out)

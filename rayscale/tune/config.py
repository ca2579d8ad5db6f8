"""`rayscale tune`'s settings: what to search, under which SLO, with which windows and budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rayscale.config import DEFAULT_MODEL_DIR, check
from rayscale.errors import ConfigError
from rayscale.tune.loads import LoadRule
from rayscale.tune.space import TARGETS, Space, default_space
from rayscale.tune.strategy import STRATEGIES

__all__ = ["POINT_OVERHEAD_S", "PROVIDERS", "TuneConfig"]

PROVIDERS = {"rayscale": ("auto", "cuda", "cpu", "null"), "triton": ("auto", "cuda", "cpu")}
# Seconds a point costs beyond its windows (client actors, their payload, GPU samplers, the file),
# as the budget plans it.
POINT_OVERHEAD_S = 3.0


@dataclass
class TuneConfig:
    target: str
    gpus: int
    slo_p99_ms: float
    out: str
    images_per_request: int = 32
    budget_minutes: float = 20.0  # this run's: a resumed search gets a fresh budget
    strategy: str = "hill"
    space: Space | None = None  # None: the target's default space
    seeds: int = 3  # hill: first-dimension values measured before climbing
    restarts: int = 1  # hill: climbs from the next-best seeds after the first local optimum
    repeats: int = 0  # re-measure the top ``repeat_top`` candidates this many times (0: not at all)
    repeat_top: int = 2
    resume: bool = False
    concurrency_start: int = 8  # closed loop: the first candidate's first load
    concurrency_max: int = 1024
    rate_start_rps: float | None = None  # open loop when given: the first candidate's first rate
    rate_max_rps: float = 1_000_000.0
    arrival: str = "constant"
    resolution: float = 0.25  # a candidate's search ends when its highest pass is within this of its lowest miss
    min_gain: float | None = 0.05  # a doubling that adds less throughput than this ends the climb (None: never)
    runners_up: int = 3
    provider: str = "auto"
    model_dir: str = str(DEFAULT_MODEL_DIR)
    port: int = 0  # 0: 8000 for rayscale, 8100 for Triton
    address: str | None = None  # Ray cluster to deploy into (rayscale) and run the clients in
    cpus_per_replica: float = 1.0
    triton_reload: bool = True  # change Triton's settings by reloading its model, not by a restart
    warmup_s: float = 1.0  # the search's windows: short, a point in a few seconds
    window_s: float = 1.5
    max_windows: int = 3
    stability: float = 0.1
    repeat_warmup_s: float = 3.0  # the repeats' windows: the study's standard ones
    repeat_window_s: float = 2.5
    repeat_max_windows: int = 6
    clients: int = 0
    client_cpus: float = 0.5
    command: str = ""

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"unknown target {self.target!r}: use one of {', '.join(TARGETS)}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        if self.provider not in PROVIDERS[self.target]:
            raise ConfigError(
                f"provider for {self.target} must be one of {', '.join(PROVIDERS[self.target])}, "
                f"got {self.provider!r}" + (" (the null engine is rayscale's alone)" if self.provider == "null" else "")
            )
        checks = [
            (self.gpus >= 1, f"gpus must be ≥ 1, got {self.gpus}"),
            (self.images_per_request >= 1, f"images per request must be ≥ 1, got {self.images_per_request}"),
            (math.isfinite(self.slo_p99_ms) and self.slo_p99_ms > 0, f"slo_p99_ms must be > 0, got {self.slo_p99_ms:g}"),
            (self.budget_minutes > 0, f"budget_minutes must be > 0, got {self.budget_minutes:g}"),
            (self.seeds >= 1, f"seeds must be ≥ 1, got {self.seeds}"),
            (self.restarts >= 0, f"restarts must be ≥ 0, got {self.restarts}"),
            (self.repeats >= 0, f"repeats must be ≥ 0, got {self.repeats}"),
            (self.repeat_top >= 1, f"repeat_top must be ≥ 1, got {self.repeat_top}"),
            (self.concurrency_start >= 1, f"concurrency_start must be ≥ 1, got {self.concurrency_start}"),
            (
                self.concurrency_max >= self.concurrency_start,
                f"concurrency_max ({self.concurrency_max}) must be ≥ concurrency_start ({self.concurrency_start})",
            ),
            (self.rate_start_rps is None or self.rate_start_rps > 0, f"rate_start_rps must be > 0, got {self.rate_start_rps}"),
            (
                self.rate_start_rps is None or self.rate_max_rps >= self.rate_start_rps,
                f"rate_max_rps ({self.rate_max_rps:g}) must be ≥ rate_start_rps ({self.rate_start_rps})",
            ),
            (0 < self.resolution < 1, f"resolution must be in (0, 1), got {self.resolution:g}"),
            (self.min_gain is None or 0 <= self.min_gain < 1, f"min_gain must be in [0, 1), got {self.min_gain}"),
            (0 <= self.port <= 65533, f"port must be in 1..65533 (0: the target's default), got {self.port}"),
        ]
        for ok, message in checks:
            check(ok, message)
        if self.space is None:
            self.space = default_space(self.target)
        if self.space.settings_type.target != self.target:
            raise ConfigError(f"the search space is {self.space.settings_type.target}'s, but the target is {self.target}")
        if not self.port:
            self.port = 8000 if self.target == "rayscale" else 8100
        for repeat in (False, True):  # both kinds of windows checked once, here
            self.bench_config(url="http://127.0.0.1:1", levels=[self.first_load], out="unused", repeat=repeat)

    @property
    def closed_loop(self) -> bool:
        return self.rate_start_rps is None

    @property
    def first_load(self) -> float:
        return float(self.concurrency_start) if self.rate_start_rps is None else float(self.rate_start_rps)

    @property
    def budget_s(self) -> float:
        return self.budget_minutes * 60.0

    def load_rule(self, first: float | None = None) -> LoadRule:
        """The load search of one candidate, from ``first`` (default: the configured start)."""
        maximum = float(self.concurrency_max) if self.closed_loop else self.rate_max_rps
        return LoadRule(
            slo_p99_ms=self.slo_p99_ms,
            closed=self.closed_loop,
            first=first or self.first_load,
            maximum=maximum,
            resolution=self.resolution,
            min_gain=self.min_gain,
        )

    @property
    def drain_s(self) -> float:
        """How long a point waits for its last requests: past 5 × the SLO each is a miss anyway (1..30 s)."""
        return min(30.0, max(1.0, 5 * self.slo_p99_ms / 1000))

    def point_s(self, *, repeat: bool = False) -> float:
        """What one point is planned to cost before one has been timed."""
        if repeat:
            return self.repeat_warmup_s + self.repeat_max_windows * self.repeat_window_s + self.drain_s + POINT_OVERHEAD_S
        return self.warmup_s + self.max_windows * self.window_s + self.drain_s + POINT_OVERHEAD_S

    def bench_config(self, *, url: str, levels: list[float], out: str, target: str = "auto", repeat: bool = False):
        from rayscale.loadgen import BenchConfig

        warmup, window, windows = (
            (self.repeat_warmup_s, self.repeat_window_s, self.repeat_max_windows)
            if repeat
            else (self.warmup_s, self.window_s, self.max_windows)
        )
        loads = (
            {"concurrency": [int(v) for v in levels]}
            if self.closed_loop
            else {"rates_rps": [float(v) for v in levels], "concurrency": None}
        )
        return BenchConfig(
            url=url,
            target=target,
            images_per_request=[self.images_per_request],
            arrival=self.arrival,
            warmup_s=warmup,
            window_s=window,
            duration_s=(windows + 0.5) * window,
            stability=self.stability,
            max_windows=windows,
            clients=self.clients,
            client_cpus=self.client_cpus,
            drain_timeout_s=self.drain_s,
            address=self.address,
            model_dir=self.model_dir,
            out=out,
            resume=True,
            command=self.command or None,
            **loads,
        )

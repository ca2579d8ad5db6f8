"""The load generator: Ray-actor clients, arrival schedules, measurement windows, sweeps."""

from rayscale.loadgen.bench import run_bench
from rayscale.loadgen.config import BenchConfig

__all__ = ["BenchConfig", "run_bench"]

"""The load generator: Ray-actor clients, arrival schedules, measurement windows, sweeps."""

from rayscale.loadgen.runner import BenchConfig, run_bench

__all__ = ["BenchConfig", "run_bench"]

"""`rayscale tune`: the best server configuration under a p99 SLO, for rayscale and for Triton, by one search.

* ``space``: the typed settings of a candidate and the values each dimension may take;
* ``strategy``: the order candidates are measured in (grid, hill);
* ``runner``: starting each candidate server, sweeping concurrency, budget and resume (``run_tune``);
* ``results``: DIR/tune.json (``TuneResult``) and how a candidate's points are judged.
"""

from rayscale.tune.results import CandidateSummary, Spread, TuneResult, load_tune_result
from rayscale.tune.runner import TuneConfig, closest_answer, next_concurrency, run_tune
from rayscale.tune.space import (
    RayscaleSettings,
    RayscaleSpace,
    TritonSettings,
    TritonSpace,
    parse_space_overrides,
    serve_layout,
)

__all__ = [
    "CandidateSummary",
    "RayscaleSettings",
    "RayscaleSpace",
    "Spread",
    "TritonSettings",
    "TritonSpace",
    "TuneConfig",
    "TuneResult",
    "closest_answer",
    "load_tune_result",
    "next_concurrency",
    "parse_space_overrides",
    "run_tune",
    "serve_layout",
]

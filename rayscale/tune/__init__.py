"""`rayscale tune`: the best server configuration under a p99 SLO, for rayscale and for Triton, by one search.

* ``space``: the typed settings of a candidate and the values each dimension may take;
* ``strategy``: the order candidates are measured in (grid; hill: seeds, climbs, restarts);
* ``loads``: per candidate, the highest load (concurrency or rate) that meets the SLO;
* ``servers``: the server each candidate runs on, reconfigured in place, reloaded or restarted;
* ``config``: ``TuneConfig``, the search's settings, windows and budget;
* ``runner``: the search, its budget, repeats and resume (``run_tune``);
* ``results``: DIR/tune.json (``TuneResult``) and its exit statuses.
"""

from rayscale.tune.config import TuneConfig
from rayscale.tune.loads import LoadRule, LoadStep, goodput_images_per_s, meets_slo, next_load
from rayscale.tune.results import (
    EXIT_BUDGET,
    EXIT_NONE_MET,
    EXIT_OK,
    CandidateSummary,
    Spread,
    TuneResult,
    load_tune_result,
)
from rayscale.tune.runner import closest_answer, run_tune
from rayscale.tune.space import (
    RayscaleSettings,
    RayscaleSpace,
    TritonSettings,
    TritonSpace,
    parse_space_overrides,
    serve_layout,
)

__all__ = [
    "EXIT_BUDGET",
    "EXIT_NONE_MET",
    "EXIT_OK",
    "CandidateSummary",
    "LoadRule",
    "LoadStep",
    "RayscaleSettings",
    "RayscaleSpace",
    "Spread",
    "TritonSettings",
    "TritonSpace",
    "TuneConfig",
    "TuneResult",
    "closest_answer",
    "goodput_images_per_s",
    "load_tune_result",
    "meets_slo",
    "next_load",
    "parse_space_overrides",
    "run_tune",
    "serve_layout",
]

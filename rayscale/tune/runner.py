"""`rayscale tune`: start each candidate server, sweep concurrency against it, keep the best under the SLO.

The search is nested context managers, as a sweep should be::

    while the strategy proposes a candidate and the budget lasts:
        with candidate_server(settings):            # `rayscale up` / `rayscale triton up`
            while the concurrency rule asks for more:
                run_bench(one more concurrency)     # the same load generator and windows as `bench`

Every candidate writes one bench results file in the tune directory (``rayscale report`` reads
them); a candidate whose file already satisfies the concurrency rule is not started again, so
``resume`` replays the search from disk and measures only what is missing.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from rayscale.config import DEFAULT_MODEL_DIR, LOCAL_HOST, check
from rayscale.environment import now_iso
from rayscale.errors import ConfigError, ResultsError, ServerError
from rayscale.results import BenchResult, PointResult, load_results
from rayscale.tune.events import (
    CandidateFailed,
    CandidateFinished,
    CandidateSkipped,
    CandidateStarted,
    PointMeasured,
    RepeatsStarted,
    TuneEventCallback,
)
from rayscale.tune.results import (
    MEASURED,
    TUNE_FILE,
    CandidateSummary,
    PointSummary,
    Spread,
    TuneResult,
    load_tune_result,
    meets_slo,
    write_tune_result,
)
from rayscale.tune.space import TARGETS, Settings, Space, default_space, space_to_dict
from rayscale.tune.strategy import STRATEGIES, propose

__all__ = ["TuneConfig", "closest_answer", "next_concurrency", "run_tune", "summarize_candidate"]

log = logging.getLogger(__name__)

PROVIDERS = {"rayscale": ("auto", "cuda", "cpu", "null"), "triton": ("auto", "cuda", "cpu")}


@dataclass
class TuneConfig:
    target: str
    gpus: int
    slo_p99_ms: float
    out: str
    images_per_request: int = 32
    budget_minutes: float = 20.0
    strategy: str = "grid"
    space: Space | None = None  # None: the target's default space
    repeats: int = 0  # re-measure the top ``repeat_top`` candidates this many times (0: not at all)
    repeat_top: int = 2
    resume: bool = False
    concurrency_start: int = 1
    concurrency_max: int = 1024
    min_gain: float = 0.05  # a doubling that adds less throughput than this fraction ends the sweep
    runners_up: int = 3
    provider: str = "auto"
    model_dir: str = str(DEFAULT_MODEL_DIR)
    port: int = 0  # 0: 8000 for rayscale, 8100 for Triton
    address: str | None = None  # Ray cluster to deploy into (rayscale) and run the clients in
    cpus_per_replica: float = 1.0
    warmup_s: float = 5.0  # the windows of `rayscale bench`
    window_s: float = 5.0
    duration_s: float = 120.0
    stability: float = 0.1
    max_windows: int = 10
    clients: int = 0
    client_cpus: float = 0.5
    command: str = ""

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"unknown target {self.target!r}: use one of {', '.join(TARGETS)}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        if self.provider not in PROVIDERS[self.target]:
            raise ConfigError(f"provider for {self.target} must be one of {', '.join(PROVIDERS[self.target])}, "
                              f"got {self.provider!r}" + (" (the null engine is rayscale's alone)" if self.provider == "null" else ""))
        checks = [
            (self.gpus >= 1, f"gpus must be ≥ 1, got {self.gpus}"),
            (self.images_per_request >= 1, f"images per request must be ≥ 1, got {self.images_per_request}"),
            (math.isfinite(self.slo_p99_ms) and self.slo_p99_ms > 0, f"slo_p99_ms must be > 0, got {self.slo_p99_ms:g}"),
            (self.budget_minutes > 0, f"budget_minutes must be > 0, got {self.budget_minutes:g}"),
            (self.repeats >= 0, f"repeats must be ≥ 0, got {self.repeats}"),
            (self.repeat_top >= 1, f"repeat_top must be ≥ 1, got {self.repeat_top}"),
            (self.concurrency_start >= 1, f"concurrency_start must be ≥ 1, got {self.concurrency_start}"),
            (self.concurrency_max >= self.concurrency_start,
             f"concurrency_max ({self.concurrency_max}) must be ≥ concurrency_start ({self.concurrency_start})"),
            (0 <= self.min_gain < 1, f"min_gain must be in [0, 1), got {self.min_gain:g}"),
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
        self.bench_config(url="http://127.0.0.1:1", levels=[self.concurrency_start], out="unused")  # windows checked once

    @property
    def budget_s(self) -> float:
        return self.budget_minutes * 60.0

    def bench_config(self, *, url: str, levels: list[int], out: str, target: str = "auto"):
        from rayscale.loadgen import BenchConfig

        return BenchConfig(
            url=url, target=target, concurrency=levels, images_per_request=[self.images_per_request],
            warmup_s=self.warmup_s, window_s=self.window_s, duration_s=self.duration_s, stability=self.stability,
            max_windows=self.max_windows, clients=self.clients, client_cpus=self.client_cpus,
            address=self.address, model_dir=self.model_dir, out=out, resume=True, command=self.command or None,
        )


# ---- the concurrency rule --------------------------------------------------------------------------


def next_concurrency(points: list[PointResult], cfg: TuneConfig) -> tuple[int | None, str | None]:
    """The next concurrency to measure for one candidate (doubling), or None and why the sweep ends.

    ``points`` are the candidate's finished points (interrupted ones are not finished). The sweep
    ends when a point failed or lost requests, its p99 passed the SLO, doubling gained less than
    ``min_gain`` over the best before it, or the next step would pass ``concurrency_max``.
    """
    done = sorted((p for p in points if p.status != "incomplete"), key=lambda p: p.concurrency or 0)
    if not done:
        return cfg.concurrency_start, None
    last = done[-1]
    if last.status not in MEASURED or last.requests_ok == 0:
        return None, "failed"
    if last.requests_failed:
        return None, "errors"
    if last.latency.p99_ms > cfg.slo_p99_ms:
        return None, "slo"
    if len(done) >= 2:
        before = max(p.images_per_s for p in done[:-1])
        if last.images_per_s < before * (1 + cfg.min_gain):
            return None, "plateau"
    following = int(last.concurrency or cfg.concurrency_start) * 2
    if following > cfg.concurrency_max:
        return None, "max_concurrency"
    return following, None


def summarize_candidate(settings: Settings, points: list[PointResult], cfg: TuneConfig, *, results_file: str,
                        status: str = "complete", stop_reason: str | None = None, error: str | None = None) -> CandidateSummary:
    finished = sorted((p for p in points if p.status != "incomplete"), key=lambda p: p.concurrency or 0)
    measured = [p for p in finished if p.status in MEASURED and p.latency.count > 0]
    within = [p for p in measured if meets_slo(p, cfg.slo_p99_ms)]
    best = max(within, key=lambda p: p.images_per_s, default=None)
    return CandidateSummary(
        target=cfg.target,
        label=settings.label,
        settings=asdict(settings),
        results_file=results_file,
        reproduce=settings.up_command(cfg.gpus, cfg.provider),
        status=status,
        stop_reason=stop_reason,
        points=[PointSummary.of(p) for p in finished],
        goodput_images_per_s=round(best.images_per_s, 2) if best else None,
        goodput_concurrency=int(best.concurrency) if best else None,
        goodput_p99_ms=round(best.latency.p99_ms, 3) if best else None,
        peak_images_per_s=round(max((p.images_per_s for p in measured), default=0.0), 2),
        lowest_p99_ms=round(min(p.latency.p99_ms for p in measured), 3) if measured else None,
        error=error,
    )


# ---- servers ---------------------------------------------------------------------------------------


@dataclass
class _Session:
    """What one `tune` run started and has spent."""

    cfg: TuneConfig
    out: Path
    started: float
    used_before_s: float
    emit: TuneEventCallback
    started_cluster: bool = False
    measured_points: int = 0

    @property
    def used_s(self) -> float:
        return self.used_before_s + (time.monotonic() - self.started)

    def budget_left(self) -> bool:
        return self.used_s < self.cfg.budget_s


@contextmanager
def _rayscale_server(settings: Settings, session: _Session) -> Iterator[str]:
    from rayscale.serve.cluster import down, up

    cfg = session.cfg
    serve_cfg = settings.serve_config(cfg.gpus, model_dir=cfg.model_dir, provider=cfg.provider, port=cfg.port,
                                      host=LOCAL_HOST, cpus_per_replica=cfg.cpus_per_replica)
    try:
        result = up(serve_cfg, address=cfg.address, exporter=False, num_gpus=cfg.gpus if cfg.address is None else None)
        session.started_cluster |= result.started_cluster
        yield result.url
    finally:
        down(serve_cfg.app_name, address=cfg.address, stop_cluster=False)


@contextmanager
def _triton_server(settings: Settings, session: _Session) -> Iterator[str]:
    from rayscale.triton.server import triton_down, triton_up

    cfg = session.cfg
    config = settings.triton_config(cfg.gpus, http_port=cfg.port, model_dir=cfg.model_dir, provider=cfg.provider)
    with tempfile.TemporaryDirectory(prefix="rayscale-tune-triton-") as state_dir:
        try:
            yield triton_up(config, state_dir=state_dir).url
        finally:
            triton_down(state_dir=state_dir)


def _server(settings: Settings, session: _Session):
    return _rayscale_server(settings, session) if session.cfg.target == "rayscale" else _triton_server(settings, session)


# ---- one candidate ---------------------------------------------------------------------------------


def _points_in(path: Path) -> list[PointResult]:
    if not path.exists():
        return []
    loaded = load_results(path)
    if not isinstance(loaded, BenchResult):
        raise ResultsError(f"{path} is not a bench results file: move it out of the tune directory")
    return loaded.points


def _measure(session: _Session, url: str, path: Path, label: str, levels: list[int]) -> list[PointResult]:
    from rayscale.loadgen import run_bench
    from rayscale.loadgen.events import Event, PointFinished

    def forward(event: Event) -> None:
        if isinstance(event, PointFinished):
            session.measured_points += 1
            session.emit(PointMeasured(label, event.point))

    run_bench(session.cfg.bench_config(url=url, levels=levels, out=str(path), target=label), on_event=forward)
    return _points_in(path)


def _run_candidate(settings: Settings, session: _Session) -> CandidateSummary:
    cfg = session.cfg
    name = f"{settings.file_stem}.json"
    path = session.out / name
    points = _points_in(path)
    following, reason = next_concurrency(points, cfg)
    if following is None:
        session.emit(CandidateSkipped(settings.label, reason))
        return summarize_candidate(settings, points, cfg, results_file=name, stop_reason=reason)
    if not session.budget_left():
        return summarize_candidate(settings, points, cfg, results_file=name, status="incomplete", stop_reason="budget")
    session.emit(CandidateStarted(settings.label, settings.up_command(cfg.gpus, cfg.provider)))
    try:
        with _server(settings, session) as url:
            while following is not None:
                if not session.budget_left():
                    return summarize_candidate(settings, points, cfg, results_file=name, status="incomplete",
                                               stop_reason="budget")
                levels = sorted({int(p.concurrency) for p in points if p.status != "incomplete"} | {following})
                points = _measure(session, url, path, settings.label, levels)
                following, reason = next_concurrency(points, cfg)
    except ServerError as e:  # this candidate could not be served: a failure record, and the search goes on
        session.emit(CandidateFailed(settings.label, str(e)))
        return summarize_candidate(settings, points, cfg, results_file=name, status="failed", stop_reason="failed",
                                   error=str(e).splitlines()[0])
    return summarize_candidate(settings, points, cfg, results_file=name, stop_reason=reason)


# ---- repeats ---------------------------------------------------------------------------------------


def _repeat(candidate: CandidateSummary, settings: Settings, session: _Session) -> Spread:
    """Re-measure ``candidate`` at its goodput concurrency ``repeats`` times, one file per run."""
    cfg = session.cfg
    directory = session.out / "repeats"
    paths = [directory / f"{settings.file_stem}-r{i + 1}.json" for i in range(cfg.repeats)]
    level = int(candidate.goodput_concurrency)

    def finished(path: Path) -> PointResult | None:
        return next((p for p in _points_in(path) if p.concurrency == level and p.status != "incomplete"), None)

    if any(finished(p) is None for p in paths):
        session.emit(RepeatsStarted(settings.label, level, cfg.repeats))
        with _server(settings, session) as url:
            for path in paths:
                if finished(path) is None:
                    _measure(session, url, path, settings.label, [level])
    runs = [finished(p) for p in paths]
    return Spread(label=candidate.label, concurrency=level,
                  images_per_s=[round(p.images_per_s, 2) for p in runs],
                  p99_ms=[round(p.latency.p99_ms, 3) for p in runs])


def _verdict(result: TuneResult) -> str:
    best, ups = result.best, result.runners_up
    if best is None:
        return closest_answer(result)
    head = (f"best under p99 ≤ {result.slo_p99_ms:g} ms: {best.describe()}")
    if not ups:
        return head
    second = ups[0]
    ratio = best.goodput_images_per_s / second.goodput_images_per_s if second.goodput_images_per_s else float("inf")
    spreads = {s.label: s for s in result.repeats}
    a, b = spreads.get(best.label), spreads.get(second.label)
    if a is not None and b is not None and a.images_per_s and b.images_per_s:
        if a.images_per_s_min <= b.images_per_s_max:
            return (f"{head}; within the spread of the runner-up {second.label} over {len(a.images_per_s)} runs "
                    f"({a.images_per_s_min:,.0f}–{a.images_per_s_max:,.0f} vs {b.images_per_s_min:,.0f}–"
                    f"{b.images_per_s_max:,.0f} img/s): the two are equal within noise")
        return (f"{head}; ahead of the runner-up {second.label} in every one of {len(a.images_per_s)} runs "
                f"(median {a.images_per_s_median:,.0f} vs {b.images_per_s_median:,.0f} img/s)")
    return f"{head}; {ratio:.2f}× the runner-up {second.label} (one run each: --repeats K measures the noise)"


def closest_answer(result: TuneResult) -> str:
    """The one-line answer when no candidate meets the SLO."""
    if result.closest is None:
        return f"no candidate was measured under p99 ≤ {result.slo_p99_ms:g} ms: raise --budget-minutes or check the server"
    c = result.closest
    return (f"no candidate meets p99 ≤ {result.slo_p99_ms:g} ms; closest: {c.describe()} "
            f"(run `{c.reproduce}`): raise the SLO or use fewer images per request")


# ---- the search ------------------------------------------------------------------------------------


def _previous(cfg: TuneConfig, out: Path) -> TuneResult | None:
    path = out / TUNE_FILE
    if not cfg.resume:
        if path.exists() or any(out.glob("*.json")):
            raise ResultsError(f"{out} already holds tune results: pass --resume to continue, or choose another --out")
        return None
    if not path.exists():
        return None
    previous = load_tune_result(path)
    mine = (cfg.target, cfg.gpus, cfg.images_per_request)
    theirs = (previous.target, previous.gpus, previous.images_per_request)
    if mine != theirs:
        raise ConfigError(f"{out} holds a tune of {theirs[0]} on {theirs[1]} GPU(s) at {theirs[2]} images/request, "
                          f"not {mine[0]} on {mine[1]} at {mine[2]}: choose another --out")
    return previous


def _rank(candidates: list[CandidateSummary]) -> list[CandidateSummary]:
    return sorted(candidates, key=lambda c: c.score, reverse=True)


def _settings_of(cfg: TuneConfig, summary: CandidateSummary) -> Settings:
    return cfg.space.settings_type(**summary.settings)


def run_tune(cfg: TuneConfig, *, on_event: TuneEventCallback | None = None) -> TuneResult:
    """Search until the strategy or the budget is exhausted; returns (and writes) DIR/tune.json's result."""
    out = Path(cfg.out)
    previous = _previous(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    session = _Session(cfg=cfg, out=out, started=time.monotonic(),
                       used_before_s=previous.budget_used_s if previous else 0.0, emit=on_event or (lambda e: None))
    result = TuneResult(target=cfg.target, gpus=cfg.gpus, images_per_request=cfg.images_per_request,
                        slo_p99_ms=cfg.slo_p99_ms, strategy=cfg.strategy, space=space_to_dict(cfg.space),
                        budget_s=cfg.budget_s, command=cfg.command,
                        started_at=previous.started_at if previous else now_iso())
    summaries: dict[Settings, CandidateSummary] = {}

    def record(ended_by: str, status: str) -> None:
        ranked = [c for c in _rank(list(summaries.values())) if c.goodput_images_per_s is not None]
        result.candidates = list(summaries.values())
        result.best = ranked[0] if ranked else None
        result.runners_up = ranked[1 : 1 + cfg.runners_up]
        result.closest = None if ranked else next(iter(_rank(list(summaries.values()))), None)
        if result.closest is not None and result.closest.score[0] < 0:
            result.closest = None
        result.budget_used_s = round(session.used_s, 1)
        result.points_measured = session.measured_points
        result.ended_by, result.status, result.ended_at = ended_by, status, now_iso()
        if result.best is not None:
            result.bench_command = (f"rayscale bench --concurrency {result.best.goodput_concurrency} "
                                    f"--images-per-request {cfg.images_per_request}")
        result.verdict = _verdict(result)
        write_tune_result(result, out)

    ended_by = "interrupted"
    try:
        while True:
            settings = propose(cfg.strategy, cfg.space, {s: c.score for s, c in summaries.items()})
            if settings is None:
                ended_by = "space" if cfg.strategy == "grid" else "local_optimum"
                break
            summary = _run_candidate(settings, session)
            summaries[settings] = summary
            session.emit(CandidateFinished(summary))
            if summary.stop_reason == "budget":
                ended_by = "budget"
                break
            record("running", "incomplete")
        if cfg.repeats:
            top = [c for c in _rank(list(summaries.values())) if c.goodput_images_per_s is not None][: cfg.repeat_top]
            result.repeats = [_repeat(c, _settings_of(cfg, c), session) for c in top]
        record(ended_by, "complete" if ended_by != "budget" else "incomplete")
    except BaseException:
        record("interrupted", "incomplete")
        raise
    finally:
        if session.started_cluster:
            from rayscale.serve.cluster import down

            down(address=cfg.address, stop_cluster=True)
    result.budget_used_s = round(session.used_s, 1)
    return result

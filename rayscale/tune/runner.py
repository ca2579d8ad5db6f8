"""`rayscale tune`: give the server each candidate's settings, find its highest load under the SLO, keep the best.

The search is nested loops, outermost the costliest to change::

    while the strategy proposes a candidate and the budget lasts:
        server.serve(settings)                  # start, reconfigure in place, reload or restart
        while the load rule asks for a load:     # rayscale.tune.loads
            run_bench(one more load)             # the same load generator as `rayscale bench`
    repeat the top candidates at their SLO load, with standard windows

Every candidate writes one bench results file in the tune directory (``rayscale report`` reads
them); a candidate whose file already answers the load rule is not served again, so ``resume``
replays the search from disk and measures only what is missing. The budget covers the search and
its repeats: no server switch, point or repeat starts unless what it is planned to cost fits.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rayscale.environment import now_iso
from rayscale.errors import ConfigError, ResultsError, ServerError
from rayscale.results import BenchResult, PointResult, load_results
from rayscale.tune.config import TuneConfig
from rayscale.tune.events import (
    CandidateFailed,
    CandidateFinished,
    CandidateSkipped,
    CandidateStarted,
    PointMeasured,
    RepeatsStarted,
    SearchStopped,
    TuneEventCallback,
)
from rayscale.tune.loads import goodput_images_per_s, load_of, meets_slo, next_load, slo_point
from rayscale.tune.results import (
    TUNE_FILE,
    CandidateSummary,
    PointSummary,
    Spread,
    TuneResult,
    format_load,
    load_tune_result,
    write_tune_result,
)
from rayscale.tune.servers import CandidateServer
from rayscale.tune.space import Settings, default_space, settings_from_dict, space_to_dict
from rayscale.tune.strategy import propose

__all__ = ["TuneConfig", "closest_answer", "run_tune", "summarize_candidate"]


def summarize_candidate(
    settings: Settings,
    points: list[PointResult],
    cfg: TuneConfig,
    *,
    results_file: str,
    status: str = "complete",
    stop_reason: str | None = None,
    error: str | None = None,
) -> CandidateSummary:
    finished = sorted((p for p in points if p.status != "incomplete"), key=load_of)
    measured = [p for p in finished if p.status in ("ok", "unstable") and p.latency.count > 0]
    best = slo_point(finished, cfg.slo_p99_ms)
    return CandidateSummary(
        target=cfg.target,
        label=settings.label,
        settings=asdict(settings),
        results_file=results_file,
        reproduce=settings.up_command(cfg.gpus, cfg.provider, cfg.images_per_request),
        closed_loop=cfg.closed_loop,
        status=status,
        stop_reason=stop_reason,
        points=[PointSummary.of(p, cfg.slo_p99_ms) for p in finished],
        slo_load=load_of(best) if best else None,
        goodput_images_per_s=round(goodput_images_per_s(best, cfg.slo_p99_ms), 2) if best else None,
        images_per_s=round(best.images_per_s, 2) if best else None,
        p99_ms=round(best.latency.p99_ms, 3) if best else None,
        peak_images_per_s=round(max((p.images_per_s for p in measured), default=0.0), 2),
        lowest_p99_ms=round(min(p.latency.p99_ms for p in measured), 3) if measured else None,
        error=error,
    )


# ---- one run ---------------------------------------------------------------------------------------


@dataclass
class _Session:
    """What one `tune` run has started and spent."""

    cfg: TuneConfig
    out: Path
    emit: TuneEventCallback
    server: CandidateServer
    started: float
    measured_points: int = 0
    point_walls_s: dict[bool, list[float]] = field(default_factory=lambda: {False: [], True: []})  # by repeat or not

    @property
    def used_s(self) -> float:
        return time.monotonic() - self.started

    def point_s(self, *, repeat: bool = False) -> float:
        """What the next point is planned to cost: the most one has cost so far, or the configured plan."""
        timed = self.point_walls_s[repeat]
        return max(timed) if timed else self.cfg.point_s(repeat=repeat)

    def fits(self, seconds: float) -> bool:
        return self.used_s + seconds <= self.cfg.budget_s

    def repeat_reserve_s(self) -> float:
        """What the repeats of the top candidates are planned to cost: the search leaves room for them."""
        cfg = self.cfg
        if not cfg.repeats:
            return 0.0
        return cfg.repeat_top * (cfg.repeats * self.point_s(repeat=True) + self.server.restart_s())


def _points_in(path: Path) -> list[PointResult]:
    if not path.exists():
        return []
    loaded = load_results(path)
    if not isinstance(loaded, BenchResult):
        raise ResultsError(f"{path} is not a bench results file: move it out of the tune directory")
    return loaded.points


def _measure(
    session: _Session, url: str, path: Path, label: str, levels: list[float], *, repeat: bool = False
) -> list[PointResult]:
    from rayscale.loadgen import run_bench
    from rayscale.loadgen.events import Event, PointFinished

    def forward(event: Event) -> None:
        if isinstance(event, PointFinished):
            session.measured_points += 1
            session.emit(PointMeasured(label, event.point, meets_slo(event.point, session.cfg.slo_p99_ms)))

    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    run_bench(session.cfg.bench_config(url=url, levels=levels, out=str(path), target=label, repeat=repeat), on_event=forward)
    session.point_walls_s[repeat].append(time.monotonic() - t0)  # one new point per call
    return _points_in(path)


def _run_candidate(settings: Settings, session: _Session, first_load: float) -> CandidateSummary:
    cfg = session.cfg
    name = f"{settings.file_stem}.json"
    path = session.out / name
    points = _points_in(path)
    rule = cfg.load_rule(first_load)
    step = next_load(points, rule)

    def summary(status: str, reason: str | None, error: str | None = None) -> CandidateSummary:
        return summarize_candidate(settings, points, cfg, results_file=name, status=status, stop_reason=reason, error=error)

    if step.load is None:
        session.emit(CandidateSkipped(settings.label, step.reason or "no load left to measure"))
        return summary("complete", step.reason)
    reserve = session.repeat_reserve_s()
    if not session.fits(session.server.expected_s(settings) + session.point_s() + reserve):
        return summary("incomplete", "budget")
    try:
        url, switch, seconds = session.server.serve(settings)
        session.emit(
            CandidateStarted(settings.label, settings.up_command(cfg.gpus, cfg.provider, cfg.images_per_request), switch, seconds)
        )
        while step.load is not None:
            if not session.fits(session.point_s() + reserve):
                return summary("incomplete", "budget")
            levels = sorted({load_of(p) for p in points if p.status != "incomplete"} | {step.load})
            points = _measure(session, url, path, settings.label, levels)
            step = next_load(points, rule)
    except (ServerError, ConfigError) as e:  # it could not be served here (e.g. /dev/shm too small): a failure record
        session.emit(CandidateFailed(settings.label, str(e)))
        return summary("failed", "failed", str(e).splitlines()[0])
    return summary("complete", step.reason)


# ---- repeats ---------------------------------------------------------------------------------------


def _repeat(candidate: CandidateSummary, settings: Settings, session: _Session) -> Spread | None:
    """Re-measure ``candidate`` at its SLO load ``repeats`` times with standard windows, one file per
    run; None when the budget does not cover the runs still missing."""
    cfg = session.cfg
    load = candidate.at_slo().load
    tag = f"c{int(load)}" if cfg.closed_loop else f"r{load:g}"
    paths = [session.out / "repeats" / f"{settings.file_stem}-{tag}-r{i + 1}.json" for i in range(cfg.repeats)]

    def finished(path: Path) -> PointResult | None:
        return next((p for p in _points_in(path) if load_of(p) == load and p.status != "incomplete"), None)

    missing = [p for p in paths if finished(p) is None]
    if missing:
        if not session.fits(session.server.expected_s(settings) + len(missing) * session.point_s(repeat=True)):
            return None
        url, switch, seconds = session.server.serve(settings)
        session.emit(RepeatsStarted(candidate.label, format_load(load, cfg.closed_loop), len(missing)))
        for path in missing:
            _measure(session, url, path, settings.label, [load], repeat=True)
    runs = [run for run in map(finished, paths) if run is not None]
    if len(runs) < len(paths):  # no spread from fewer runs than asked
        unfinished = ", ".join(p.name for p in paths if finished(p) is None)
        raise ServerError(f"{unfinished}: no finished point at {format_load(load, cfg.closed_loop)} (--resume runs it again)")
    return Spread(
        label=candidate.label,
        load=load,
        goodput_images_per_s=[round(goodput_images_per_s(p, cfg.slo_p99_ms), 2) for p in runs],
        images_per_s=[round(p.images_per_s, 2) for p in runs],
        p99_ms=[round(p.latency.p99_ms, 3) for p in runs],
        met_slo=[meets_slo(p, cfg.slo_p99_ms) for p in runs],
    )


def _verdict(result: TuneResult) -> str:
    best, ups = result.best, result.runners_up
    if best is None:
        return closest_answer(result)
    head = f"best under p99 ≤ {result.slo_p99_ms:g} ms: {best.describe()}"
    spreads = {s.label: s for s in result.repeats}
    a = spreads.get(best.label)
    if a is not None:
        met = sum(a.met_slo)
        head += (
            f"; {len(a.goodput_images_per_s)} repeats {a.goodput_min:,.0f}–{a.goodput_max:,.0f} img/s goodput "
            f"(spread {a.spread_pct:.1f} %, p99 within the SLO in {met} of {len(a.met_slo)})"
        )
    if not ups:
        return head
    second = ups[0]
    b = spreads.get(second.label)
    if a is not None and b is not None:
        if a.goodput_min <= b.goodput_max:
            return f"{head}; within the spread of the runner-up {second.label}: the two are equal within noise"
        return f"{head}; ahead of the runner-up {second.label} in every run (median {b.goodput_median:,.0f} img/s)"
    ratio = best.at_slo().goodput_images_per_s / second.goodput_images_per_s if second.goodput_images_per_s else float("inf")
    return f"{head}; {ratio:.2f}× the runner-up {second.label} (one run each: --repeats K measures the noise)"


def closest_answer(result: TuneResult) -> str:
    """The one-line answer when no candidate meets the SLO."""
    if result.closest is None:
        return f"no candidate was measured under p99 ≤ {result.slo_p99_ms:g} ms: raise --budget-minutes or check the server"
    c = result.closest
    lowest = "concurrency 1" if c.closed_loop else "the lowest rate tried"
    return (
        f"no candidate meets p99 ≤ {result.slo_p99_ms:g} ms, even at {lowest}; closest: {c.describe()} "
        f"(run `{c.reproduce}`): raise the SLO or use fewer images per request"
    )


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
    mine = (cfg.target, cfg.gpus, cfg.images_per_request, cfg.closed_loop)
    theirs = (previous.target, previous.gpus, previous.images_per_request, previous.closed_loop)
    if mine != theirs:
        loop = {True: "closed loop", False: "open loop"}
        raise ConfigError(
            f"{out} holds a tune of {theirs[0]} on {theirs[1]} GPU(s) at {theirs[2]} images/request "
            f"({loop[theirs[3]]}), not {mine[0]} on {mine[1]} at {mine[2]} ({loop[mine[3]]}): choose another --out"
        )
    return previous


def _rank(candidates: list[CandidateSummary]) -> list[CandidateSummary]:
    return sorted(candidates, key=lambda c: c.score, reverse=True)


def _first_load(cfg: TuneConfig, summaries: dict[Settings, CandidateSummary]) -> float:
    """Where a candidate's load search starts: the best candidate's SLO load so far, else the configured start."""
    ranked = [c for c in _rank(list(summaries.values())) if c.meets_slo]
    return ranked[0].at_slo().load if ranked else cfg.first_load


def run_tune(cfg: TuneConfig, *, on_event: TuneEventCallback | None = None) -> TuneResult:
    """Search until the strategy, or this run's budget, is done; returns (and writes) DIR/tune.json's result."""
    out = Path(cfg.out)
    previous = _previous(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    session = _Session(cfg=cfg, out=out, emit=on_event or (lambda e: None), server=CandidateServer(cfg), started=time.monotonic())
    before_s = previous.total_used_s if previous else 0.0
    space = cfg.space or default_space(cfg.target)  # TuneConfig fills it in; a default keeps the type exact
    result = TuneResult(
        target=cfg.target,
        gpus=cfg.gpus,
        images_per_request=cfg.images_per_request,
        slo_p99_ms=cfg.slo_p99_ms,
        strategy=cfg.strategy,
        space=space_to_dict(space),
        closed_loop=cfg.closed_loop,
        budget_s=cfg.budget_s,
        command=cfg.command,
        started_at=previous.started_at if previous else now_iso(),
    )
    summaries: dict[Settings, CandidateSummary] = {}

    def record(ended_by: str, status: str) -> None:
        ranked = [c for c in _rank(list(summaries.values())) if c.meets_slo]
        result.candidates = list(summaries.values())
        result.best = ranked[0] if ranked else None
        result.runners_up = ranked[1 : 1 + cfg.runners_up]
        result.closest = None if ranked else next(iter(_rank(list(summaries.values()))), None)
        if result.closest is not None and result.closest.score[0] < 0:
            result.closest = None
        result.budget_used_s = round(session.used_s, 1)
        result.total_used_s = round(before_s + session.used_s, 1)
        result.points_measured = session.measured_points
        result.server_switches = dict(session.server.switches)
        result.ended_by, result.status, result.ended_at = ended_by, status, now_iso()
        if result.best is not None:
            load = result.best.at_slo().load
            shape = f"--concurrency {int(load)}" if cfg.closed_loop else f"--rate {load:g} --arrival {cfg.arrival}"
            result.bench_command = f"rayscale bench {shape} --images-per-request {cfg.images_per_request}"
        result.verdict = _verdict(result)
        write_tune_result(result, out)

    ended_by = "interrupted"
    try:
        while True:
            settings = propose(
                cfg.strategy, space, {s: c.score for s, c in summaries.items()}, seed_count=cfg.seeds, restarts=cfg.restarts
            )
            if settings is None:
                ended_by = "space" if cfg.strategy == "grid" else "local_optimum"
                break
            summary = _run_candidate(settings, session, _first_load(cfg, summaries))
            summaries[settings] = summary
            session.emit(CandidateFinished(summary))
            if summary.stop_reason == "budget":
                ended_by = "budget"
                session.emit(
                    SearchStopped(
                        f"the budget left ({cfg.budget_s - session.used_s:.0f} s) does not cover {settings.label} and the repeats"
                    )
                )
                break
            record("running", "incomplete")
        repeats_done = _run_repeats(cfg, session, summaries, result)
        if not repeats_done and ended_by != "budget":
            ended_by = "budget"
        record(ended_by, "complete" if ended_by != "budget" else "incomplete")
    except BaseException:
        record("interrupted", "incomplete")
        raise
    finally:
        session.server.close()
    return result


def _run_repeats(cfg: TuneConfig, session: _Session, summaries: dict[Settings, CandidateSummary], result: TuneResult) -> bool:
    """Repeats of the top candidates (whatever the search found so far); False when the budget cut them short."""
    if not cfg.repeats:
        return True
    top = [c for c in _rank(list(summaries.values())) if c.meets_slo][: cfg.repeat_top]
    # the candidate being served first: one switch fewer
    top.sort(key=lambda c: session.server.current is None or c.label != session.server.current.label)
    result.repeats = []
    for candidate in top:
        try:
            spread = _repeat(candidate, settings_from_dict(cfg.target, candidate.settings), session)
        except (ServerError, ConfigError) as e:  # served once, but not again: its repeats are missing, say why
            session.emit(CandidateFailed(candidate.label, f"repeats: {e}"))
            continue
        if spread is None:
            session.emit(
                SearchStopped(
                    f"the budget left ({cfg.budget_s - session.used_s:.0f} s) does not cover the "
                    f"repeats of {candidate.label}: --resume runs them"
                )
            )
            return False
        result.repeats.append(spread)
    return True

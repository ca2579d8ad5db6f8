"""`rayscale tune` as users run it: each candidate served for real, measured by the bench load generator.

rayscale runs the null engine on a local Ray cluster with two logical GPUs; Triton runs its CPU
provider. Windows are short and spaces tiny, so the search's rules, not its figures, are tested:
each real search is checked step by step against the rule that chose its loads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from rayscale.errors import ConfigError
from rayscale.report.config import ReportConfig
from rayscale.results import LatencyHistogram, LatencyStats, PointResult, load_results
from rayscale.tune import (
    EXIT_BUDGET,
    EXIT_NONE_MET,
    EXIT_OK,
    LoadRule,
    LoadStep,
    RayscaleSettings,
    TritonSettings,
    TuneConfig,
    goodput_images_per_s,
    load_tune_result,
    meets_slo,
    next_load,
    parse_space_overrides,
    run_tune,
    serve_layout,
)
from rayscale.tune.loads import load_of
from rayscale.tune.strategy import grid_candidates, neighbours, propose, seeds

from conftest import free_port

pytestmark = pytest.mark.timeout(900)

ENTRY = "import sys; from rayscale.cli import main; sys.argv[0] = 'rayscale'; main()"
FAST = dict(
    warmup_s=0.2, window_s=0.3, max_windows=3, client_cpus=0.25, repeat_warmup_s=0.2, repeat_window_s=0.3, repeat_max_windows=3
)


def rayscale(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, timeout=600, env=env or dict(os.environ)
    )


def point(
    load: float, images_per_s: float, p99_ms: float, *, failed: int = 0, status: str = "ok", closed: bool = True
) -> PointResult:
    return PointResult(
        target="rayscale",
        transport="http-binary",
        mode="closed" if closed else "open",
        replicas=1,
        images_per_request=1,
        concurrency=int(load) if closed else None,
        rate_rps=None if closed else load,
        status=status,
        requests_ok=100,
        requests_failed=failed,
        images_per_s=images_per_s,
        latency=LatencyStats(count=100, p99_ms=p99_ms),
    )


def measured_order(points: list[PointResult]) -> list[PointResult]:
    """A results file holds its points by load; the search measured them in this order."""
    return sorted(points, key=lambda p: p.started_at)


def replay(points: list[PointResult], rule: LoadRule) -> None:
    """Every point of a real search is the load the rule asked for after the points before it."""
    points = measured_order(points)
    for i, p in enumerate(points):
        assert next_load(points[:i], rule).load == load_of(p), (
            f"point {i} at {load_of(p)} after {[load_of(q) for q in points[:i]]}"
        )


# ---- the load rule, on points as a search records them ---------------------------------------------

RULE = LoadRule(slo_p99_ms=100, closed=True, first=8, maximum=64, resolution=0.25, min_gain=0.05)


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([], LoadStep(8)),
        ([point(8, 100, 10)], LoadStep(16)),  # a pass climbs, doubling
        ([point(8, 100, 10), point(16, 104, 20)], LoadStep(None, "plateau")),  # +4 % < 5 %: more load buys latency
        ([point(8, 100, 10), point(16, 180, 20), point(32, 300, 30), point(64, 500, 40)], LoadStep(None, "max_load")),
        ([point(8, 100, 120)], LoadStep(4)),  # a miss steps down, halving
        ([point(8, 100, 120), point(4, 60, 110), point(2, 30, 105), point(1, 15, 101)], LoadStep(None, "infeasible")),
        ([point(8, 100, 120), point(4, 60, 70)], LoadStep(6)),  # bisect where p99 would cross 100 ms, linearly
        ([point(8, 100, 10), point(16, 180, 120)], LoadStep(14)),  # (kept within the bracket's middle half)
        ([point(8, 100, 10), point(16, 180, 20), point(32, 200, 400)], LoadStep(20)),
        ([point(16, 180, 90), point(32, 200, 110), point(20, 190, 95)], LoadStep(24)),
        ([point(16, 180, 90), point(20, 190, 95), point(24, 195, 120)], LoadStep(None, "bracketed")),  # 24 ≤ 20 × 1.25
        ([point(8, 100, 10), point(16, 180, 20, failed=3)], LoadStep(12)),  # a lost request is a miss
        ([point(8, 100, 10), point(16, 0, 0, status="failed")], LoadStep(12)),
        ([point(8, 100, 10), point(16, 180, 20, status="incomplete")], LoadStep(16)),  # an interrupted point is redone
        ([point(4, 100, 10), point(5, 100, 150)], LoadStep(None, "bracketed")),  # adjacent integers
    ],
    ids=[
        "start",
        "climb",
        "plateau",
        "max",
        "step-down",
        "infeasible",
        "bisect-down",
        "bisect-up",
        "bisect-clamped",
        "bisect-again",
        "bracketed",
        "errors",
        "failed",
        "interrupted",
        "adjacent",
    ],
)
def test_each_candidate_climbs_steps_down_and_bisects_to_its_highest_load_under_the_slo(points, expected):
    assert next_load(points, RULE) == expected


def test_open_loop_rates_halve_to_a_floor_and_bisect_in_three_significant_digits():
    rule = LoadRule(slo_p99_ms=25, closed=False, first=1000, maximum=64_000)
    assert next_load([], rule).load == 1000
    assert next_load([point(1000, 900, 40, closed=False)], rule).load == 500
    assert next_load([point(1000, 900, 40, closed=False), point(500, 480, 20, closed=False)], rule).load == 625
    lowest = [point(r, r, 40, closed=False) for r in (1000, 500, 250, 125, 62.5, 31.25)]
    assert next_load(lowest, rule) == LoadStep(None, "infeasible")  # 1/32 of the first rate missed too


def test_goodput_is_read_from_the_latency_histogram_at_the_highest_load_that_met_the_slo():
    fast = point(8, 1000, 50)
    fast.latency_histogram = LatencyHistogram.from_latencies_s([0.05] * 99 + [0.2])  # one request in 100 over 100 ms
    assert meets_slo(fast, 100) and goodput_images_per_s(fast, 100) == pytest.approx(990)
    assert goodput_images_per_s(point(8, 1000, 80), 100) == 1000  # no histogram: the p99 estimate
    assert goodput_images_per_s(point(8, 1000, 120), 100) == 0


def test_hill_seeds_the_first_dimension_then_climbs_and_restarts_from_the_next_best_seed():
    space = parse_space_overrides(
        "triton", ["instances_per_gpu=1,2,4,8,12", "batch_wait_ms=0,2", "max_batch_size=256", "preferred_batch_sizes=none,pow2"]
    )
    assert [s.instances_per_gpu for s in seeds(space)] == [4, 8, 2]  # the default, about twice it, about half

    def goodput(c: TritonSettings) -> float:  # best at 12 instances, no wait, preferred doublings
        return (
            1000 * c.instances_per_gpu**0.5
            + (300 if c.batch_wait_ms == 0 else 0)
            + (200 if c.preferred_batch_sizes == "pow2" else 0)
        )

    scores, path = {}, []
    while (candidate := propose("hill", space, scores, seed_count=3, restarts=1)) is not None:
        path.append(candidate)
        scores[candidate] = (1, goodput(candidate))
    assert path[:3] == seeds(space)
    best = max(scores, key=scores.get)
    assert best == TritonSettings(instances_per_gpu=12, batch_wait_ms=0.0, preferred_batch_sizes="pow2")
    assert len(path) < len(grid_candidates(space))  # it did not measure the whole grid
    # at the end every neighbour of the optimum was measured, and the restart climbed from the 2nd-best seed
    assert all(n in scores for n in neighbours(space, best))
    assert any(n in scores for n in neighbours(space, seeds(space)[0]))


def test_rayscale_neighbours_that_need_no_new_processes_come_first_and_the_grid_groups_restarts():
    space = parse_space_overrides(
        "rayscale", ["processes_per_gpu=2,4", "batches_in_flight=2,4", "batch_wait_ms=0,2", "max_batch_size=256"]
    )
    at = RayscaleSettings(processes_per_gpu=4, batches_in_flight=4, batch_wait_ms=2.0, max_batch_size=256)
    first, second, third = neighbours(space, at)
    assert first.restart_key == second.restart_key == at.restart_key and third.processes_per_gpu == 2
    keys = [c.restart_key for c in grid_candidates(space)]
    assert keys == sorted(keys, key=keys.index) and len(set(keys)) == 2  # each restart setting measured in one run


def test_replicas_per_gpu_share_each_gpu_within_ray_granularity():
    assert serve_layout(2, 1) == (2, 1.0)
    assert serve_layout(2, 3) == (6, 0.3333)  # three shares fit on one GPU
    four = RayscaleSettings(processes_per_gpu=4)
    assert four.up_command(2).startswith("rayscale up --replicas 2 --processes-per-replica 4")
    cfg = four.serve_config(2).resolved()
    assert (cfg.replicas, cfg.serve_replicas, cfg.gpus_per_process) == (2, 8, 0.25)


def test_triton_preferred_batch_sizes_are_a_policy_resolved_per_request_size():
    space = parse_space_overrides("triton", ["preferred_batch_sizes=none,max,pow2,32+96"])
    assert space.preferred_batch_sizes == ["none", "max", "pow2", "32+96"]
    sizes = {
        p: TritonSettings(preferred_batch_sizes=p, max_batch_size=256).preferred_sizes(32) for p in space.preferred_batch_sizes
    }
    assert sizes == {"none": [], "max": [256], "pow2": [32, 64, 128, 256], "32+96": [32, 96]}
    command = TritonSettings(instances_per_gpu=8, batch_wait_ms=0, preferred_batch_sizes="pow2").up_command(1, "auto", 32)
    assert command == (
        "rayscale triton up --gpus 1 --instances-per-gpu 8 --max-batch-size 256 --batch-wait-ms 0 "
        "--preferred-batch-sizes 32,64,128,256"
    )
    from rayscale.triton.repository import python_backend_config

    batching = TritonSettings(preferred_batch_sizes="pow2").triton_config(1, images_per_request=32, provider="cpu").batching()
    assert "preferred_batch_size: [ 32, 64, 128, 256 ]" in python_backend_config(batching, gpus=1, provider="cpu")
    with pytest.raises(ConfigError, match="preferred batch sizes 'some' must be one of none, max, pow2"):
        parse_space_overrides("triton", ["preferred_batch_sizes=none,some"])


def test_unknown_dimension_lists_the_valid_names_and_old_names_still_read():
    with pytest.raises(
        ConfigError,
        match="unknown search dimension 'bif' for rayscale: use one of processes_per_gpu, "
        "batches_in_flight, batch_wait_ms, max_batch_size",
    ):
        parse_space_overrides("rayscale", ["bif=2,4"])
    with pytest.raises(ConfigError, match="batches_in_flight must be in 1..8, got 16"):
        parse_space_overrides("rayscale", ["batches_in_flight=2,16"])
    assert parse_space_overrides("rayscale", ["replicas_per_gpu=2,4"]).processes_per_gpu == [2, 4]
    assert parse_space_overrides("triton", ["max_queue_delay_us=0,500,2000"]).batch_wait_ms == [0.0, 0.5, 2.0]
    with pytest.raises(ConfigError, match="batch_wait_ms must be in 0..1000 ms, got 5000"):
        parse_space_overrides("triton", ["batch_wait_ms=5000"])


def test_each_progress_event_of_a_search_is_one_readable_line():
    from rayscale.cli.tune import progress_line
    from rayscale.tune.events import (
        CandidateFailed,
        CandidateFinished,
        CandidateSkipped,
        CandidateStarted,
        PointMeasured,
        RepeatsStarted,
        SearchStopped,
    )
    from rayscale.tune.results import CandidateSummary

    p = PointResult(
        target="x",
        transport="http-binary",
        mode="closed",
        replicas=1,
        concurrency=8,
        images_per_request=32,
        images_per_s=1234.5,
        latency=LatencyStats(count=10, p99_ms=42.25),
    )
    summary = CandidateSummary(
        target="rayscale",
        label="rayscale 4/GPU",
        settings={},
        results_file="a.json",
        reproduce="rayscale up",
        stop_reason="bracketed",
        slo_load=8,
        goodput_images_per_s=1230.5,
        p99_ms=42.25,
    )
    lines = [
        progress_line(e)
        for e in (
            CandidateStarted("rayscale 4/GPU", "rayscale up --replicas 1", "started", 17.64),
            CandidateStarted("rayscale 4/GPU bif2", "rayscale up ...", "in place", 1.04),
            PointMeasured("rayscale 4/GPU", p, True),
            CandidateSkipped("triton 2/GPU", "plateau"),
            CandidateFailed("triton 8/GPU", "out of memory\ntraceback"),
            RepeatsStarted("rayscale 4/GPU", "concurrency 8", 3),
            SearchStopped("the budget left (12 s) does not cover x"),
            CandidateFinished(summary),
        )
    ]
    assert lines == [
        "rayscale 4/GPU: started in 17.6 s (rayscale up --replicas 1)",
        "rayscale 4/GPU bif2: reconfigured in place in 1.0 s (rayscale up ...)",
        "  concurrency 8: 1,234.5 img/s, p99 42.2 ms, ok: meets the SLO",
        "triton 2/GPU: already measured (stopped: plateau)",
        "triton 8/GPU: failed: out of memory",
        "rayscale 4/GPU: 3 repeat(s) at concurrency 8",
        "stopped: the budget left (12 s) does not cover x",
        "  → rayscale 4/GPU: 1,230.5 img/s goodput at concurrency 8, p99 42.2 ms [complete, stopped: bracketed]",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "vllm", "--gpus", "1", "--slo-p99-ms", "100"], "unknown target 'vllm': use one of rayscale, triton"),
        (
            ["--target", "triton", "--gpus", "1", "--slo-p99-ms", "100", "--space", "delay=1"],
            "unknown search dimension 'delay' for triton: use one of instances_per_gpu, batch_wait_ms, preferred_batch_sizes, "
            "max_batch_size",
        ),
        (
            ["--target", "rayscale", "--gpus", "1", "--slo-p99-ms", "100", "--strategy", "random"],
            "unknown strategy 'random': use one of grid, hill",
        ),
        (["--target", "rayscale", "--gpus", "1", "--slo-p99-ms", "0"], "slo_p99_ms must be > 0"),
        (["--target", "rayscale", "--gpus", "1", "--slo-p99-ms", "100", "--resolution", "1.5"], "resolution must be in (0, 1)"),
        (["--target", "triton", "--gpus", "1", "--slo-p99-ms", "100", "--provider", "null"], "null engine is rayscale's alone"),
        (["--gpus", "1", "--slo-p99-ms", "100"], "missing --target"),
    ],
)
def test_bad_flags_are_one_line_errors_with_exit_status_1(args, message, tmp_path):
    from typer.testing import CliRunner

    from rayscale.cli import app

    result = CliRunner().invoke(app, ["tune", *args, "--out", str(tmp_path / "t")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # a clean exit, no traceback
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr
    assert not (tmp_path / "t").exists()


def test_serving_the_settings_a_server_already_serves_reuses_it_and_counts_the_switch():
    """The repeats of the candidate that is being served start nothing (a switch the code once refused)."""
    from rayscale.tune.servers import CandidateServer
    from rayscale.tune.space import TritonSettings

    server = CandidateServer(TuneConfig(target="triton", gpus=1, slo_p99_ms=100, out="unused", provider="cpu"))
    settings = TritonSettings()
    server.current, server.url = settings, "http://127.0.0.1:8100"
    url, switch, _ = server.serve(settings)
    assert (url, switch) == ("http://127.0.0.1:8100", "reused") and server.switches == {"reused": 1}


def test_a_running_batcher_takes_new_batches_in_flight_and_batch_wait_without_dropping_a_request():
    """What Serve's reconfigure hands a replica's batcher while requests are queued (rayscale's in-place switch)."""
    import asyncio
    import threading
    import time

    import numpy as np

    from rayscale.serve.batcher import ImageBatcher

    lock, running, peaks = threading.Lock(), [0], []

    def run(parts):
        with lock:
            running[0] += 1
            peaks[-1] = max(peaks[-1], running[0])
        time.sleep(0.03)
        with lock:
            running[0] -= 1
        return [np.zeros((len(p), 4)) for p in parts], 0, 0

    async def burst(batcher: ImageBatcher, n: int) -> int:
        peaks.append(0)
        results = await asyncio.gather(*(batcher.submit(np.zeros((1, 2))) for _ in range(n)))
        assert len(results) == n
        return peaks[-1]

    async def main() -> list[int]:
        batcher = ImageBatcher(run, max_batch_size=1, batch_wait_ms=0, batches_in_flight=1)
        seen = [await burst(batcher, 12)]
        batcher.reconfigure(batch_wait_ms=0, batches_in_flight=4, max_queued_requests=-1)
        seen.append(await burst(batcher, 12))
        pending = asyncio.gather(*(batcher.submit(np.zeros((1, 2))) for _ in range(8)))
        await asyncio.sleep(0.01)  # batches running while the setting drops
        batcher.reconfigure(batch_wait_ms=0, batches_in_flight=2, max_queued_requests=-1)
        assert len(await pending) == 8
        seen.append(await burst(batcher, 12))
        batcher.close()
        return seen

    assert asyncio.run(main()) == [1, 4, 2]


# ---- rayscale: real servers on a local Ray cluster ------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster with two logical GPUs, started as `rayscale up` starts one, so that the
    search's servers leave it running."""
    from rayscale.serve.cluster import connect, down

    saved = {k: os.environ.get(k) for k in ("RAYSCALE_STATE_DIR", "RAYSCALE_RAY_TEMP_DIR")}
    os.environ["RAYSCALE_STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
    os.environ["RAYSCALE_RAY_TEMP_DIR"] = f"/tmp/rst-{os.getpid()}"
    connect(start=True, num_gpus=2, num_cpus=4)
    yield dict(os.environ)
    down(stop_cluster=True)
    shutil.rmtree(os.environ["RAYSCALE_RAY_TEMP_DIR"], ignore_errors=True)
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _rayscale_space(bif: str = "1,2", wait: str = "2"):
    return parse_space_overrides(
        "rayscale", ["processes_per_gpu=1", f"batches_in_flight={bif}", f"batch_wait_ms={wait}", "max_batch_size=8"], gpus=2
    )


@pytest.fixture(scope="module")
def grid(cluster, model_dir, tmp_path_factory):
    """Two candidates that differ in batches in flight: the second is the first server reconfigured in place.
    From concurrency 2, climbing until a load misses 60 ms (on two cores, concurrency 256 cannot meet it)."""
    out = tmp_path_factory.mktemp("tune") / "rayscale"
    cfg = TuneConfig(
        target="rayscale",
        gpus=2,
        slo_p99_ms=60,
        out=str(out),
        images_per_request=2,
        strategy="grid",
        provider="null",
        model_dir=str(model_dir),
        port=free_port(),
        cpus_per_replica=0.25,
        space=_rayscale_space(),
        concurrency_start=2,
        concurrency_max=256,
        min_gain=None,
        **FAST,
    )
    return cfg, run_tune(cfg)


def test_each_candidate_climbs_until_a_load_misses_then_bisects(grid):
    cfg, result = grid
    assert [c.settings["batches_in_flight"] for c in result.candidates] == [1, 2]  # the grid's order
    assert result.ended_by == "space" and result.status == "complete" and result.exit_status == EXIT_OK
    assert result.server_switches == {"started": 1, "in place": 1}  # the second candidate kept the first's processes
    first = result.candidates[0]
    points = measured_order(load_results(Path(cfg.out) / first.results_file).points)
    replay(points, cfg.load_rule())
    loads = [load_of(p) for p in points]
    misses = [i for i, p in enumerate(points) if not meets_slo(p, cfg.slo_p99_ms)]
    assert misses, f"no load of {loads} missed 60 ms"
    climb = loads[: misses[0] + 1]
    assert climb == [2 * 2**i for i in range(len(climb))]  # doubling from the start up to the first miss
    passes = [load_of(p) for p in points if meets_slo(p, cfg.slo_p99_ms)]
    lowest_miss = min(load_of(points[i]) for i in misses if load_of(points[i]) > max(passes))
    for later in loads[misses[0] + 1 :]:  # every later load bisects the bracket it was chosen in
        assert later < climb[-1]
    assert first.stop_reason == "bracketed" and lowest_miss - max(passes) <= max(1, cfg.resolution * max(passes))
    best = next(p for p in points if load_of(p) == max(passes))
    assert first.slo_load == max(passes) and first.p99_ms == pytest.approx(best.latency.p99_ms, abs=1e-3)
    assert first.goodput_images_per_s == pytest.approx(
        best.images_per_s * best.latency_histogram.fraction_within(cfg.slo_p99_ms), abs=0.01
    )
    second = result.candidates[1]  # warm start: at the first candidate's SLO load
    assert load_of(measured_order(load_results(Path(cfg.out) / second.results_file).points)[0]) == first.slo_load
    bench = load_results(Path(cfg.out) / second.results_file)
    assert bench.serve_config["batches_in_flight"] == 2  # what the reconfigured processes reported
    saved = load_tune_result(Path(cfg.out) / "tune.json")
    assert saved.best.label == result.best.label and saved.best.goodput_images_per_s == result.best.goodput_images_per_s
    assert result.bench_command == f"rayscale bench --concurrency {int(result.best.slo_load)} --images-per-request 2"


def test_every_candidate_is_a_bench_results_file_the_report_reads(grid, tmp_path):
    from rayscale.report import run_report

    cfg, result = grid
    for c in result.candidates:
        bench = load_results(Path(cfg.out) / c.results_file)
        assert bench.status == "complete" and {p.target for p in bench.points} == {c.label}
    written = run_report([Path(cfg.out)], ReportConfig(slo_p99_ms=cfg.slo_p99_ms), out=tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert all(c.label in text for c in result.candidates) and written
    assert "Best of each under the SLO" not in text  # only one target was tuned


def test_resume_continues_an_interrupted_candidate_and_redoes_nothing_finished(grid, tmp_path):
    cfg, first = grid
    out = tmp_path / "copy"
    shutil.copytree(cfg.out, out)
    cut = out / first.candidates[1].results_file  # interrupted after its first point(s)
    data = json.loads(cut.read_text())
    order = sorted(data["points"], key=lambda p: p["started_at"])
    keep = min(2, len(order) - 1)
    removed = [p["concurrency"] for p in order[keep:]]
    data["points"], data["status"] = sorted(order[:keep], key=lambda p: p["concurrency"]), "incomplete"
    cut.write_text(json.dumps(data))
    kept = out / first.candidates[0].results_file
    mtime = kept.stat().st_mtime_ns
    again = run_tune(replace(cfg, out=str(out), resume=True))
    assert kept.stat().st_mtime_ns == mtime  # the finished candidate was read, not measured
    points = measured_order(load_results(cut).points)
    assert [p.concurrency for p in points[:keep]] == [p["concurrency"] for p in order[:keep]]
    assert points[keep].concurrency == removed[0]  # the same next load as before the interruption
    replay(points, cfg.load_rule(first.candidates[0].slo_load))
    assert again.points_measured == len(points) - keep and again.server_switches == {"started": 1}
    assert again.status == "complete" and [c.label for c in again.candidates] == [c.label for c in first.candidates]


def test_budget_is_honoured_and_a_spent_budget_exits_4_until_resumed(grid, cluster, tmp_path):
    cfg, _ = grid
    wide = replace(
        cfg,
        out=str(tmp_path / "wide"),
        space=_rayscale_space(bif="1,2,4,8", wait="0,1,2,5"),
        budget_minutes=0.8,
        min_gain=0.05,
        rate_start_rps=50.0,
    )  # open loop: rates, requests/s
    result = run_tune(wide)
    assert result.ended_by == "budget" and result.status == "incomplete" and result.exit_status == EXIT_BUDGET
    # every switch and point started only where it fit at the most one had cost so far (a slower last one
    # overruns by the difference)
    assert result.budget_used_s <= 1.1 * wide.budget_s
    assert result.points_measured >= 1 and len(result.candidates) < 16
    points = load_results(Path(wide.out) / result.candidates[0].results_file).points
    assert {(p.mode, p.concurrency) for p in points} == {("open", None)}
    replay(points, wide.load_rule())  # the same climb and bisection, over rates from 50 requests/s
    # a budget too small for any server: nothing starts, one line says how to continue, exit status 4
    proc = rayscale(
        "tune",
        "--target",
        "rayscale",
        "--gpus",
        "2",
        "--images-per-request",
        "2",
        "--slo-p99-ms",
        "60",
        "--space",
        "processes_per_gpu=1",
        "--space",
        "batches_in_flight=1,2",
        "--space",
        "max_batch_size=8",
        "--space",
        "batch_wait_ms=0,1,2,5",
        "--provider",
        "null",
        "--budget-minutes",
        "0.05",
        "--resume",
        "--rate",
        "50",
        "--port",
        str(free_port()),
        "--out",
        wide.out,
        env=cluster,
    )
    assert proc.returncode == EXIT_BUDGET, proc.stderr[-2000:]
    assert "started" not in proc.stderr and "continue with --resume" in proc.stdout
    saved = load_tune_result(Path(wide.out) / "tune.json")
    assert saved.points_measured == 0 and saved.total_used_s >= result.budget_used_s


def test_exit_status_0_when_the_best_meets_the_slo_and_3_when_none_does(grid, cluster):
    cfg, first = grid
    common = [
        "tune",
        "--target",
        "rayscale",
        "--gpus",
        "2",
        "--images-per-request",
        "2",
        "--space",
        "processes_per_gpu=1",
        "--space",
        "batches_in_flight=1,2",
        "--space",
        "max_batch_size=8",
        "--space",
        "batch_wait_ms=2",
        "--provider",
        "null",
        "--concurrency-start",
        "2",
        "--max-concurrency",
        "256",
        "--strategy",
        "grid",
        "--warmup",
        "0.2",
        "--window",
        "0.3",
        "--client-cpus",
        "0.25",
        "--port",
        str(free_port()),
        "--out",
        cfg.out,
        "--resume",
    ]
    proc = rayscale(*common, "--slo-p99-ms", "60", env=cluster)  # every candidate's search is on disk
    assert proc.returncode == EXIT_OK, proc.stderr[-2000:]
    assert "started" not in proc.stderr and f"reproduce: {first.best.reproduce}" in proc.stdout
    # an SLO no load can meet: each candidate steps down to concurrency 1 before it is called infeasible
    proc = rayscale(*common, "--slo-p99-ms", "0.001", env=cluster)
    assert proc.returncode == EXIT_NONE_MET, proc.stderr[-2000:]
    answer = [line for line in proc.stdout.splitlines() if line.startswith("no candidate meets")]
    assert len(answer) == 1 and "p99 ≤ 0.001 ms, even at concurrency 1; closest: rayscale 1/GPU" in answer[0]
    saved = load_tune_result(Path(cfg.out) / "tune.json")
    assert saved.best is None and all(c.stop_reason == "infeasible" for c in saved.candidates)
    for c in saved.candidates:
        loads = [p.load for p in c.points]
        assert 1 in loads and all(not p.meets_slo for p in c.points)


# ---- Triton: the same search on its CPU provider ---------------------------------------------------


def _triton_environment_ready() -> bool:
    if os.environ.get("RAYSCALE_TRITON_PYTHON"):
        return True
    from rayscale.triton.install import MARKER_NAME, default_cache_dir

    venv = Path(os.environ.get("RAYSCALE_TRITON_VENV", default_cache_dir() / "triton-venv")).expanduser()
    return (venv / MARKER_NAME).is_file()


@pytest.mark.skipif(
    not _triton_environment_ready(), reason="Triton's managed environment is not installed (`rayscale triton setup`)"
)
def test_triton_steps_down_from_a_missed_load_reloads_its_model_and_pairs_with_rayscale(grid, model_dir, tmp_path):
    """A CPU serves one 2-image request in 0.15-0.6 s: concurrency 8 cannot meet 1 s, concurrency 1 can."""
    from rayscale.report import run_report

    rayscale_cfg, rayscale_result = grid
    out = Path(rayscale_cfg.out).parent / "triton"
    cfg = TuneConfig(
        target="triton",
        gpus=2,
        slo_p99_ms=1000,
        out=str(out),
        images_per_request=2,
        strategy="grid",
        provider="cpu",
        model_dir=str(model_dir),
        port=free_port(),
        repeats=2,
        repeat_top=1,
        clients=1,
        space=parse_space_overrides(
            "triton", ["instances_per_gpu=1", "max_batch_size=8", "batch_wait_ms=2", "preferred_batch_sizes=none,pow2"], gpus=2
        ),
        concurrency_start=8,
        concurrency_max=8,
        **dict(FAST, warmup_s=0.5, window_s=1.0, repeat_warmup_s=0.5, repeat_window_s=1.0),
    )
    events: list = []
    result = run_tune(cfg, on_event=events.append)
    failures = [e for e in events if type(e).__name__ in ("CandidateFailed", "SearchStopped")]
    switches = result.server_switches
    assert switches.get("started") == 1 and switches.get("reloaded", 0) >= 1, (switches, failures)  # no restart
    first = result.candidates[0]
    points = measured_order(load_results(out / first.results_file).points)
    replay(points, cfg.load_rule())
    loads = [load_of(p) for p in points]
    assert loads[0] == 8 and not meets_slo(points[0], cfg.slo_p99_ms)
    passed = next(i for i, p in enumerate(points) if meets_slo(p, cfg.slo_p99_ms))
    assert loads[: passed + 1] == [8 / 2**i for i in range(passed + 1)]  # halving until a load met the SLO
    assert first.slo_load is not None and first.stop_reason == "bracketed"
    pow2 = next(c for c in result.candidates if c.settings["preferred_batch_sizes"] == "pow2")
    bench = load_results(out / pow2.results_file)
    assert bench.serve_config["dynamic_batching"]["preferred_batch_size"] == [2, 4, 8]  # the reloaded model's config
    assert result.best.reproduce.startswith(
        "rayscale triton up --gpus 2 --instances-per-gpu 1 --max-batch-size 8 --batch-wait-ms 2"
    )
    assert len(result.repeats) == 1, failures
    (spread,) = result.repeats
    assert spread.label == result.best.label and len(spread.goodput_images_per_s) == 2
    assert spread.goodput_min <= spread.goodput_median <= spread.goodput_max
    assert len(list((out / "repeats").glob("*.json"))) == 2

    # both searches ran without GPUs: labelled CPU, priced at the CPU price and never at the GPU one
    prices = ReportConfig(gpu_hour_cost_usd=50.0, cpu_hour_cost_usd=2.0, allow_mismatch=True)
    run_report([Path(rayscale_cfg.out), out], prices, out=tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Best of each under the SLO" not in text  # the two searches ran under different SLOs
    rejudged = tmp_path / "rayscale"  # the rayscale search judged again under Triton's SLO, from its files alone
    shutil.copytree(rayscale_cfg.out, rejudged)
    lowest_top = min(max(p.load for p in c.points) for c in rayscale_result.candidates)
    again = run_tune(replace(rayscale_cfg, out=str(rejudged), resume=True, slo_p99_ms=1000, concurrency_max=int(lowest_top)))
    assert again.best is not None and again.points_measured == 0 and not again.server_switches
    run_report([rejudged, out], prices, out=tmp_path / "report2")
    section = (tmp_path / "report2" / "report.md").read_text().split("## Best of each under the SLO", 1)[1].split("\n## ", 1)[0]
    assert again.best.label in section and result.best.label in section
    assert f"`{again.best.reproduce} && {again.bench_command}`" in section and "(2 runs" in section
    assert "on the CPU (2 replica(s))" in section and "GPU(s)" not in section
    cost = 4.0 / (3600 * spread.goodput_median) * 1000  # two replicas at $2 per CPU replica-hour, repeats' median
    assert f"${cost:#.3g}" in section

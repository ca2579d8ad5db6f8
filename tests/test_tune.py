"""`rayscale tune` as users run it: each candidate server started for real, measured by the bench load generator.

rayscale runs the null engine on a local Ray cluster with two logical GPUs; Triton runs its CPU
provider. Windows are short and spaces tiny, so the search's rules, not its figures, are tested.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from rayscale.errors import ConfigError
from rayscale.report.config import ReportConfig
from rayscale.results import LatencyStats, PointResult, load_results
from rayscale.tune import (
    RayscaleSettings,
    TuneConfig,
    load_tune_result,
    next_concurrency,
    parse_space_overrides,
    run_tune,
    serve_layout,
)
from rayscale.tune.strategy import grid_candidates, hill_start, neighbours, propose

from conftest import free_port

pytestmark = pytest.mark.timeout(600)

ENTRY = "import sys; from rayscale.cli import main; sys.argv[0] = 'rayscale'; main()"
FAST = dict(warmup_s=0.2, window_s=0.3, duration_s=1.5, max_windows=3, client_cpus=0.25)


def rayscale(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, timeout=300,
                          env=env or dict(os.environ))


def point(concurrency: int, images_per_s: float, p99_ms: float, *, failed: int = 0, status: str = "ok") -> PointResult:
    return PointResult(target="rayscale", transport="http-binary", mode="closed", replicas=1, images_per_request=1,
                       concurrency=concurrency, status=status, requests_ok=100, requests_failed=failed,
                       images_per_s=images_per_s, latency=LatencyStats(count=100, p99_ms=p99_ms))


# ---- the rules, on points as a sweep records them -------------------------------------------------

RULES = TuneConfig(target="rayscale", gpus=1, slo_p99_ms=100, out="unused", concurrency_start=2, concurrency_max=16)


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([], (2, None)),
        ([point(2, 100, 10)], (4, None)),
        ([point(2, 100, 10), point(4, 180, 20)], (8, None)),
        ([point(2, 100, 10), point(4, 104, 20)], (None, "plateau")),  # +4 % < 5 %
        ([point(2, 100, 10), point(4, 180, 120)], (None, "slo")),
        ([point(2, 100, 10), point(4, 180, 20, failed=3)], (None, "errors")),
        ([point(2, 100, 10), point(4, 0, 0, status="failed")], (None, "failed")),
        ([point(2, 100, 10), point(4, 180, 20), point(8, 300, 30), point(16, 500, 40)], (None, "max_concurrency")),
        ([point(2, 100, 10), point(4, 180, 20, status="incomplete")], (4, None)),  # an interrupted point is redone
    ],
    ids=["start", "double", "double-again", "plateau", "slo", "errors", "failed", "max", "interrupted"],
)
def test_concurrency_doubles_until_a_rule_stops_it(points, expected):
    assert next_concurrency(points, RULES) == expected


def test_replicas_per_gpu_share_each_gpu_within_ray_granularity():
    assert serve_layout(2, 1) == (2, 1.0)
    assert serve_layout(2, 3) == (6, 0.3333)  # three shares fit on one GPU
    four = RayscaleSettings(replicas_per_gpu=4)
    assert four.up_command(2).startswith("rayscale up --replicas 2 --processes-per-replica 4")
    cfg = four.serve_config(2).resolved()
    assert (cfg.replicas, cfg.serve_replicas, cfg.gpus_per_process) == (2, 8, 0.25)


def test_hill_climbs_to_a_local_optimum_from_the_defaults():
    space = parse_space_overrides("rayscale", ["batches_in_flight=1,2,4,8", "replicas_per_gpu=1", "max_batch_size=256",
                                               "batch_wait_ms=1,2"])
    goodput = {1: 10.0, 2: 30.0, 4: 20.0, 8: 5.0}  # peak at 2 batches in flight; batch wait does not matter
    scores, path = {}, []
    while (candidate := propose("hill", space, scores)) is not None:
        path.append(candidate)
        scores[candidate] = (1, goodput[candidate.batches_in_flight] + (0.1 if candidate.batch_wait_ms == 1 else 0))
    assert path[0] == hill_start(space) == RayscaleSettings(batches_in_flight=4, batch_wait_ms=2.0)
    best = max(scores, key=scores.get)
    assert (best.batches_in_flight, best.batch_wait_ms) == (2, 1.0)
    assert all(n in scores and scores[n] <= scores[best] for n in neighbours(space, best))  # a local optimum
    assert len(path) < len(grid_candidates(space))  # it did not measure the whole grid


def test_unknown_dimension_lists_the_valid_names():
    with pytest.raises(ConfigError, match="unknown search dimension 'bif' for rayscale: use one of replicas_per_gpu, "
                                          "batches_in_flight, max_batch_size, batch_wait_ms"):
        parse_space_overrides("rayscale", ["bif=2,4"])
    with pytest.raises(ConfigError, match="batches_in_flight must be in 1..8, got 16"):
        parse_space_overrides("rayscale", ["batches_in_flight=2,16"])


def test_each_progress_event_of_a_search_is_one_readable_line():
    from rayscale.cli.tune import progress_line
    from rayscale.tune.events import (
        CandidateFailed,
        CandidateFinished,
        CandidateSkipped,
        CandidateStarted,
        PointMeasured,
        RepeatsStarted,
    )
    from rayscale.tune.results import CandidateSummary

    point = PointResult(target="x", transport="http-binary", mode="closed", replicas=1, concurrency=8,
                        images_per_request=32, images_per_s=1234.5, latency=LatencyStats(count=10, p99_ms=42.25))
    summary = CandidateSummary(target="rayscale", label="rayscale 4/GPU", settings={}, results_file="a.json",
                               reproduce="rayscale up", stop_reason="slo", goodput_images_per_s=1234.5,
                               goodput_concurrency=8, goodput_p99_ms=42.25)
    lines = [progress_line(e) for e in (
        CandidateStarted("rayscale 4/GPU", "rayscale up --replicas 1"), PointMeasured("rayscale 4/GPU", point),
        CandidateSkipped("triton 2/GPU", "plateau"), CandidateFailed("triton 8/GPU", "out of memory\ntraceback"),
        RepeatsStarted("rayscale 4/GPU", 8, 3), CandidateFinished(summary))]
    assert lines == [
        "rayscale 4/GPU: starting (rayscale up --replicas 1)",
        "  c=8: 1,234.5 img/s, p99 42.2 ms, ok",
        "triton 2/GPU: already measured (stopped: plateau)",
        "triton 8/GPU: failed: out of memory",
        "rayscale 4/GPU: 3 repeat(s) at concurrency 8",
        "  → rayscale 4/GPU: 1,234.5 img/s at concurrency 8, p99 42.2 ms [complete, stopped: slo]",
    ]


def test_triton_waits_the_same_milliseconds_as_rayscale_and_the_old_name_still_reads():
    assert parse_space_overrides("triton", ["batch_wait_ms=0.5,2"]).batch_wait_ms == [0.5, 2.0]
    assert parse_space_overrides("triton", ["max_queue_delay_us=500,2000"]).batch_wait_ms == [0.5, 2.0]
    with pytest.raises(ConfigError, match="batch_wait_ms must be in 0..1000 ms, got 5000"):
        parse_space_overrides("triton", ["batch_wait_ms=5000"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "vllm", "--gpus", "1", "--slo-p99-ms", "100"], "unknown target 'vllm': use one of rayscale, triton"),
        (["--target", "triton", "--gpus", "1", "--slo-p99-ms", "100", "--space", "delay=1"],
         "unknown search dimension 'delay' for triton: use one of instances_per_gpu, max_batch_size, batch_wait_ms"),
        (["--target", "rayscale", "--gpus", "1", "--slo-p99-ms", "100", "--strategy", "random"],
         "unknown strategy 'random': use one of grid, hill"),
        (["--target", "rayscale", "--gpus", "1", "--slo-p99-ms", "0"], "slo_p99_ms must be > 0"),
        (["--target", "triton", "--gpus", "1", "--slo-p99-ms", "100", "--provider", "null"], "null engine is rayscale's alone"),
        (["--gpus", "1", "--slo-p99-ms", "100"], "missing --target"),
    ],
)
def test_bad_flags_are_one_line_errors(args, message, tmp_path):
    from typer.testing import CliRunner

    from rayscale.cli import app

    result = CliRunner().invoke(app, ["tune", *args, "--out", str(tmp_path / "t")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # a clean exit, no traceback
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr
    assert not (tmp_path / "t").exists()


# ---- rayscale: real servers on a local Ray cluster ------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster with two logical GPUs, started as `rayscale up` starts one, so that each
    candidate's `down` leaves it running for the next."""
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


@pytest.fixture(scope="module")
def grid(cluster, model_dir, tmp_path_factory):
    """A grid over two batches-in-flight values, both replicas per GPU sharing two logical GPUs."""
    out = tmp_path_factory.mktemp("tune") / "rayscale"
    cfg = TuneConfig(target="rayscale", gpus=2, slo_p99_ms=60_000, out=str(out), images_per_request=2,
                     strategy="grid", provider="null", model_dir=str(model_dir), port=free_port(), cpus_per_replica=0.25,
                     space=parse_space_overrides("rayscale", ["replicas_per_gpu=1", "batches_in_flight=1,2",
                                                              "max_batch_size=8", "batch_wait_ms=1"], gpus=2),
                     concurrency_start=1, concurrency_max=4, **FAST)
    return cfg, run_tune(cfg)


def test_grid_measures_every_candidate_and_keeps_the_best(grid):
    cfg, result = grid
    assert [c.settings["batches_in_flight"] for c in result.candidates] == [1, 2]  # the grid's order
    assert result.ended_by == "space" and result.status == "complete" and result.points_measured >= 2
    for c in result.candidates:
        levels = [p.concurrency for p in c.points]
        assert levels == [1, 2, 4][: len(levels)]  # doubling from the start
        assert c.stop_reason in ("plateau", "max_concurrency", "errors")
        assert next_concurrency(load_results(Path(cfg.out) / c.results_file).points, cfg) == (None, c.stop_reason)
    best = max(result.candidates, key=lambda c: c.goodput_images_per_s)
    assert result.best.label == best.label and result.runners_up[0].label != best.label
    assert result.best.reproduce == (f"rayscale up --replicas 2 --processes-per-replica 1 --batches-in-flight "
                                     f"{best.settings['batches_in_flight']} --max-batch-size 8 --batch-wait-ms 1 --provider null")
    saved = load_tune_result(Path(cfg.out) / "tune.json")
    assert saved.best.label == result.best.label and saved.best.goodput_images_per_s == result.best.goodput_images_per_s
    assert "one run each" in saved.verdict


def test_every_candidate_is_a_bench_results_file_the_report_reads(grid, tmp_path):
    from rayscale.report import run_report

    cfg, result = grid
    for c in result.candidates:
        bench = load_results(Path(cfg.out) / c.results_file)
        assert bench.status == "complete" and {p.target for p in bench.points} == {c.label}
        assert bench.serve_config["batches_in_flight"] == c.settings["batches_in_flight"]
    written = run_report([Path(cfg.out)], ReportConfig(slo_p99_ms=cfg.slo_p99_ms), out=tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert all(c.label in text for c in result.candidates) and written
    assert "Best of each under the SLO" not in text  # only one target was tuned


def test_resume_measures_nothing_new_and_hill_replays_from_the_files(grid):
    cfg, first = grid
    files = {p: p.stat().st_mtime_ns for p in Path(cfg.out).glob("rayscale-*.json")}
    again = run_tune(replace(cfg, resume=True, strategy="hill"))
    assert again.points_measured == 0
    assert {p: p.stat().st_mtime_ns for p in Path(cfg.out).glob("rayscale-*.json")} == files
    assert again.candidates[0].settings["batches_in_flight"] == 2  # nearest to the default of 4
    assert again.ended_by == "local_optimum" and again.best.label == first.best.label


def test_budget_spent_stops_before_starting_another_server(grid):
    cfg, first = grid
    wider = parse_space_overrides("rayscale", ["replicas_per_gpu=1", "batches_in_flight=1,2,4", "max_batch_size=8",
                                               "batch_wait_ms=1"], gpus=2)
    result = run_tune(replace(cfg, resume=True, space=wider, budget_minutes=first.budget_used_s / 120))
    assert result.points_measured == 0 and result.ended_by == "budget" and result.status == "incomplete"
    assert result.candidates[-1].settings["batches_in_flight"] == 4 and result.candidates[-1].stop_reason == "budget"
    assert not (Path(cfg.out) / result.candidates[-1].results_file).exists()


def test_impossible_slo_is_a_one_line_answer_naming_the_closest(grid, cluster):
    cfg, first = grid
    proc = rayscale("tune", "--target", "rayscale", "--gpus", "2", "--images-per-request", "2", "--slo-p99-ms", "0.001",
                    "--space", "replicas_per_gpu=1", "--space", "batches_in_flight=1,2", "--space", "max_batch_size=8",
                    "--space", "batch_wait_ms=1", "--provider", "null", "--out", cfg.out, "--resume", env=cluster)
    assert proc.returncode == 1, proc.stderr[-2000:]
    answer = [line for line in proc.stderr.splitlines() if line.startswith("no candidate meets")]
    assert len(answer) == 1 and "p99 ≤ 0.001 ms; closest: rayscale 1/GPU" in answer[0] and "rayscale up --replicas 2" in answer[0]
    assert "starting" not in proc.stderr  # answered from the files: no server started
    saved = load_tune_result(Path(cfg.out) / "tune.json")
    assert saved.best is None and saved.closest.lowest_p99_ms == min(c.lowest_p99_ms for c in saved.candidates)


# ---- Triton: the same search on its CPU provider ---------------------------------------------------


def _triton_environment_ready() -> bool:
    if os.environ.get("RAYSCALE_TRITON_PYTHON"):
        return True
    from rayscale.triton.install import MARKER_NAME, default_cache_dir

    venv = Path(os.environ.get("RAYSCALE_TRITON_VENV", default_cache_dir() / "triton-venv")).expanduser()
    return (venv / MARKER_NAME).is_file()


@pytest.mark.skipif(not _triton_environment_ready(), reason="Triton's managed environment is not installed (`rayscale triton setup`)")
def test_triton_search_repeats_the_winner_and_pairs_with_rayscale_in_the_report(grid, model_dir, tmp_path):
    from rayscale.report import run_report

    rayscale_cfg, rayscale_result = grid
    out = Path(rayscale_cfg.out).parent / "triton"
    cfg = TuneConfig(target="triton", gpus=2, slo_p99_ms=60_000, out=str(out), images_per_request=2, strategy="grid",
                     provider="cpu", model_dir=str(model_dir), port=free_port(), repeats=2, repeat_top=1,
                     space=parse_space_overrides("triton", ["instances_per_gpu=1", "max_batch_size=8",
                                                            "batch_wait_ms=1"], gpus=2),
                     concurrency_start=1, concurrency_max=2, **FAST)
    result = run_tune(cfg)
    (winner,) = result.candidates
    assert winner.status == "complete" and [p.concurrency for p in winner.points][0] == 1
    assert result.best.reproduce == ("rayscale triton up --gpus 2 --instances-per-gpu 1 --max-batch-size 8 "
                                     "--batch-wait-ms 1 --provider cpu")
    (spread,) = result.repeats
    assert spread.label == winner.label and len(spread.images_per_s) == 2
    assert spread.images_per_s_min <= spread.images_per_s_median <= spread.images_per_s_max
    assert len(list((out / "repeats").glob("*.json"))) == 2

    again = run_tune(replace(rayscale_cfg, resume=True))  # judged again under this SLO, from its files alone
    assert again.points_measured == 0 and again.best.label == rayscale_result.best.label
    # both searches ran without GPUs: labelled CPU, priced at the CPU price and never at the GPU one
    prices = ReportConfig(gpu_hour_cost_usd=50.0, cpu_hour_cost_usd=2.0, allow_mismatch=True)
    run_report([Path(rayscale_cfg.out), out], prices, out=tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    section = text.split("## Best of each under the SLO", 1)[1].split("\n## ", 1)[0]
    assert rayscale_result.best.label in section and winner.label in section
    assert f"`{rayscale_result.best.reproduce}`" in section and "(2 runs)" in section
    assert "on the CPU (2 replica(s))" in section and "GPU(s)" not in section
    cost = 4.0 / (3600 * result.best.goodput_images_per_s) * 1000  # two replicas at $2 per CPU replica-hour
    assert f"${cost:#.3g}" in section

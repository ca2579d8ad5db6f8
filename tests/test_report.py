"""`rayscale report`: scaling efficiency, cost per 1000 images, SLO and target picks, knee, plots, guards.

The results are built here the way `rayscale bench` writes them (one file per Ray Serve replica
count, one Triton file with every GPU count), written with write_json_atomic and read back by the
report; every figure checked is recomputed in the test from the points themselves.
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from rayscale.cli.report import report_command
from rayscale.errors import ConfigError, ResultsError
from rayscale.loadgen.stats import latency_stats
from rayscale.report import ReportConfig, build_report, find_knee, parse_costs, write_report
from rayscale.report.sections import render_markdown
from rayscale.results import (
    BenchResult,
    EngineBenchResult,
    EnginePoint,
    GpuSummary,
    HostCpu,
    LatencyHistogram,
    LatencyStats,
    PointResult,
    ServerStats,
    load_results,
    write_json_atomic,
)

H100 = "NVIDIA H100 80GB HBM3"
SHA = "5e" * 32
CONCURRENCIES = [1, 2, 4, 8, 16, 32, 64]
IMAGES_PER_REQUEST = 8
SERVICE_MS = 12.0  # one request's latency on an idle server
# Saturation throughput (img/s) by GPU count: Ray Serve and Triton scale differently.
CAPACITY = {"rayscale": {1: 1500.0, 2: 2850.0, 4: 5400.0}, "triton": {1: 1700.0, 2: 3300.0, 4: 6200.0}}
COSTS = "1gpu:2.0,2gpu:4.1,4gpu:8.5"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def closed_loop_point(target: str, gpu_count: int, concurrency: int, *, status: str = "ok", **overrides) -> PointResult:
    """A closed-loop point on a server that saturates at CAPACITY: Little's law gives the latency."""
    offered = concurrency * IMAGES_PER_REQUEST * 1000.0 / SERVICE_MS
    ips = min(offered, CAPACITY[target][gpu_count])
    mean_ms = concurrency * IMAGES_PER_REQUEST * 1000.0 / ips
    saturated = offered > CAPACITY[target][gpu_count]
    compute_ms = SERVICE_MS * 0.6
    queue_ms = max(mean_ms - SERVICE_MS, 0.0) + 0.5
    point = PointResult(
        target=target,
        transport="http-binary",
        mode="closed",
        replicas=gpu_count,
        images_per_request=IMAGES_PER_REQUEST,
        concurrency=concurrency,
        status=status,
        measured_s=20.0,
        requests_sent=int(ips / IMAGES_PER_REQUEST * 20),
        requests_ok=int(ips / IMAGES_PER_REQUEST * 20),
        images_per_s=ips,
        requests_per_s=ips / IMAGES_PER_REQUEST,
        latency=LatencyStats(
            count=int(ips / IMAGES_PER_REQUEST * 20),
            mean_ms=mean_ms,
            min_ms=mean_ms * 0.7,
            p50_ms=mean_ms * 0.95,
            p90_ms=mean_ms * 1.3,
            p95_ms=mean_ms * 1.45,
            p99_ms=mean_ms * 1.6,
            p999_ms=mean_ms * 1.9,
            max_ms=mean_ms * 2.2,
        ),
        server=ServerStats(
            requests=1000,
            images=8000,
            batches=200,
            queue_ms_per_request=queue_ms,
            compute_ms_per_request=compute_ms,
            mean_batch_images=min(8.0 * concurrency / gpu_count, 256.0),
        ),
        gpus=[
            GpuSummary(index=i, name=H100, util_mean_pct=93.0 if saturated else 40.0 * concurrency / 4, samples=40)
            for i in range(gpu_count)
        ],
        client_cpu_pct=35.0,
    )
    for name, value in overrides.items():
        setattr(point, name, value)
    return point


def bench_result(
    points: list[PointResult],
    *,
    sha: str = SHA,
    precision: str = "fp16",
    gpu: str = H100,
    max_batch_size: int = 256,
    triton: bool = False,
) -> BenchResult:
    serve_config = (
        {"max_batch_size": max_batch_size, "batch_wait_ms": 2.0, "instance_count": 1}
        if triton
        else {"max_batch_size": max_batch_size, "batch_wait_ms": 2.0, "batches_in_flight": 2, "gpus_per_replica": 1.0}
    )
    return BenchResult(
        command=f"rayscale bench --target {'triton' if triton else 'rayscale'} --concurrency 1,2,4,8,16,32,64",
        config={"duration_s": 20.0, "warmup_s": 5.0, "transport": "http-binary", "images_per_request": 8},
        environment={
            "hostname": "gpu-node-1",
            "cpu": {"model": "AMD EPYC 9454", "logical_cores": 96},
            "memory_bytes": 512 * 2**30,
            "gpu_driver": "550.54.15",
            "gpus": [{"index": i, "name": gpu, "memory_total_bytes": 80 * 2**30} for i in range(4)],
            "versions": {"python": "3.11.9", "ray": "2.60.0", "onnxruntime-gpu": "1.31.1"},
            "git_commit": "abc123",
        },
        model={
            "name": "openclip_vit_b32",
            "sha256": sha,
            "precision": precision,
            "weights": "laion2b_s34b_b79k",
            "inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [-1, 224, 224, 3]}],
        },
        serve_config=serve_config,
        points=points,
    )


def sweep(target: str, gpus: int) -> list[PointResult]:
    return [closed_loop_point(target, gpus, c) for c in CONCURRENCIES]


@pytest.fixture
def results_files(tmp_path: Path) -> list[Path]:
    """Ray Serve at 1, 2, 4 replicas (one file each, the 1-GPU file with two bad points) and Triton."""
    files = []
    for gpus in (1, 2, 4):
        points = sweep("rayscale", gpus)
        if gpus == 1:
            # Past saturation the 1-GPU server broke down: these must never become its peak.
            points.append(closed_loop_point("rayscale", 1, 128, status="unstable", images_per_s=2400.0, stable=False))
            points.append(
                closed_loop_point("rayscale", 1, 256, status="failed", images_per_s=3000.0, error="503 Service Unavailable")
            )
        files.append(write_json_atomic(tmp_path / f"rayscale-{gpus}gpu.json", bench_result(points).to_dict()))
    triton_points = [p for gpus in (1, 2, 4) for p in sweep("triton", gpus)]
    files.append(write_json_atomic(tmp_path / "triton.json", bench_result(triton_points, triton=True).to_dict()))
    return files


def load_all(files: list[Path]) -> list[BenchResult]:
    return [load_results(f) for f in files]


def all_points(files: list[Path]) -> list[PointResult]:
    return [p for f in files for p in load_results(f).points]


def expected_peak(points: list[PointResult], target: str, gpus: int) -> float:
    return max(p.images_per_s for p in points if p.target == target and p.replicas == gpus and p.status == "ok")


def run_cli(*args: str) -> typer.testing.Result:
    app = typer.Typer()
    app.command()(report_command)
    return CliRunner().invoke(app, list(args))


def report_json(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def group(report: dict, target: str, gpus: int) -> dict:
    return next(g for g in report["groups"] if g["target"] == target and g["gpus"] == gpus)


# ---- the numbers a user buys GPUs by ---------------------------------------------------------------


def test_cli_writes_report_with_efficiency_and_cost_per_1000_images(results_files, tmp_path):
    out = tmp_path / "reports" / "h100"
    result = run_cli(*map(str, results_files), "--costs", COSTS, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "report.md" in result.output

    report = report_json(out)
    points = all_points(results_files)
    prices = {1: 2.0, 2: 4.1, 4: 8.5}
    for target in ("rayscale", "triton"):
        one_gpu = expected_peak(points, target, 1)
        for gpus in (1, 2, 4):
            peak = expected_peak(points, target, gpus)
            g = group(report, target, gpus)
            assert g["peak_images_per_s"] == pytest.approx(peak)
            assert g["efficiency"] == pytest.approx(peak / (gpus * one_gpu))
            assert g["cost_per_1000_images_usd"] == pytest.approx(prices[gpus] / (3600 * peak) * 1000)
    # Ray Serve loses 10% of linear at 4 GPUs in this data; the report must show it.
    assert group(report, "rayscale", 4)["efficiency"] == pytest.approx(5400 / (4 * 1500))

    for name in ("report.md", "report.json", "summary.csv"):
        assert (out / name).stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "Scaling efficiency" in md and "Cost per 1000 images" in md and "Knee" in md
    assert "550.54.15" in md and SHA in md and "fp16" in md  # the setup says what was measured
    assert "rayscale bench --target triton" in md  # and how


def test_unstable_and_failed_points_are_flagged_not_peaks(results_files, tmp_path):
    report = build_report(load_all(results_files), sources=[str(f) for f in results_files])
    one_gpu = next(g for g in report.groups if g.target == "rayscale" and g.gpus == 1)
    assert one_gpu.peak_images_per_s == pytest.approx(1500.0)  # not the unstable 2400 nor the failed 3000
    assert one_gpu.peak_load != 128 and one_gpu.peak_load != 256
    assert one_gpu.usable_points == len(CONCURRENCIES) and one_gpu.points == len(CONCURRENCIES) + 2
    flagged = {r.load: r for r in report.points if r.target == "rayscale" and r.gpus == 1 and not r.usable}
    assert set(flagged) == {128, 256}
    assert any("503" in f for f in flagged[256].flags)
    assert any("128" in n and "excluded" in n for n in report.notes)

    write_report(report, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "**unstable** (not used)" in md and "**failed** (not used)" in md


def test_slo_pick_and_cheapest_configuration_meeting_a_target(results_files, tmp_path):
    out = tmp_path / "r"
    slo_ms, target_ips = 40.0, 2500.0
    result = run_cli(
        *map(str, results_files),
        "--gpu-hour-cost",
        "2.5",
        "--slo-p99-ms",
        str(slo_ms),
        "--throughput-target",
        str(target_ips),
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    report = report_json(out)
    points = [p for p in all_points(results_files) if p.status == "ok"]

    under_slo = [p for p in points if p.latency.p99_ms <= slo_ms]
    best = max(under_slo, key=lambda p: p.images_per_s)
    pick = report["best_under_slo"]
    assert (pick["target"], pick["gpus"], pick["load"]) == (best.target, best.replicas, best.concurrency)
    assert pick["images_per_s"] == pytest.approx(best.images_per_s)
    assert pick["latency_p99_ms"] <= slo_ms

    # Capacity of a configuration = its best throughput under the SLO; cheapest = lowest $/hour.
    capacity: dict[tuple[str, int], float] = {}
    for p in under_slo:
        capacity[(p.target, p.replicas)] = max(capacity.get((p.target, p.replicas), 0.0), p.images_per_s)
    meeting = [(2.5 * gpus, -ips, target, gpus) for (target, gpus), ips in capacity.items() if ips >= target_ips]
    hourly, neg_ips, target, gpus = min(meeting)
    cheapest = report["cheapest_for_target"]
    assert (cheapest["target"], cheapest["gpus"]) == (target, gpus)
    assert cheapest["images_per_s"] == pytest.approx(-neg_ips) and cheapest["images_per_s"] >= target_ips
    assert cheapest["hourly_cost_usd"] == pytest.approx(hourly)
    assert cheapest["cost_per_1000_images_usd"] == pytest.approx(hourly / (3600 * -neg_ips) * 1000)


def test_no_configuration_reaching_the_target_is_said_not_invented(results_files):
    report = build_report(load_all(results_files), ReportConfig(throughput_target_ips=1e6))
    assert report.cheapest_for_target is None
    assert any("reaches 1e+06 img/s" in n or "1000000" in n for n in report.notes)


def knee_by_definition(points: list[PointResult], k: float = 2.0, min_growth: float = 0.10) -> float | None:
    points = sorted(points, key=lambda p: p.concurrency)
    for a, b in itertools.pairwise(points):
        dp99 = (b.latency.p99_ms - a.latency.p99_ms) / a.latency.p99_ms
        dthr = (b.images_per_s - a.images_per_s) / a.images_per_s
        if dp99 >= min_growth and dp99 > k * max(dthr, 0):
            return a.concurrency
    return None


def test_knee_is_the_load_past_which_p99_outgrows_throughput(results_files):
    report = build_report(load_all(results_files))
    points = [p for p in all_points(results_files) if p.status == "ok"]
    for g in report.groups:
        expected = knee_by_definition([p for p in points if p.target == g.target and p.replicas == g.gpus])
        assert g.knee is not None and g.knee.load == expected
    # Below saturation latency is flat, so the knee sits where offered load first exceeds capacity.
    ray_1gpu = next(g for g in report.groups if g.target == "rayscale" and g.gpus == 1)
    assert ray_1gpu.knee.load == 2  # offered 1333 img/s at 2, capacity 1500: at 4 p99 jumps, throughput +12%


def test_knee_needs_p99_to_outgrow_throughput_by_the_factor():
    # 2 -> 4: p99 +30% while throughput +20% (not a knee at factor 2); 4 -> 8: p99 +50%, throughput +5%.
    curve = [(1, 100.0, 10.0), (2, 190.0, 10.5), (4, 228.0, 13.65), (8, 240.0, 20.5), (16, 242.0, 40.0)]
    points = [
        closed_loop_point("rayscale", 1, c, images_per_s=ips, latency=LatencyStats(p50_ms=p99 / 2, p99_ms=p99))
        for c, ips, p99 in curve
    ]
    knee = build_report([bench_result(points)]).groups[0].knee
    assert knee.load == 4 and knee.next_load == 8
    assert knee.p99_growth == pytest.approx(20.5 / 13.65 - 1) and knee.throughput_growth == pytest.approx(240 / 228 - 1)
    assert build_report([bench_result(points)], ReportConfig(knee_factor=1.0)).groups[0].knee.load == 2


def test_knee_absent_while_latency_stays_flat():
    rows = build_report([bench_result([closed_loop_point("rayscale", 4, c) for c in (1, 2)])]).points
    assert find_knee(rows) is None


def test_engine_ceiling_fraction(results_files, tmp_path):
    engine = EngineBenchResult(
        command="rayscale engine-bench",
        environment=load_results(results_files[0]).environment,
        model=load_results(results_files[0]).model,
        points=[
            EnginePoint(batch_size=b, images_per_s=ips, latency_mean_ms=1, latency_p50_ms=1, latency_p99_ms=1, iterations=100)
            for b, ips in ((64, 1700.0), (256, 2000.0), (512, 2100.0))
        ],
    )
    engine_file = write_json_atomic(tmp_path / "engine.json", engine.to_dict())
    out = tmp_path / "r"
    result = run_cli(*map(str, results_files), "--engine", str(engine_file), "--out", str(out))
    assert result.exit_code == 0, result.output
    report = report_json(out)
    for target in ("rayscale", "triton"):
        for gpus in (1, 2, 4):
            g = group(report, target, gpus)
            assert g["engine_batch_size"] == 256  # the server's max batch size, not the engine's 512
            assert g["engine_fraction"] == pytest.approx(g["peak_images_per_s"] / (gpus * 2000.0))
    assert "of engine ceiling" in (out / "report.md").read_text()

    # where the engine file also measured input already on the GPU, that is the ceiling
    engine.points += [
        EnginePoint(
            batch_size=b,
            images_per_s=ips,
            latency_mean_ms=1,
            latency_p50_ms=1,
            latency_p99_ms=1,
            iterations=100,
            input_location="device",
        )
        for b, ips in ((256, 3600.0), (512, 3900.0))
    ]
    write_json_atomic(engine_file, engine.to_dict())
    result = run_cli(*map(str, results_files), "--engine", str(engine_file), "--out", str(tmp_path / "r2"))
    assert result.exit_code == 0, result.output
    g = group(report_json(tmp_path / "r2"), "rayscale", 2)
    assert g["engine_batch_size"] == 256 and g["engine_ceiling_images_per_s"] == pytest.approx(2 * 3600.0)


def test_open_loop_points_are_their_own_series_against_offered_rate(tmp_path):
    closed = sweep("rayscale", 1)
    rates = (50.0, 100.0, 150.0, 250.0)
    opened = []
    for rate in rates:
        p = closed_loop_point(
            "rayscale",
            1,
            1,
            mode="open",
            rate_rps=rate,
            images_per_s=min(rate * IMAGES_PER_REQUEST, 1500.0),
            latency=LatencyStats(p50_ms=12.0, p99_ms=20.0 if rate * 8 < 1500 else 900.0),
        )
        p.concurrency = None
        opened.append(p)
    report = build_report([bench_result(closed + opened)])
    closed_label = "rayscale, http via proxy, 1 process/GPU, closed loop, 8 img/req"
    open_label = "rayscale, http via proxy, 1 process/GPU, open loop, 8 img/req"
    assert report.series == [closed_label, open_label]
    assert report.load_axis == {closed_label: "concurrency", open_label: "rate_rps"}
    open_group = next(g for g in report.groups if g.mode == "open")
    assert open_group.peak_images_per_s == 1500.0 and open_group.knee.load == 150.0
    write_report(report, tmp_path / "out")
    assert "rate (req/s)" in (tmp_path / "out" / "report.md").read_text()


# ---- outputs ------------------------------------------------------------------------------------------


def test_plots_are_png_images_and_csv_has_one_row_per_point(results_files, tmp_path):
    report = build_report(load_all(results_files), ReportConfig(costs_usd_per_hour=parse_costs(COSTS), slo_p99_ms=50.0))
    written = write_report(report, tmp_path / "out")
    pngs = [p for p in written if p.suffix == ".png"]
    assert {p.name for p in pngs} == {
        "throughput_vs_load.png",
        "latency_vs_throughput.png",
        "scaling_efficiency.png",
        "targets_side_by_side.png",
        "cost_per_1000_images.png",
    }
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        height, width = mpimg.imread(png).shape[:2]
        assert height > 100 and width > 100
    md = (tmp_path / "out" / "report.md").read_text()
    assert all(f"({p.name})" in md for p in pngs)  # the report embeds every plot

    with open(tmp_path / "out" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(all_points(results_files))
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["usable"] == "False" and "503" in failed["flags"]
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temp files


def test_directory_of_results_is_read_like_the_files(results_files, tmp_path):
    out = tmp_path / "from-dir"
    result = run_cli(str(results_files[0].parent), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert len(report_json(out)["points"]) == len(all_points(results_files))


def test_a_rerun_point_replaces_the_earlier_one_and_says_so(results_files, tmp_path):
    rerun = closed_loop_point("rayscale", 1, 4, images_per_s=1550.0)
    rerun_file = write_json_atomic(tmp_path / "rerun.json", bench_result([rerun]).to_dict())
    report = build_report(load_all([results_files[0], rerun_file]), sources=[str(results_files[0]), str(rerun_file)])
    at_4 = [r for r in report.points if r.gpus == 1 and r.load == 4]
    assert len(at_4) == 1 and at_4[0].images_per_s == 1550.0 and at_4[0].source == str(rerun_file)
    assert report.groups[0].peak_images_per_s == 1550.0
    assert any(f"{rerun_file} replaces {results_files[0]}" in n for n in report.notes)


# ---- apples to apples ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "difference, setting, ours, theirs",
    [
        ({"sha": "77" * 32}, "model sha256", SHA[:12], "77" * 6),
        ({"precision": "fp32"}, "precision", "fp16", "fp32"),
        ({"gpu": "NVIDIA A100-SXM4-80GB"}, "GPU type", H100, "NVIDIA A100-SXM4-80GB"),
        ({"max_batch_size": 64}, "max batch size", "256", "64"),
    ],
)
def test_mismatched_results_are_refused_unless_allowed(results_files, tmp_path, difference, setting, ours, theirs):
    other_result = bench_result(sweep("triton", 1), triton=True, **difference)
    other = write_json_atomic(tmp_path / "other.json", other_result.to_dict())
    files = [results_files[0], other]
    result = run_cli(*map(str, files), "--out", str(tmp_path / "refused"))
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in result.output
    assert setting in message and ours in message and theirs in message
    assert str(files[0]) in message and str(other) in message and "--allow-mismatch" in message
    assert not (tmp_path / "refused").exists()

    out = tmp_path / "allowed"
    result = run_cli(*map(str, files), "--allow-mismatch", "--out", str(out))
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    assert "Not like for like" in md and f"{setting} differs" in md and theirs in md
    assert report_json(out)["mismatches"][0]["setting"] == setting


def test_engine_from_another_gpu_is_refused(results_files, tmp_path):
    bench = load_results(results_files[0])
    env = dict(bench.environment, gpus=[{"index": 0, "name": "NVIDIA L4"}])
    engine = EngineBenchResult(
        command="rayscale engine-bench", environment=env, model=bench.model, points=[EnginePoint(256, 900.0, 1, 1, 1, 10)]
    )
    with pytest.raises(ResultsError, match="GPU type differs.*NVIDIA L4 in l4-engine"):
        build_report([bench], engine=engine, engine_source="l4-engine")


# ---- bad input --------------------------------------------------------------------------------------


def test_parse_costs_accepts_the_documented_forms():
    assert parse_costs("1gpu:1.5,2gpu:3") == {1: 1.5, 2: 3.0}
    assert parse_costs(" 4:6.0 , 8 gpus:$12 ") == {4: 6.0, 8: 12.0}


@pytest.mark.parametrize(
    "text, says",
    [
        ("", "empty"),
        ("1gpu", "no ':'"),
        ("onegpu:1.5", "integer"),
        ("1gpu:cheap", "number of dollars"),
        ("0gpu:1.5", "≥ 1"),
        ("1gpu:-2", "> 0"),
        ("1gpu:1,1gpu:2", "twice"),
    ],
)
def test_bad_costs_give_one_line_errors(results_files, tmp_path, text, says):
    with pytest.raises(ConfigError, match=says) as err:
        parse_costs(text)
    assert "\n" not in str(err.value)
    result = run_cli(str(results_files[0]), "--costs", text, "--out", str(tmp_path / "r"))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --costs") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


def test_costs_and_gpu_hour_cost_together_are_refused(results_files, tmp_path):
    result = run_cli(str(results_files[0]), "--costs", COSTS, "--gpu-hour-cost", "2", "--out", str(tmp_path / "r"))
    assert result.exit_code == 1 and "not both" in result.stderr


def test_missing_price_for_a_gpu_count_is_noted(results_files):
    report = build_report(load_all(results_files), ReportConfig(costs_usd_per_hour={1: 2.0, 2: 4.1}))
    four = [g for g in report.groups if g.gpus == 4]
    assert all(g.cost_per_1000_images_usd is None for g in four)
    assert any("no price for 4 GPU(s)" in n for n in report.notes)


def test_engine_file_given_as_results_says_to_use_engine_option(tmp_path):
    engine = EngineBenchResult(
        command="rayscale engine-bench", environment={}, model={}, points=[EnginePoint(256, 900.0, 1, 1, 1, 10)]
    )
    path = write_json_atomic(tmp_path / "engine.json", engine.to_dict())
    result = run_cli(str(path), "--out", str(tmp_path / "r"))
    assert result.exit_code == 1 and f"--engine {path}" in result.stderr


# ---- bottleneck rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, cause",
    [
        ({"client_cpu_saturated": True, "client_cpu_pct": 99.0}, "client"),
        ({}, "gpu"),  # the saturated point's GPUs are 93% busy
        ({"gpus": [GpuSummary(index=0, name=H100, util_mean_pct=60.0, samples=10)]}, "queueing"),
        (
            {
                "gpus": [GpuSummary(index=0, name=H100, util_mean_pct=20.0, samples=10)],
                "server": ServerStats(requests=100, queue_ms_per_request=0.4, compute_ms_per_request=7.0),
            },
            "serving-path",
        ),
    ],
)
def test_bottleneck_rules_name_a_cause(overrides, cause):
    point = closed_loop_point("rayscale", 1, 32, **overrides)  # well past saturation: queueing dominates
    report = build_report([bench_result([point])])
    assert report.groups[0].bottleneck.cause == cause


def test_a_point_without_latency_samples_shows_dashes_not_zero_milliseconds(results_files, tmp_path):
    """perf_analyzer keeps only each window's p95 for a point it could not stabilise."""
    unstable = closed_loop_point("triton", 1, 512, status="unstable")
    unstable.transport = "perf_analyzer"
    unstable.latency = LatencyStats(p95_ms=161.0)
    extra = tmp_path / "pa.json"
    write_json_atomic(extra, bench_result([unstable], triton=True).to_dict())
    report = build_report(load_all([*results_files, extra]), sources=[str(f) for f in [*results_files, extra]])
    row = next(r for r in report.points if r.transport == "perf_analyzer")
    assert (row.latency_p50_ms, row.latency_p95_ms, row.latency_p99_ms, row.latency_mean_ms) == (None, 161.0, None, None)
    write_report(report, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| 512 | " in md
    line = next(row for row in md.splitlines() if row.startswith("| 512 | ") and "161.0" in row)
    assert line.count("| – |") >= 3 and "| 0.0 |" not in line


# ---- like for like, goodput, CPU runs, serving layout ------------------------------------------------


def a_run(
    target: str, points: list[PointResult], *, config: dict | None = None, serve: dict | None = None, gpus_on_host: int = 4
) -> BenchResult:
    """A results file as bench writes it, with the bench config and serve config given."""
    result = bench_result(points, triton=target == "triton")
    if config is not None:
        result.config = config
    if serve is not None:
        result.serve_config = serve
    result.environment = dict(result.environment, gpus=result.environment["gpus"][:gpus_on_host])
    return result


def test_leaders_and_ratios_compare_only_the_same_transport_and_request_size(tmp_path):
    """rayscale over the handle at 256 img/request never leads Triton over HTTP at 32; like pairs do get ratios."""
    handle_256 = [
        closed_loop_point("rayscale", 1, c, transport="handle", images_per_request=256, images_per_s=ips)
        for c, ips in ((4, 30000.0), (16, 38000.0))
    ]
    rayscale_http_32 = [
        closed_loop_point("rayscale", 1, c, images_per_request=32, images_per_s=ips) for c, ips in ((16, 20000.0), (64, 24000.0))
    ]
    triton_http_32 = [
        closed_loop_point("triton", 1, c, images_per_request=32, images_per_s=ips) for c, ips in ((16, 15000.0), (64, 19200.0))
    ]
    results = [
        a_run("rayscale", handle_256, config={"handle": True}),
        a_run("rayscale", rayscale_http_32, config={"handle": False}),
        a_run("triton", triton_http_32, config={"handle": False, "client": "rayscale"}),
    ]
    report = build_report(results, sources=["handle.json", "http.json", "triton.json"])

    handle_series = next(s for s in report.series if "handle" in s)
    triton_series = next(s for s in report.series if s.startswith("triton"))
    http_series = next(s for s in report.series if s.startswith("rayscale") and "handle" not in s)
    assert "256 img/req" in handle_series and "32 img/req" in triton_series
    for c in report.comparisons:
        assert not ({handle_series, triton_series} <= set(c.peak_images_per_s)), "handle-256 ranked against HTTP-32"
    handle_alone = next(c for c in report.comparisons if handle_series in c.peak_images_per_s)
    assert handle_alone.leader is None and handle_alone.lead_ratio is None
    assert (handle_alone.transport_kind, handle_alone.images_per_request) == ("handle", 256)
    pair = next(c for c in report.comparisons if triton_series in c.peak_images_per_s)
    assert (pair.transport_kind, pair.images_per_request) == ("http", 32)
    assert pair.leader == http_series and pair.runner_up == triton_series
    assert pair.lead_ratio == pytest.approx(24000.0 / 19200.0)

    write_report(report, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    summary = md.split("## Summary")[1].split("\n## ")[0]
    assert f"**{http_series}** leads {triton_series} at peak by ×1.25" in summary
    assert not any(handle_series in line and "leads" in line for line in summary.splitlines())
    side = md.split("## Side by side")[1].split("\n## ")[0]
    assert "same transport" in side and "same images per request" in side
    handle_row = next(line for line in side.splitlines() if line.startswith("| ") and handle_series in line)
    assert "38,000.0" in handle_row and "no like-for-like partner" in handle_row  # shown, never ranked
    assert "×" not in handle_row
    saved = report_json(tmp_path / "out")["comparisons"]
    assert [(c["transport_kind"], c["images_per_request"], c["leader"]) for c in saved] == [
        ("handle", 256, None),
        ("http", 32, http_series),
    ]


def test_goodput_counts_a_point_only_where_its_p99_meets_the_slo(results_files, tmp_path):
    slo_ms = 30.0  # the 1-GPU peak (p99 34 ms) misses it, concurrency 2 (p99 19 ms) meets it
    out = tmp_path / "r"
    result = run_cli(*map(str, results_files), "--slo-p99-ms", str(slo_ms), "--out", str(out))
    assert result.exit_code == 0, result.output
    report = report_json(out)
    checked = 0
    for row in report["points"]:
        if not row["usable"]:
            assert row["goodput_images_per_s"] is None
            continue
        expected = row["images_per_s"] if row["latency_p99_ms"] <= slo_ms else 0.0
        assert row["goodput_images_per_s"] == pytest.approx(expected)
        checked += 1
    assert checked > 0 and any(r["goodput_images_per_s"] == 0.0 for r in report["points"])
    assert report["parameters"]["goodput_method"] == "p99-estimate"
    assert {r["goodput_method"] for r in report["points"] if r["usable"]} == {"p99-estimate"}
    one_gpu = group(report, "rayscale", 1)
    best = max(
        r["goodput_images_per_s"] for r in report["points"] if r["target"] == "rayscale" and r["gpus"] == 1 and r["usable"]
    )
    assert one_gpu["goodput_images_per_s"] == pytest.approx(best) and best < one_gpu["peak_images_per_s"]
    assert one_gpu["peak_goodput_images_per_s"] == 0.0  # the peak is past the SLO

    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    assert header.index("goodput_images_per_s") == header.index("images_per_s") + 1
    md = (out / "report.md").read_text()
    assert "goodput img/s" in md and "goodput at peak" in md
    assert "estimated" in md and "p99 meets the SLO" in md  # the report says how goodput was computed
    assert "| ≈0.0 |" in md and "histogram" not in md  # each estimated figure is marked

    plain = build_report(load_all(results_files))
    assert all(r.goodput_images_per_s is None for r in plain.points)


def point_with_histogram(
    concurrency: int, *, within_ms: tuple[float, float], missing_ms: tuple[float, float], missing_share: float
) -> PointResult:
    """A point as rayscale's load generator writes it: percentiles and a histogram of the same 2000 requests."""
    rng = np.random.default_rng(concurrency)
    missing = int(2000 * missing_share)
    latencies_ms = np.concatenate([rng.uniform(*within_ms, size=2000 - missing), rng.uniform(*missing_ms, size=missing)])
    latencies_s = latencies_ms / 1000
    return closed_loop_point(
        "rayscale",
        1,
        concurrency,
        latency=latency_stats(latencies_s),
        latency_histogram=LatencyHistogram.from_latencies_s(latencies_s),
    )


def test_goodput_from_a_latency_histogram_counts_the_requests_within_the_slo(tmp_path):
    """A point whose p99 misses the SLO but 95% of whose requests met it has 95% of its throughput as goodput."""
    slo_ms = 30.0
    shares = {1: 0.0, 4: 0.05, 16: 0.5}  # share of requests that took 40-80 ms; the rest took 5-25 ms
    points = [
        point_with_histogram(c, within_ms=(5.0, 25.0), missing_ms=(40.0, 80.0), missing_share=share)
        for c, share in shares.items()
    ]
    rayscale_file = write_json_atomic(tmp_path / "rayscale.json", bench_result(points).to_dict())
    # Triton's file comes from before histograms were kept: its goodput stays the p99 estimate
    old = bench_result(sweep("triton", 1), triton=True).to_dict()
    for point in old["points"]:
        del point["latency_histogram"]
    triton_file = write_json_atomic(tmp_path / "triton.json", old)

    out = tmp_path / "r"
    result = run_cli(str(rayscale_file), str(triton_file), "--slo-p99-ms", str(slo_ms), "--out", str(out))
    assert result.exit_code == 0, result.output
    report = report_json(out)
    rows = {(r["target"], r["concurrency"]): r for r in report["points"]}
    for concurrency, share in shares.items():
        row = rows[("rayscale", concurrency)]
        assert row["goodput_method"] == "histogram"
        assert row["goodput_images_per_s"] == pytest.approx(row["images_per_s"] * (1 - share))
    at_95 = rows[("rayscale", 4)]
    assert at_95["latency_p99_ms"] > slo_ms and not at_95["meets_slo"] and at_95["goodput_images_per_s"] > 0
    for concurrency in CONCURRENCIES:
        row = rows[("triton", concurrency)]
        assert row["goodput_method"] == "p99-estimate"
        assert row["goodput_images_per_s"] == (row["images_per_s"] if row["latency_p99_ms"] <= slo_ms else 0.0)
    assert report["parameters"]["goodput_method"] == "mixed"
    assert report["parameters"]["goodput_bucket_width_pct"] == pytest.approx(4.91)
    # the best goodput is the 95% point's, not the best point under the SLO (concurrency 1)
    one_gpu = group(report, "rayscale", 1)
    assert one_gpu["goodput_load"] == 4 and one_gpu["goodput_method"] == "histogram"
    assert one_gpu["goodput_images_per_s"] == pytest.approx(0.95 * at_95["images_per_s"])
    assert one_gpu["slo_load"] == 1
    assert group(report, "triton", 1)["goodput_method"] == "p99-estimate"

    md = (out / "report.md").read_text()
    goodput_text = f"{at_95['goodput_images_per_s']:,.1f}"
    rayscale_row = next(row for row in md.splitlines() if row.startswith("| 4 | ") and goodput_text in row)
    assert "≈" not in rayscale_row
    assert any(row.startswith("| 64 | ") and "| ≈0.0 |" in row for row in md.splitlines())  # Triton's estimate is marked
    definition = next(row for row in md.splitlines() if row.startswith("- **Goodput**"))
    assert "histogram" in definition and "4.9% wide" in definition and "marked ≈" in definition


CPU_ENVIRONMENT = {"gpus": [], "gpu_driver": None, "cpu": {"model": "Intel Xeon", "logical_cores": 2}}


def quickstart_on_cpu(**serve) -> BenchResult:
    """What scripts/quickstart.sh records on a machine without GPUs: no GPU inventory, no GPU samples."""
    points = [
        closed_loop_point("rayscale", 1, c, gpus=[], images_per_request=4, images_per_s=ips) for c, ips in ((1, 12.0), (4, 16.9))
    ]
    result = bench_result(points)
    result.environment = dict(result.environment, **CPU_ENVIRONMENT)
    result.serve_config = {"max_batch_size": 256, "replicas": 1, "provider": "auto", "ingress": "proxy"} | serve
    return result


@pytest.mark.parametrize(
    "serve", [{"gpus_per_replica": 0.0}, {"gpus_per_replica": 1.0}], ids=["no-gpu-per-replica", "ray-logical-gpus"]
)
def test_a_run_without_gpus_is_labelled_cpu_and_never_priced_at_a_gpu_price(tmp_path, serve):
    bench = write_json_atomic(tmp_path / "bench.json", quickstart_on_cpu(**serve).to_dict())
    out = tmp_path / "r"
    result = run_cli(str(bench), "--gpu-hour-cost", "2.5", "--slo-p99-ms", "1000", "--out", str(out))
    assert result.exit_code == 0, result.output
    report = report_json(out)
    (g,) = report["groups"]
    assert (g["hardware"], g["gpus"], g["units"]) == ("CPU", 0, 1)
    assert g["hourly_cost_usd"] is None and g["cost_per_1000_images_usd"] is None
    assert all(r["hardware"] == "CPU" and r["cost_per_1000_images_usd"] is None for r in report["points"])
    md = (out / "report.md").read_text()
    summary = md.split("## Summary")[1].split("\n## ")[0]
    assert "peak 16.9 img/s on CPU, 1 replica(s)" in summary
    assert "GPU(s)" not in summary and "per 1000 images" not in summary and "--cpu-hour-cost" in summary
    assert "GPU prices do not apply" in md

    out = tmp_path / "priced"
    result = run_cli(str(bench), "--cpu-hour-cost", "0.2", "--out", str(out))
    assert result.exit_code == 0, result.output
    (g,) = report_json(out)["groups"]
    assert g["hourly_cost_usd"] == pytest.approx(0.2)
    assert g["cost_per_1000_images_usd"] == pytest.approx(0.2 / (3600 * 16.9) * 1000)


def test_triton_instances_on_cpu_are_a_cpu_run_even_on_a_gpu_host():
    point = closed_loop_point("triton", 1, 4, gpus=[])
    serve = {"max_batch_size": 256, "instance_group": [{"kind": "KIND_CPU", "count": 2}]}
    report = build_report([a_run("triton", [point], serve=serve)], ReportConfig(gpu_hour_cost_usd=2.5))
    assert report.groups[0].hardware == "CPU" and report.groups[0].hourly_cost_usd is None
    gpu_serve = {"max_batch_size": 256, "instance_group": [{"kind": "KIND_GPU", "count": 4, "gpus": [0]}]}
    report = build_report(
        [a_run("triton", [closed_loop_point("triton", 1, 4)], serve=gpu_serve)], ReportConfig(gpu_hour_cost_usd=2.5)
    )
    assert report.groups[0].hardware == "GPU" and report.groups[0].hourly_cost_usd == 2.5
    assert report.series == ["triton, http, 4 instances/GPU, 8 img/req"]


RAYSCALE_SERVE = {"max_batch_size": 256, "batch_wait_ms": 2.0, "gpus_per_replica": 1.0, "replicas": 2}


def test_layout_is_in_labels_and_setup_and_older_files_read_as_http_through_the_proxy(tmp_path):
    new = a_run(
        "rayscale",
        [closed_loop_point("rayscale", 2, c) for c in (4, 16)],
        config={"transport": "grpc", "handle": False},
        serve=RAYSCALE_SERVE | {"processes_per_replica": 2, "ingress": "direct"},
    )
    older = a_run(
        "rayscale", [closed_loop_point("rayscale", 2, c) for c in (4, 16)], config={"binary": True}, serve=dict(RAYSCALE_SERVE)
    )
    handle = a_run(
        "rayscale",
        [closed_loop_point("rayscale", 2, c, transport="handle") for c in (4, 16)],
        config={"handle": True},
        serve=RAYSCALE_SERVE | {"ingress": "haproxy"},
    )
    files = [
        write_json_atomic(tmp_path / f"{name}.json", r.to_dict())
        for name, r in (("new", new), ("older", older), ("handle", handle))
    ]
    built = build_report(load_all(files), sources=[str(f) for f in files])
    report = json.loads(json.dumps(built.to_dict()))  # as report.json holds it
    assert report["series"] == [
        "rayscale, grpc via direct, 2 processes/GPU, 8 img/req",
        "rayscale, http via proxy, 1 process/GPU, 8 img/req",
        "rayscale, handle, 1 process/GPU, 8 img/req",  # a handle call skips the ingress
    ]
    by_kind = {g["transport_kind"]: g for g in report["groups"]}
    assert (by_kind["grpc"]["ingress"], by_kind["grpc"]["processes_per_gpu"]) == ("direct", 2.0)
    assert (by_kind["http"]["ingress"], by_kind["http"]["processes_per_gpu"]) == ("proxy", 1.0)
    assert by_kind["handle"]["ingress"] is None
    assert all(g["gpus"] == 2 for g in report["groups"])
    md = render_markdown(built, plots=[])
    layout = md.split("### Serving layout")[1].split("\n## ")[0]
    assert f"| rayscale | grpc via direct, 2 processes/GPU | {files[0]} |" in layout
    assert f"| rayscale | http via proxy, 1 process/GPU | {files[1]} |" in layout
    # three transports: three like-for-like classes, no leader among them
    assert all(c["leader"] is None for c in report["comparisons"])


def with_host_cpu(point: PointResult, *, server_cores: float, client_cores: float, part: str = "replica") -> PointResult:
    """The point as bench records it when the server's processes kept ``server_cores`` busy."""
    point.host_cpu = HostCpu(measured_s=point.measured_s, images=round(point.images_per_s * point.measured_s),
                             client_cpu_s=client_cores * point.measured_s,
                             **{f"{part}_cpu_s": server_cores * point.measured_s})  # fmt: skip
    return point


def test_host_cpu_per_image_and_cores_per_gpu_at_each_rate(tmp_path):
    rayscale = a_run("rayscale", [with_host_cpu(closed_loop_point("rayscale", 2, c), server_cores=cores, client_cores=1.0)
                                  for c, cores in ((4, 3.0), (64, 6.0))],
                     serve=RAYSCALE_SERVE | {"ingress": "direct"})  # fmt: skip
    triton = a_run("triton", [with_host_cpu(closed_loop_point("triton", 2, 64), server_cores=5.0, client_cores=1.0,
                                            part="triton")])  # fmt: skip
    older = a_run("rayscale", [closed_loop_point("rayscale", 1, 64)], serve=RAYSCALE_SERVE | {"replicas": 1})
    files = [write_json_atomic(tmp_path / f"{n}.json", r.to_dict()) for n, r in
             (("rayscale", rayscale), ("triton", triton), ("older", older))]  # fmt: skip
    out = tmp_path / "r"
    write_report(build_report(load_all(files), sources=[str(f) for f in files]), out)
    rows = {(r["target"], r["gpus"], r["load"]): r for r in report_json(out)["points"]}

    for (target, gpus, load), cores in ((("rayscale", 2, 4), 3.0), (("rayscale", 2, 64), 6.0), (("triton", 2, 64), 5.0)):
        row = rows[(target, gpus, load)]
        images_per_s = row["images_per_s"]
        assert row["server_cpu_s_per_1000_images"] == pytest.approx(1000 * cores / images_per_s, rel=1e-3)
        assert row["client_cpu_s_per_1000_images"] == pytest.approx(1000 * 1.0 / images_per_s, rel=1e-3)
        assert row["server_cores"] == pytest.approx(cores) and row["server_cores_per_gpu"] == pytest.approx(cores / 2)
    assert rows[("rayscale", 2, 64)]["server_cpu_parts"] == "replicas"
    assert rows[("triton", 2, 64)]["server_cpu_parts"] == "triton"
    older_row = rows[("rayscale", 1, 64)]  # a file from before host CPU was measured
    assert older_row["server_cpu_s_per_1000_images"] is None and older_row["server_cores_per_gpu"] is None

    with open(out / "summary.csv") as f:
        csv_rows = {(r["target"], r["gpus"], r["load"]): r for r in csv.DictReader(f)}
    assert float(csv_rows[("rayscale", "2", "64.0")]["server_cores_per_gpu"]) == pytest.approx(3.0)
    assert csv_rows[("rayscale", "1", "64.0")]["server_cores_per_gpu"] == ""

    md = (out / "report.md").read_text()
    section = md.split("## Host CPU per image")[1].split("\n## ")[0]
    peak = rows[("rayscale", 2, 64)]
    assert f"| 64 | {peak['images_per_s']:,.1f} | {1000 * 6.0 / peak['images_per_s']:.2f} | replicas |" in section
    assert "leave out the processes in front of the replicas" in section  # the ingress is not in the figure
    summary = md.split("## Summary")[1].split("\n## ")[0]
    assert "server host CPU 3.00 cores per GPU" in summary
    assert "### rayscale, http via proxy" not in section  # nothing measured, no table of dashes


def test_shared_gpus_count_processes_per_gpu_from_the_replica_share():
    shared = a_run(
        "rayscale",
        [closed_loop_point("rayscale", 1, 4, replicas=4)],
        serve=RAYSCALE_SERVE | {"gpus_per_replica": 0.25, "replicas": 4, "ingress": "haproxy"},
    )
    (g,) = build_report([shared]).groups
    assert (g.gpus, g.replicas, g.processes_per_gpu, g.ingress) == (1, 4, 4.0, "haproxy")


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--cpu-hour-cost", "-1"], "--cpu-hour-cost must be > 0"),
        (["--gpu-hour-cost", "0"], "--gpu-hour-cost must be > 0"),
        (["--slo-p99-ms", "0"], "--slo-p99-ms must be > 0"),
        (["--throughput-target", "-5"], "--throughput-target must be > 0"),
    ],
)
def test_bad_report_settings_give_one_line_errors(results_files, tmp_path, flags, says):
    result = run_cli(str(results_files[0]), *flags, "--out", str(tmp_path / "r"))
    assert result.exit_code == 1 and result.stderr.startswith(f"error: {says}")
    assert result.stderr.count("\n") == 1 and not (tmp_path / "r").exists()


def test_build_report_takes_its_settings_as_one_report_config(results_files):
    with pytest.raises(ConfigError, match="takes a ReportConfig, got dict"):
        build_report(load_all(results_files), {"slo_p99_ms": 40.0})
    with pytest.raises(ConfigError, match="not both"):
        ReportConfig(costs_usd_per_hour={1: 2.0}, gpu_hour_cost_usd=2.0)
    config = ReportConfig(slo_p99_ms=40.0, knee_factor=3.0)
    report = build_report(load_all(results_files), config)
    assert report.parameters["slo_p99_ms"] == 40.0 and report.parameters["knee_factor"] == 3.0

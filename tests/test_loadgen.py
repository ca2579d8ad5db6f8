"""`rayscale bench` as users rely on it: valid sweeps, honest percentiles, open loop without coordinated omission."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rayscale.config import ServeConfig
from rayscale.errors import ConfigError, ResultsError, ServerError
from rayscale.loadgen import BenchConfig, run_bench
from rayscale.loadgen.events import WindowMeasured
from rayscale.loadgen.schedule import arrival_offsets
from rayscale.loadgen.stats import is_stable, latency_stats, percentile
from rayscale.loadgen.trivial_server import TrivialServer
from rayscale.results import BenchResult, LatencyHistogram, PointResult, WindowStats, load_results, write_json_atomic

from conftest import MIN_CPU_S_PER_1000_IMAGES_ON_CPU, free_port, start_local_ray

pytestmark = pytest.mark.timeout(900)

FAST = dict(warmup_s=0.5, window_s=1.0, duration_s=4.0, max_windows=4, client_cpus=0)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    start_local_ray(num_cpus=4, num_gpus=2, namespace="rayscale")
    yield
    ray.shutdown()


# ---- pure parts --------------------------------------------------------------------------------


def test_nearest_rank_percentiles_of_pooled_samples_equal_numpy():
    rng = np.random.default_rng(0)
    actors = [rng.lognormal(-4, 0.6, size=n) for n in (1000, 37, 5000)]
    pooled = np.concatenate(actors)
    stats = latency_stats(pooled)
    for p, got in ((50, stats.p50_ms), (90, stats.p90_ms), (99, stats.p99_ms), (99.9, stats.p999_ms)):
        expected = np.percentile(pooled, p, method="inverted_cdf") * 1000
        assert got == pytest.approx(expected, rel=1e-12)
        assert percentile(pooled, p) * 1000 == pytest.approx(expected, rel=1e-12)
    # averaging per-actor percentiles is not the same thing (and not what rayscale does)
    averaged = np.mean([np.percentile(a, 99, method="inverted_cdf") for a in actors]) * 1000
    assert abs(averaged - stats.p99_ms) > 1e-6
    assert stats.count == pooled.size and stats.max_ms == pytest.approx(pooled.max() * 1000)


def test_latency_histogram_is_exact_at_bucket_edges_and_never_overstates_between_them():
    # 10 ms and 100 ms are bucket edges (every power of ten is); 10.3 ms lies inside the bucket (10, 10.49] ms
    samples_ms = [2.0, 5.0, 9.99, 10.0, 10.3, 10.6, 50.0, 100.0, 120.0, 2_000_000.0]
    histogram = LatencyHistogram.from_latencies_s(np.array(samples_ms) / 1000)
    assert histogram.count == len(samples_ms) and len(histogram.counts) < 48  # sparse: non-empty buckets only
    assert histogram.fraction_within(10.0) == 0.4  # 10.0 ms itself is within a 10 ms SLO
    assert histogram.fraction_within(100.0) == 0.8
    # 10.3 ms met a 10.4 ms SLO, but its bucket straddles the SLO, so it counts as missing it
    assert histogram.fraction_within(10.4) == 0.4
    assert histogram.fraction_within(10.5) == 0.5
    assert histogram.fraction_within(1e9) == 0.9  # 2000 s is past the last edge (100 s): never within
    assert LatencyHistogram().fraction_within(100.0) == 0.0

    # any SLO: at most the true share, at least the true share one bucket (4.9 %) below it
    latencies_s = np.random.default_rng(0).lognormal(-4, 0.8, size=20_000)
    histogram = LatencyHistogram.from_latencies_s(latencies_s)
    assert histogram.bucket_width_pct == pytest.approx(4.914, abs=1e-3)
    for slo_ms in (3.0, 7.7, 18.0, 18.3, 50.0, 100.0):
        true_share = np.mean(latencies_s * 1000 <= slo_ms)
        one_bucket_below = np.mean(latencies_s * 1000 <= slo_ms / (1 + histogram.bucket_width_pct / 100))
        assert one_bucket_below <= histogram.fraction_within(slo_ms) <= true_share


def test_latency_histogram_round_trips_through_a_results_file_and_old_files_load_without_one(tmp_path):
    histogram = LatencyHistogram.from_latencies_s(np.random.default_rng(1).uniform(0.004, 0.2, size=5000))
    point = PointResult(
        target="rayscale",
        transport="http-binary",
        mode="closed",
        replicas=1,
        images_per_request=8,
        concurrency=4,
        latency=latency_stats(np.array([0.004, 0.2])),
        latency_histogram=histogram,
    )
    result = BenchResult(command="rayscale bench", config={}, environment={}, model={}, points=[point])
    path = write_json_atomic(tmp_path / "r.json", result.to_dict())
    loaded = load_results(path).points[0].latency_histogram
    assert loaded == histogram and loaded.fraction_within(50.0) == histogram.fraction_within(50.0)
    stored = json.loads(path.read_text())["points"][0]["latency_histogram"]
    assert len(stored["counts"]) == len(histogram.counts) < 120  # 4-200 ms: ~82 buckets, each one key
    # a file written before histograms were kept
    old = json.loads(path.read_text())
    del old["points"][0]["latency_histogram"]
    old_path = write_json_atomic(tmp_path / "old.json", old)
    assert load_results(old_path).points[0].latency_histogram is None


def test_stability_rule_needs_three_agreeing_windows():
    def w(ips: float, p95: float) -> WindowStats:
        return WindowStats(start_s=0, duration_s=1, requests=1, images_per_s=ips, p95_ms=p95)

    assert not is_stable([w(100, 10), w(101, 10)], 0.1)
    assert is_stable([w(50, 30), w(100, 10), w(104, 10.5), w(98, 9.8)], 0.1)
    assert not is_stable([w(100, 10), w(130, 10), w(100, 10)], 0.1)
    assert not is_stable([w(100, 10), w(100, 14), w(100, 10)], 0.1)


def test_open_loop_schedules():
    constant = arrival_offsets(200.0, 5.0, "constant")
    assert len(constant) == 1000
    np.testing.assert_allclose(np.diff(constant), 1 / 200.0)
    poisson = arrival_offsets(500.0, 20.0, "poisson", seed=3)
    assert len(poisson) == pytest.approx(10000, rel=0.05)
    gaps = np.diff(poisson)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: CV = 1
    assert not np.array_equal(poisson, arrival_offsets(500.0, 20.0, "poisson", seed=4))


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(url="http://x", concurrency=[]), "concurrency"),
        (dict(url="http://x", concurrency=None, rates_rps=[0.0]), "rates"),
        (dict(url="http://x", concurrency=[1], rates_rps=[10.0]), "exactly one load shape"),
        (dict(url="http://x:1", handle=True), "one target"),
        (dict(url="ftp://x"), "http://"),
        (dict(url="http://x", arrival="bursty", concurrency=None, rates_rps=[5.0]), "arrival"),
        (dict(url="http://x", replicas=[]), "replicas"),
    ],
)
def test_bad_bench_settings_are_refused_before_any_load(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        BenchConfig(**kwargs)


# ---- against real servers ----------------------------------------------------------------------


def test_unreachable_url_fails_before_load(tmp_path):
    cfg = BenchConfig(url=f"http://127.0.0.1:{free_port()}", concurrency=[1], out=str(tmp_path / "r.json"), **FAST)
    with pytest.raises(ServerError, match="cannot reach"):
        run_bench(cfg)
    assert not (tmp_path / "r.json").exists()


def test_open_loop_p99_shows_a_stall_that_closed_loop_cannot(ray_cluster, tmp_path):
    """A server that stalls 1.5 s: open-loop latency counts from the intended send time."""
    with TrivialServer() as server:
        results = {}
        for mode, shape in (("open", dict(concurrency=None, rates_rps=[40.0])), ("closed", dict(concurrency=[2]))):
            cfg = BenchConfig(
                url=server.url,
                images_per_request=[1],
                out=str(tmp_path / f"{mode}.json"),
                clients=1,
                warmup_s=0.5,
                window_s=4.0,
                duration_s=12.0,
                max_windows=3,
                client_cpus=0,
                **shape,
            )

            def stall_in_first_window(event, server=server):
                if isinstance(event, WindowMeasured) and event.index == 1:
                    server.stall(1.5)

            results[mode] = run_bench(cfg, on_event=stall_in_first_window).points[0]
        open_point, closed_point = results["open"], results["closed"]
        # ~60 of ~480 measured requests are due during the stall; each waits until it ends, so their
        # latencies from the intended send time spread over 0..1.5 s: the top 12% of the distribution
        assert open_point.latency.p99_ms >= 1000
        assert open_point.latency.p95_ms >= 500
        # closed loop: 2 slots each see one slow request; the rest are fast, the stall is hidden
        assert closed_point.latency.p90_ms < 100
        for p in (open_point, closed_point):
            assert p.requests_sent == p.requests_ok + p.requests_failed + p.requests_incomplete
            assert p.latency_histogram.count == p.latency.count  # the same requests as the percentiles
        # the histogram tells the same story (100 ms and 1 s are bucket edges, so these shares are exact)
        assert open_point.latency_histogram.fraction_within(1000.0) < 0.99
        assert closed_point.latency_histogram.fraction_within(100.0) >= 0.9
        assert load_results(tmp_path / "open.json").points[0].latency_histogram == open_point.latency_histogram
        assert open_point.offered_rps is None or open_point.offered_rps == pytest.approx(40.0)
        assert open_point.requests_per_s == pytest.approx(40.0, rel=0.15)


def test_closed_loop_counts_every_error(ray_cluster, tmp_path):
    with TrivialServer(fail_every=4) as server:
        cfg = BenchConfig(
            url=server.url, concurrency=[4], images_per_request=[2], out=str(tmp_path / "e.json"), clients=2, **FAST
        )
        point = run_bench(cfg).points[0]
    assert point.errors.get("http_500", 0) == point.requests_failed > 0
    assert point.requests_sent == point.requests_ok + point.requests_failed + point.requests_incomplete
    assert point.requests_failed == pytest.approx(point.requests_sent / 4, abs=8)


def assert_host_cpu_measured(point: PointResult, *, through_ingress: bool) -> None:
    """The replicas' CPU time over the point's windows, from the statistics they send, and (requests
    through rayscale's ingress) its HAProxy's: more than the model's arithmetic needs, no more than the
    machine's cores can give; the clients' beside it."""
    import os

    cpu = point.host_cpu
    assert cpu is not None and cpu.measured_s == point.measured_s
    assert cpu.images == round(point.images_per_s * point.measured_s)
    assert cpu.replica_cpu_s > 0 and cpu.triton_cpu_s is None
    if through_ingress:
        assert cpu.ingress_cpu_s is not None and cpu.ingress_cpu_s >= 0
        assert cpu.server_parts == ["replicas", "ingress"]
        assert cpu.server_cpu_s == pytest.approx(cpu.replica_cpu_s + cpu.ingress_cpu_s)
        [node] = point.ingress_traffic  # one node: everything it carried was served there
        assert node.requests == pytest.approx(point.requests_per_s * point.measured_s, rel=0.25, abs=3)  # the same span
        assert node.requests_remote == 0 and node.bytes_in > 0 and node.bytes_out > 0
    else:  # a handle call skips the ingress
        assert cpu.ingress_cpu_s is None and point.ingress_traffic == []
        assert cpu.server_parts == ["replicas"] and cpu.server_cpu_s == cpu.replica_cpu_s
    assert cpu.server_cpu_s_per_1000_images > MIN_CPU_S_PER_1000_IMAGES_ON_CPU
    assert cpu.server_cores <= os.cpu_count() * 1.1  # a replica's flush lags a window edge by at most 0.1 s
    assert 0 < cpu.client_cpu_s_per_1000_images < cpu.server_cpu_s_per_1000_images


def test_sweep_of_two_replica_counts_and_two_concurrencies_writes_a_valid_file(ray_cluster, model_dir, tmp_path):
    from rayscale.serve.cluster import down, up

    cfg = ServeConfig(
        model_dir=str(model_dir),
        replicas=1,
        gpus_per_replica=1,
        cpus_per_replica=0.5,
        provider="cpu",
        port=free_port(),
        grpc_port=free_port(),
        max_batch_size=8,
        batch_wait_ms=5,
    )
    app = up(cfg, exporter=False)
    try:
        out = tmp_path / "sweep.json"
        bench = BenchConfig(
            url=app.url, replicas=[1, 2], concurrency=[1, 2], images_per_request=[2], out=str(out), csv=True, clients=1, **FAST
        )
        run_bench(bench)
        loaded = load_results(out)
        assert isinstance(loaded, BenchResult) and loaded.status == "complete"
        assert [(p.replicas, p.concurrency) for p in loaded.points] == [(1, 1), (1, 2), (2, 1), (2, 2)]
        for p in loaded.points:
            assert p.status in ("ok", "unstable") and p.target == "rayscale"
            assert p.requests_sent == p.requests_ok + p.requests_failed + p.requests_incomplete
            assert p.requests_failed == 0 and p.images_per_s > 0
            assert p.latency.p50_ms <= p.latency.p99_ms <= p.latency.max_ms
            assert p.server is not None and p.server.requests > 0 and p.server.images == 2 * p.server.requests
            assert len(p.windows) >= 3
            assert_host_cpu_measured(p, through_ingress=True)
        assert loaded.model["sha256"] and loaded.environment["versions"]["ray"] == "2.60.0"
        assert loaded.serve_config["replicas"] == 2
        assert out.with_suffix(".csv").read_text().count("\n") == 5
        # the replica sweep really rescaled the app
        from rayscale.serve.cluster import status

        assert status(cfg.app_name).replica_states.get("RUNNING") == 2
        # an existing results file is never overwritten silently
        with pytest.raises(ResultsError, match="--overwrite"):
            run_bench(bench)
        # --resume skips what is there
        resumed = run_bench(
            BenchConfig(
                url=app.url,
                replicas=[2],
                concurrency=[1, 2],
                images_per_request=[2],
                out=str(out),
                resume=True,
                clients=1,
                **FAST,
            )
        )
        assert [p.started_at for p in resumed.points] == [p.started_at for p in loaded.points[2:]]
        # handle mode through the same batcher; without --replicas the app is measured as it runs
        handle_point = run_bench(
            BenchConfig(
                handle=True, concurrency=[2], images_per_request=[2], out=str(tmp_path / "handle.json"), clients=1, **FAST
            )
        ).points[0]
        assert handle_point.transport == "handle" and handle_point.requests_ok > 0 and handle_point.requests_failed == 0
        assert handle_point.replicas == 2 and status(cfg.app_name).replica_states.get("RUNNING") == 2
        assert_host_cpu_measured(handle_point, through_ingress=False)
        # ... and so it is under a label of the user's choosing, which records what runs
        labelled = run_bench(
            BenchConfig(
                url=app.url,
                target="rayscale-two",
                concurrency=[2],
                images_per_request=[2],
                out=str(tmp_path / "labelled.json"),
                clients=1,
                **FAST,
            )
        )
        assert [(p.target, p.replicas) for p in labelled.points] == [("rayscale-two", 2)]
        assert labelled.serve_config["replicas"] == 2 and labelled.serve_config["gpus_per_replica"] == 1
        assert status(cfg.app_name).replica_states.get("RUNNING") == 2
    finally:
        down(cfg.app_name)


def test_client_asks_for_uncompressed_responses():
    """A client that offers gzip makes Triton compress every response in its output stage.

    On an H100 that cost Triton 3-4x its throughput under rayscale's client alone; perf_analyzer
    offers no compression, and neither may rayscale's client.
    """
    import asyncio

    from rayscale.loadgen.client import LoadClient
    from rayscale.loadgen.target_spec import TargetSpec
    from rayscale.loadgen.trivial_server import TrivialServer

    async def one_request(url: str) -> None:
        client = LoadClient(TargetSpec(kind="http", url=url))
        try:
            await client.prepare(2)
        finally:
            await client.close()

    with TrivialServer() as server:
        asyncio.run(one_request(server.url))
        headers = {k.lower(): v for k, v in server.behaviour.last_headers.items()}
    assert headers["content-type"] == "application/octet-stream"
    assert "accept-encoding" not in headers

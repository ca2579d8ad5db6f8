"""`rayscale bench` without `--clients`: client actors sized from the load, so the client is never what a point measures."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from rayscale.loadgen import BenchConfig, run_bench
from rayscale.loadgen.events import PointRetried
from rayscale.loadgen.pool import free_cpus
from rayscale.loadgen.progress import ProgressPrinter
from rayscale.loadgen.sizing import plan_clients
from rayscale.loadgen.trivial_server import TrivialServer
from rayscale.results import load_results

from conftest import start_local_ray

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    start_local_ray(num_cpus=4, num_gpus=2, namespace="rayscale")
    yield
    ray.shutdown()


def test_client_actors_grow_with_the_load_within_the_clusters_cpus(ray_cluster):
    cpus = free_cpus()
    assert cpus >= 2  # the module's logical cluster (4 CPUs), little else running
    cfg = BenchConfig(url="http://127.0.0.1:1", concurrency=[1], client_cpus=0.5)

    def chosen(load, ipr=32, replicas=2, config=cfg, cpus_free=cpus):
        return plan_clients(config, load=load, images_per_request=ipr, replicas=replicas, cpus_free=cpus_free)

    closed = [chosen(c) for c in (1, 2, 4, 512)]
    assert closed[0] == 1  # one slot needs one actor
    assert closed == sorted(closed) and closed[-1] > closed[1]
    assert closed[-1] == int(cpus / 0.5)  # capped: every actor gets half a free core
    # bigger requests and more replicas (a faster server) need more actors for the same concurrency
    assert chosen(4, ipr=1) < chosen(4, ipr=32)
    assert chosen(64, replicas=1, cpus_free=64) < chosen(64, replicas=2, cpus_free=64) < 64
    # open loop: the rate is what the actors must send
    rates = BenchConfig(url="http://127.0.0.1:1", concurrency=None, rates_rps=[1.0], client_cpus=0.5)
    assert [chosen(r, ipr=8, config=rates) for r in (10, 1000, 100_000)] == [1, 3, int(cpus / 0.5)]
    # a handle call costs its actor far more CPU than an HTTP request
    handle = BenchConfig(handle=True, concurrency=[1], client_cpus=0.5)
    assert chosen(2, ipr=1, config=handle) == 2 > chosen(2, ipr=1) == 1
    # --clients is taken as given
    assert plan_clients(BenchConfig(url="http://127.0.0.1:1", clients=3), load=512, images_per_request=32,
                        replicas=2, cpus_free=1.0) == 3  # fmt: skip


def test_a_client_bound_point_is_measured_again_with_twice_the_actors(ray_cluster, tmp_path):
    """A point whose busiest actor reaches the saturation mark is measured again with twice the actors
    (here the mark is 1 % of a core, so any working actor reaches it, and it stays flagged)."""
    shared = dict(
        concurrency=[2], images_per_request=[1], warmup_s=0.3, window_s=0.5, duration_s=1.5, max_windows=3, client_cpus=0
    )
    with TrivialServer(delay_s=0.005) as server:
        events = []
        printer = ProgressPrinter(Console(file=io.StringIO(), width=200))

        def watch(event):
            events.append(event)
            printer(event)

        out = tmp_path / "saturated.json"
        point = run_bench(
            BenchConfig(url=server.url, out=str(out), client_cpu_saturated_pct=1.0, **shared), on_event=watch
        ).points[0]
        retried = [e for e in events if isinstance(e, PointRetried)]
        assert len(retried) == 1 and retried[0].point.clients == 1 and retried[0].clients == 2
        assert point.clients == 2 and point.client_cpu_saturated and point.requests_ok > 0
        assert load_results(out).points[0].clients == 2
        assert printer.out == out and "measuring again with 2" in printer.console.file.getvalue()

        # not saturated: measured once, with the one actor its load needs
        events.clear()
        calm = run_bench(BenchConfig(url=server.url, out=str(tmp_path / "calm.json"), **shared), on_event=events.append).points[0]
        assert calm.clients == 1 and not calm.client_cpu_saturated
        assert not any(isinstance(e, PointRetried) for e in events)

        # --clients fixes the count: a saturated point is recorded as measured, flagged
        events.clear()
        fixed = run_bench(BenchConfig(url=server.url, out=str(tmp_path / "fixed.json"), clients=1, client_cpu_saturated_pct=1.0,
                                      **shared), on_event=events.append).points[0]  # fmt: skip
        assert fixed.clients == 1 and fixed.client_cpu_saturated
        assert not any(isinstance(e, PointRetried) for e in events)

"""Observability: what Prometheus scrapes from rayscale, and the dashboard that reads it.

The exporter is scraped over real HTTP and parsed with prometheus_client's own parser; serving
statistics travel through the real StatsCollector actor on a local Ray cluster.
"""

from __future__ import annotations

import ast
import logging
import re
import socket
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from rayscale.dashboards import DASHBOARD_PATH, load_dashboard, promql_expressions
from rayscale.errors import ConfigError, ServerError
from rayscale.metrics import (
    BENCH_LATENCY_BOUNDS,
    GpuSampler,
    LoadMetrics,
    collect_gpu_samples,
    read_gpus,
    serve_exporter,
    start_gpu_samplers,
    start_node_exporters,
    stop_node_exporters,
    summarize_gpu_samples,
)
from rayscale.serve.stats import BATCH_BOUNDS, SECONDS_BOUNDS, ReplicaStats, get_or_create_collector, kill_collector

from conftest import ROOT, free_port, start_local_ray


def scrape(url: str) -> dict:
    """{sample name: {frozenset(labels): value}} plus the family types under '__types__'."""
    text = urllib.request.urlopen(url, timeout=30).read().decode()
    out: dict = {"__types__": {}}
    for family in text_string_to_metric_families(text):
        out["__types__"][family.name] = family.type
        for s in family.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def value(metrics: dict, name: str, **labels) -> float:
    return metrics[name][frozenset((k, str(v)) for k, v in labels.items())]


# ---------------------------------------------------------------- GPU readings without a GPU


def test_gpu_readings_are_empty_without_an_nvidia_driver():
    if read_gpus():
        pytest.skip("this machine has NVIDIA GPUs")
    with GpuSampler(interval_s=0.01) as sampler:
        pass
    assert sampler.samples == [] and sampler.stop() == []


def test_gpu_summary_per_node_and_gpu():
    samples = [
        {"t": t, "node": node, "index": i, "name": "H100", "util_pct": util, "mem_used_bytes": mem,
         "mem_total_bytes": 80 << 30, "power_w": power, "sm_clock_mhz": 1980, "temp_c": 50}
        for t, node, i, util, mem, power in [
            (1.0, "a", 0, 40.0, 10 << 30, 300.0),
            (1.5, "a", 0, 80.0, 12 << 30, None),  # power not reported by this board
            (1.0, "a", 1, 10.0, 1 << 30, 100.0),
            (1.0, "b", 0, 100.0, 70 << 30, 700.0),
        ]
    ]  # fmt: skip
    summaries = {(g.node, g.index): g for g in summarize_gpu_samples(samples)}
    assert set(summaries) == {("a", 0), ("a", 1), ("b", 0)}
    a0 = summaries[("a", 0)]
    assert (a0.util_mean_pct, a0.util_max_pct, a0.mem_used_max_bytes, a0.power_mean_w, a0.samples) == (
        60.0, 80.0, 12 << 30, 300.0, 2,
    )  # fmt: skip
    assert a0.mem_total_bytes == 80 << 30 and a0.name == "H100"


def test_sampling_interval_must_be_positive():
    with pytest.raises(ConfigError, match="interval_s must be > 0"):
        GpuSampler(interval_s=0)


# ---------------------------------------------------------------- exporter without Ray


def test_exporter_without_gpus_reports_zero_gpus(port):
    with serve_exporter("127.0.0.1", port, app_name=None) as server:
        m = scrape(server.url)
    assert value(m, "rayscale_gpus", node=socket.gethostname()) == len(read_gpus())
    if not read_gpus():
        assert "rayscale_gpu_utilization_percent" not in m  # families announced, no samples
        assert m["__types__"]["rayscale_gpu_utilization_percent"] == "gauge"
    assert "rayscale_serving_up" not in m  # app_name=None: this exporter leaves serving metrics to another


def test_exporter_port_in_use_names_the_fix():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        with pytest.raises(ServerError, match=rf"127.0.0.1:{taken}.*pass a free port"):
            serve_exporter("127.0.0.1", taken, app_name=None)


def test_binding_beyond_loopback_warns(caplog):
    caplog.set_level(logging.WARNING, logger="rayscale.metrics")
    with pytest.raises(ServerError):  # 192.0.2.1 (TEST-NET-1) is never a local address
        serve_exporter("192.0.2.1", free_port(), app_name=None)
    assert "reachable from other machines" in caplog.text


# ---------------------------------------------------------------- load-generator metrics


def test_load_metrics_after_known_windows(port):
    lm = LoadMetrics()
    lm.set_point(target="rayscale", transport="http-binary", replicas=2, concurrency=None, rate_rps=100.0,
                 images_per_request=8)  # fmt: skip
    lm.record_window(requests_ok=4, errors={"http_503": 1}, latencies_s=[0.002, 0.002, 0.02, 0.3],
                     duration_s=2.0, offered_rps=100.0)  # fmt: skip
    lm.record_window(requests_ok=2, errors={"http_503": 2, "timeout": 1}, latencies_s=np.array([0.05, 70.0]),
                     duration_s=0.5, offered_rps=120.0)  # fmt: skip
    with lm.serve("127.0.0.1", port) as server:
        m = scrape(server.url)
        # the next point replaces the previous one: one rayscale_bench_point series at a time
        lm.set_point(target="triton", transport="http-json", replicas=2, concurrency=16, rate_rps=None,
                     images_per_request=1)  # fmt: skip
        after = scrape(server.url)

    assert value(m, "rayscale_bench_requests_total", outcome="ok") == 6
    assert value(m, "rayscale_bench_requests_total", outcome="error") == 4
    assert value(m, "rayscale_bench_errors_total", kind="http_503") == 3
    assert value(m, "rayscale_bench_errors_total", kind="timeout") == 1
    # the rate gauges show the last window
    assert value(m, "rayscale_bench_offered_requests_per_second") == 120.0
    assert value(m, "rayscale_bench_achieved_requests_per_second") == 2 / 0.5
    assert value(m, "rayscale_bench_achieved_images_per_second") == 2 * 8 / 0.5
    # histogram: cumulative buckets with le = "value <= bound", +Inf holds the 70 s outlier
    assert value(m, "rayscale_bench_latency_seconds_bucket", le="0.0025") == 2
    assert value(m, "rayscale_bench_latency_seconds_bucket", le="0.025") == 3
    assert value(m, "rayscale_bench_latency_seconds_bucket", le="0.05") == 4
    assert value(m, "rayscale_bench_latency_seconds_bucket", le="0.5") == 5
    assert value(m, "rayscale_bench_latency_seconds_bucket", le="60.0") == 5
    assert value(m, "rayscale_bench_latency_seconds_bucket", le="+Inf") == 6
    assert value(m, "rayscale_bench_latency_seconds_count") == 6
    assert value(m, "rayscale_bench_latency_seconds_sum") == pytest.approx(70.374)
    assert len(m["rayscale_bench_latency_seconds_bucket"]) == len(BENCH_LATENCY_BOUNDS) + 1
    assert m["rayscale_bench_point"] == {
        frozenset({"target": "rayscale", "transport": "http-binary", "replicas": "2", "concurrency": "",
                   "rate": "100", "images_per_request": "8"}.items()): 1.0
    }  # fmt: skip
    assert list(after["rayscale_bench_point"]) == [
        frozenset({"target": "triton", "transport": "http-json", "replicas": "2", "concurrency": "16",
                   "rate": "", "images_per_request": "1"}.items())
    ]  # fmt: skip
    assert "rayscale_bench_offered_requests_per_second" not in after  # closed loop offers no rate
    assert value(after, "rayscale_bench_requests_total", outcome="ok") == 6  # counters keep counting


def test_load_window_needs_a_duration():
    with pytest.raises(ConfigError, match="duration_s must be > 0"):
        LoadMetrics().record_window(requests_ok=1, errors={}, latencies_s=[0.1], duration_s=0, offered_rps=None)


# ---------------------------------------------------------------- serving metrics through Ray


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    start_local_ray(num_cpus=2, num_gpus=1, log_to_driver=False)
    yield
    stop_node_exporters()
    ray.shutdown()


def _send_batches(app: str, batches: list[list[int]], failures: list[int], in_flight: int, replica: str):
    """A replica's real accounting: each batch is the image counts of its requests; each delta carries
    0.25 s of the replica's CPU time."""
    import ray

    collector = get_or_create_collector(app)
    stats = ReplicaStats()
    for request_images in batches:
        n = len(request_images)
        stats.record_batch(images=sum(request_images), request_images=request_images,
                           queue_ns=[3_000_000] * n, total_ns=[20_000_000] * n,
                           input_ns=1_000_000, infer_ns=10_000_000, output_ns=1_000_000)  # fmt: skip
        stats.replica_cpu_s = 0.25
        collector.record.remote(replica, stats.take(), in_flight)
    for code in failures:
        stats.record_failure(code=code, images=4)
        stats.replica_cpu_s = 0.25
        collector.record.remote(replica, stats.take(), in_flight)
    ray.get(collector.snapshot.remote())  # calls from one caller arrive in order


def test_serving_metrics_match_the_recorded_batches(ray_cluster, port):
    app = f"test-{uuid.uuid4().hex[:8]}"
    try:
        # replica A: 3 batches (1, 3 and 2 requests), replica B: 1 batch of 2 requests and 3 refusals
        _send_batches(app, [[4], [1, 2, 1], [128, 128]], [], in_flight=2, replica="a")
        _send_batches(app, [[8, 8]], [503, 503, 400], in_flight=1, replica="b")
        with serve_exporter("127.0.0.1", port, app_name=app) as server:
            m = scrape(server.url)
    finally:
        kill_collector(app)

    assert value(m, "rayscale_serving_up", app=app) == 1
    assert value(m, "rayscale_requests_total", app=app, code=200) == 1 + 3 + 2 + 2
    assert value(m, "rayscale_images_total", app=app, code=200) == 4 + 4 + 256 + 16
    assert value(m, "rayscale_requests_total", app=app, code=503) == 2
    assert value(m, "rayscale_requests_total", app=app, code=400) == 1
    assert value(m, "rayscale_rejected_requests_total", app=app) == 2
    assert value(m, "rayscale_in_flight_requests", app=app) == 2 + 1
    assert value(m, "rayscale_replicas", app=app) == 2
    assert value(m, "rayscale_replica_cpu_seconds_total", app=app) == 0.25 * (3 + 1 + 3)
    # one batch-size observation per executed batch: sizes 4, 4, 256, 16
    assert value(m, "rayscale_batch_images_count", app=app) == 4
    assert value(m, "rayscale_batch_images_sum", app=app) == 280
    assert value(m, "rayscale_batch_images_bucket", app=app, le="4.0") == 2
    assert value(m, "rayscale_batch_images_bucket", app=app, le="16.0") == 3
    assert value(m, "rayscale_batch_images_bucket", app=app, le="256.0") == 4
    assert len(m["rayscale_batch_images_bucket"]) == len(BATCH_BOUNDS) + 1
    # queue and compute: one observation per request (3 ms queue, 12 ms batch compute)
    assert value(m, "rayscale_queue_seconds_count", app=app) == 8
    assert value(m, "rayscale_queue_seconds_sum", app=app) == pytest.approx(8 * 0.003)
    assert value(m, "rayscale_queue_seconds_bucket", app=app, le="0.0025") == 0
    assert value(m, "rayscale_queue_seconds_bucket", app=app, le="0.005") == 8
    assert value(m, "rayscale_compute_seconds_count", app=app) == 8
    assert value(m, "rayscale_compute_seconds_bucket", app=app, le="0.01") == 0
    assert value(m, "rayscale_compute_seconds_bucket", app=app, le="0.025") == 8
    assert value(m, "rayscale_compute_seconds_bucket", app=app, le="+Inf") == 8
    assert len(m["rayscale_compute_seconds_bucket"]) == len(SECONDS_BOUNDS) + 1
    assert m["__types__"]["rayscale_requests"] == "counter"
    assert m["__types__"]["rayscale_queue_seconds"] == "histogram"


def test_serving_metrics_absent_while_no_app_runs(ray_cluster, port):
    with serve_exporter("127.0.0.1", port, app_name="no-such-app") as server:
        m = scrape(server.url)
    assert value(m, "rayscale_serving_up", app="no-such-app") == 0
    assert "rayscale_requests_total" not in m
    assert value(m, "rayscale_gpus", node=socket.gethostname()) == len(read_gpus())


def test_node_exporters_one_per_machine_with_serving_metrics(ray_cluster):
    app = f"test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    try:
        _send_batches(app, [[2, 2]], [], in_flight=0, replica="a")
        handles = start_node_exporters(port=port, app_name=app)
        assert len(handles) == 1  # one machine, one port
        assert start_node_exporters(port=port, app_name=app) == handles  # a second `up` reuses it
        m = scrape(f"http://127.0.0.1:{port}/metrics")
        assert value(m, "rayscale_requests_total", app=app, code=200) == 2
        assert value(m, "rayscale_images_total", app=app, code=200) == 4
        assert "rayscale_gpus" in m
    finally:
        kill_collector(app)
        assert stop_node_exporters() == 1
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_node_exporter_on_a_taken_port_names_the_fix(ray_cluster):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ServerError, match="could not start.*choose another port"):
            start_node_exporters(port=s.getsockname()[1], app_name="rayscale")
    stop_node_exporters()


def test_gpu_sampler_actors_run_on_gpu_nodes(ray_cluster):
    handles = start_gpu_samplers(interval_s=0.05)
    assert len(handles) == 1  # the local node advertises one (logical) GPU
    samples = collect_gpu_samples(handles)
    assert len(samples) == 0 if not read_gpus() else len(samples) > 0
    assert all({"t", "node", "index", "util_pct"} <= set(s) for s in samples)


# ---------------------------------------------------------------- dashboard and scrape config


def _exporter_metric_names() -> set[str]:
    """Every sample name rayscale's two endpoints export, scraped while an app has traffic."""
    app = f"test-{uuid.uuid4().hex[:8]}"
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    texts = []
    try:
        _send_batches(app, [[1, 1]], [503], in_flight=0, replica="a")
        with serve_exporter("127.0.0.1", free_port(), app_name=app) as server:
            texts.append(urllib.request.urlopen(server.url, timeout=30).read().decode())
    finally:
        kill_collector(app)
    with LoadMetrics().serve("127.0.0.1", free_port()) as server:
        texts.append(urllib.request.urlopen(server.url, timeout=30).read().decode())
    return {
        family.name + suffix
        for text in texts
        for family in text_string_to_metric_families(text)
        for suffix in suffixes[family.type]
    }


def _ray_serve_metric_names() -> set[str]:
    """The ray_serve_* names Ray exports, read from the metric definitions in Ray Serve's source."""
    import ray.serve._private as serve_private

    kinds = {"Counter": ["_total"], "Gauge": [""], "Histogram": ["_bucket", "_sum", "_count"]}
    names = set()
    for path in Path(serve_private.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in kinds):
                continue
            arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                templates = [arg.value]
            elif isinstance(arg, ast.JoinedStr):  # f"serve_num_{protocol_name}_requests"
                templates = ["".join(v.value if isinstance(v, ast.Constant) else p for v in arg.values)
                             for p in ("http", "grpc")]  # fmt: skip
            else:
                continue
            for t in (t for t in templates if t.startswith("serve_")):
                # a counter gains "_total" unless its name has it already
                suffixes = [""] if t.endswith("_total") else kinds[node.func.attr]
                names |= {f"ray_{t}{suffix}" for suffix in suffixes}
    return names


def test_dashboard_queries_name_only_exported_metrics(ray_cluster):
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert any(v["name"] == "DS_PROMETHEUS" and v["type"] == "datasource" for v in dashboard["templating"]["list"])
    exported = _exporter_metric_names()
    ray_serve = _ray_serve_metric_names()
    assert {"ray_serve_num_http_requests_total", "ray_serve_http_request_latency_ms_bucket"} <= ray_serve

    queries = list(promql_expressions(dashboard))
    used = set()
    for title, expr in queries:
        names = set(re.findall(r"\b(?:rayscale|ray)_[a-z0-9_]+", expr))
        assert names, f"panel {title!r} queries no rayscale or Ray metric: {expr}"
        unknown = {n for n in names if n not in (ray_serve if n.startswith("ray_") else exported)}
        assert not unknown, f"panel {title!r} queries metrics nobody exports: {sorted(unknown)}"
        used |= names
    # the panels users look for are there
    titles = " ".join(t.lower() for t, _ in queries)
    for topic in ("images per second", "latency", "queue", "batch size", "gpu utilisation", "gpu memory", "errors"):
        assert topic in titles, topic
    assert {"rayscale_bench_latency_seconds_bucket", "rayscale_queue_seconds_bucket",
            "rayscale_compute_seconds_bucket", "rayscale_gpu_utilization_percent"} <= used  # fmt: skip
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


def test_dashboard_ships_with_the_package():
    assert DASHBOARD_PATH.parent.name == "dashboards" and DASHBOARD_PATH.is_file()


def test_prometheus_config_scrapes_exporter_bench_and_ray():
    config = yaml.safe_load((ROOT / "deployments" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {t for job in jobs.values() for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert {"127.0.0.1:9400", "127.0.0.1:9401"} <= targets
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    files = [f for job in jobs.values() for sd in job.get("file_sd_configs", []) for f in sd["files"]]
    assert files == [f"/tmp/ray/{PROMETHEUS_SERVICE_DISCOVERY_FILE}"]

"""`rayscale up` fits the cluster: the automatic layout follows each node's CPUs per GPU, and a layout
the cluster cannot place fails at once with one line naming what each node lacks."""

from __future__ import annotations

import time

import pytest

from rayscale.config import PROCESSES_PER_GPU, ServeConfig
from rayscale.errors import ConfigError
from rayscale.loadgen.ingresses import NodeTarget, spread
from rayscale.serve.placement import NodeResources, fit_layout, processes_that_fit, shortfall

from conftest import free_port, start_local_ray

GPU_NODE = NodeResources(node="a", address="10.0.0.1", gpus=8, cpus=64)


def test_auto_layout_takes_four_processes_per_gpu_where_the_cpus_allow():
    assert fit_layout(ServeConfig(replicas=8), [GPU_NODE]).processes_per_replica == PROCESSES_PER_GPU


def test_auto_layout_never_asks_a_node_for_more_cpus_per_gpu_than_it_has():
    pod = NodeResources(node="b", address="10.0.0.2", gpus=1, cpus=2)  # a KubeRay pod with 2 CPUs per GPU
    assert fit_layout(ServeConfig(), [GPU_NODE, pod]).processes_per_replica == 2
    small = NodeResources(node="c", address="10.0.0.3", gpus=2, cpus=1)  # less than a CPU per GPU: still one
    assert fit_layout(ServeConfig(), [small]).processes_per_replica == 1
    assert fit_layout(ServeConfig(cpus_per_replica=0.5), [pod]).processes_per_replica == 4


def test_a_layout_the_user_chose_is_kept_and_the_cpu_needs_one_process():
    assert fit_layout(ServeConfig(processes_per_replica=6), [GPU_NODE]).processes_per_replica == 6
    assert fit_layout(ServeConfig(gpus_per_replica=0, provider="cpu"), [GPU_NODE]).processes_per_replica == 1


def test_processes_fit_by_gpu_shares_and_cpus():
    cfg = ServeConfig(replicas=2, processes_per_replica=4)  # 0.25 GPU and 1 CPU each
    assert processes_that_fit(cfg, NodeResources("n", "x", gpus=2, cpus=64)) == 8
    assert processes_that_fit(cfg, NodeResources("n", "x", gpus=2, cpus=3)) == 3
    assert processes_that_fit(cfg, NodeResources("n", "x", gpus=0, cpus=64)) == 0


def test_a_layout_that_does_not_fit_names_each_node_and_what_it_lacks():
    cfg = ServeConfig(replicas=2, processes_per_replica=4)
    nodes = [NodeResources("h", "10.0.0.1", gpus=1, cpus=2), NodeResources("w", "10.0.0.2", gpus=1, cpus=0.5)]
    message = shortfall(cfg, nodes, 8)
    assert message is not None and "\n" not in message
    assert "cannot place 8 replica process(es) of 0.25 GPU and 1 CPU" in message
    assert "10.0.0.1 holds 2" in message and "10.0.0.2 holds 0 (0.5 CPU free)" in message
    assert "--processes-per-replica" in message and "--cpus-per-replica" in message
    assert shortfall(cfg, [NodeResources("h", "10.0.0.1", gpus=2, cpus=8)], 8) is None


def test_client_actors_spread_over_the_serving_nodes_in_proportion_and_within_their_room():
    a, b, c = NodeTarget("a", "1", "u", 4), NodeTarget("b", "2", "u", 4), NodeTarget("c", "3", "u", 8)
    placed = spread(8, [a, b, c])
    assert [placed.count(t) for t in (a, b, c)] == [2, 2, 4]
    assert {t.node for t in placed[:3]} == {"a", "b", "c"}  # a load on the first three actors reaches every node
    assert {t.node for t in spread(3, [a, b, c])} == {"a", "b", "c"}  # every node gets one while there are enough
    roomy = spread(8, [a, b, c], room={"a": 1, "b": 8, "c": 2})
    assert [roomy.count(t) for t in (a, b, c)] == [1, 5, 2]
    assert len(spread(8, [a, b, c], room={"a": 1, "b": 1, "c": 1})) == 3  # no more actors than the nodes take


@pytest.mark.timeout(300)
def test_up_on_a_cluster_too_small_fails_at_once_and_the_auto_layout_fits_it(model_dir, tmp_path, monkeypatch):
    """One CPU and two GPUs: four processes per replica cannot be placed, and `up` says so in seconds
    instead of waiting for resources that never come; the automatic layout runs there."""
    import ray

    from rayscale.serve.cluster import down, up

    monkeypatch.setenv("RAYSCALE_STATE_DIR", str(tmp_path / "state"))
    start_local_ray(num_cpus=1, num_gpus=2, namespace="rayscale")
    common = dict(model_dir=str(model_dir), replicas=2, provider="null", port=free_port(), grpc_port=free_port())
    try:
        started = time.monotonic()
        with pytest.raises(ConfigError, match=r"cannot place 8 replica process\(es\).*holds 4 \(") as refused:
            up(ServeConfig(**common, processes_per_replica=4, cpus_per_replica=0.25), exporter=False)
        assert time.monotonic() - started < 60
        assert "--processes-per-replica" in str(refused.value)
        result = up(ServeConfig(**common, cpus_per_replica=0.5), exporter=False)
        assert result.processes_per_replica == 1 and len(result.replica_info) == 2
    finally:
        if ray.is_initialized():
            down(stop_cluster=False)
        if ray.is_initialized():
            ray.shutdown()

"""Two nodes, each with one (logical) GPU and its own network address: `rayscale up --address`,
`rayscale bench --replicas 1,2` and `rayscale down` end to end, with the replicas on both nodes."""

from __future__ import annotations

import json
import re

import pytest

from netns_cluster import two_node_cluster  # noqa: F401  (the fixture)
from rayscale.results import load_results


def served_url(up_stdout: str) -> str:
    match = re.search(r"ready\s+(http://\S+)/v2/health/ready", up_stdout)
    assert match, f"`rayscale up` printed no ready endpoint:\n{up_stdout}"
    return match.group(1)


@pytest.mark.slow
def test_two_nodes_serve_and_scale_from_one_to_two_replicas(two_node_cluster, model_dir, tmp_path):  # noqa: F811
    cluster = two_node_cluster
    up = cluster.rayscale("up", "--address", cluster.address, "--replicas", "2", "--provider", "cpu",
                          "--gpus-per-replica", "1", "--cpus-per-replica", "0.5", "--model", str(model_dir), timeout_s=240)
    assert up.returncode == 0, up.stderr[-3000:]
    url = served_url(up.stdout)

    status = cluster.rayscale("status", "--json", "--address", cluster.address)
    assert status.returncode == 0, status.stderr[-2000:]
    replicas = json.loads(status.stdout)["replicas"]
    assert len({r["node"] for r in replicas}) == 2, f"replicas not on both nodes: {replicas}"

    out = tmp_path / "bench.json"
    bench = cluster.rayscale("bench", "--url", url, "--address", cluster.address, "--replicas", "1,2",
                             "--concurrency", "2", "--images-per-request", "1", "--warmup", "1", "--window", "1",
                             "--max-windows", "3", "--duration", "3", "--stability", "0.99", "--out", str(out),
                             timeout_s=240)
    assert bench.returncode == 0, bench.stderr[-3000:]
    points = load_results(out).points
    assert sorted(p.replicas for p in points) == [1, 2]
    for p in points:
        assert p.requests_ok > 0 and p.requests_failed == 0, (p.replicas, p.status, p.errors)
        assert p.requests_ok + p.requests_failed + p.requests_incomplete == p.requests_sent

    down = cluster.rayscale("down", "--address", cluster.address)
    assert down.returncode == 0, down.stderr[-2000:]
    assert "app removed" in down.stdout
    after = cluster.rayscale("status", "--json", "--address", cluster.address)
    assert json.loads(after.stdout)["running"] is False

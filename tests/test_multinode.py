"""Three nodes, each with one (logical) GPU and its own network address: every node serves its own traffic.

One cluster and one app (a replica per node, the null engine: the serving path alone) serve the
whole module; the tests run in order, and the last one loses a node.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from rayscale.config import MODEL_NAME
from rayscale.results import load_results

from netns_cluster import NetnsCluster, Node, netns_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TESTS = Path(__file__).resolve().parent
LOCAL_SHARE = 0.9  # of a node's requests, served on that node while it has capacity
RESUME_S = 5.0  # serving through a node's ingress resumes this soon after its HAProxy dies


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, model_dir):
    with netns_cluster(tmp_path_factory.mktemp("netns"), 3, cpus=[2, 2, 2]) as c:
        up = c.rayscale("up", "--address", c.address, "--replicas", "3", "--provider", "null", "--gpus-per-replica", "1",
                        "--processes-per-replica", "1", "--cpus-per-replica", "0.5", "--model", str(model_dir),
                        "--no-exporter", timeout_s=300)  # fmt: skip
        assert up.returncode == 0, up.stderr[-3000:]
        yield c


def status(cluster: NetnsCluster) -> dict:
    st = cluster.rayscale("status", "--json", "--address", cluster.address)
    assert st.returncode == 0, st.stderr[-2000:]
    return json.loads(st.stdout)


def replica_nodes(cluster: NetnsCluster) -> dict[str, str]:
    """Replica id -> the address of the node it runs on."""
    return {r["replica"]: r["node_ip"] for r in status(cluster)["replicas"]}


def load(cluster: NetnsCluster, nodes: list[Node], duration_s: float, concurrency: int, tmp_path: Path, tag: str) -> dict:
    """Start tests/netns_load.py on each of ``nodes`` (aimed at that node's own 127.0.0.1:8000); a
    callable that waits for them and returns each node's request records."""
    procs = {}
    for node in nodes:
        out = tmp_path / f"{tag}-{node.ip}.json"
        procs[node.ip] = (cluster.popen(node, sys.executable, str(TESTS / "netns_load.py"), "http://127.0.0.1:8000",
                                        str(duration_s), str(concurrency), str(out)), out)  # fmt: skip

    def wait() -> dict[str, list[dict]]:
        records = {}
        for ip, (proc, out) in procs.items():
            _, err = proc.communicate(timeout=duration_s + 60)
            assert proc.returncode == 0, err[-2000:]
            records[ip] = json.loads(out.read_text())
        return records

    return {"wait": wait}


def failures(records: list[dict]) -> list[dict]:
    return [r for r in records if r["status"] != 200]


def test_every_node_answers_on_its_own_loopback_and_serves_its_clients_itself(cluster, tmp_path):
    st = status(cluster)
    assert len({r["node_ip"] for r in st["replicas"]}) == 3, st["replicas"]
    by_node = {i["node_ip"]: i for i in st["ingresses"]}
    assert set(by_node) == {n.ip for n in cluster.nodes}, st["ingresses"]
    for ingress in by_node.values():  # each routes to its own process, and to the two others for spill-over
        assert (ingress["local_up"], ingress["remote_up"]) == (1, 2), ingress
        assert ingress["url"] == "http://127.0.0.1:8000"
    for node in cluster.nodes:  # what KubeRay's readiness probe reads: this node has a replica to serve with
        healthz = cluster.on(node, sys.executable, "-c", HEALTHZ, timeout_s=60)
        assert healthz.stdout.strip() == "200 success", (node.ip, healthz.stdout, healthz.stderr[-500:])
    where = replica_nodes(cluster)
    records = load(cluster, cluster.nodes, 4.0, 2, tmp_path, "local")["wait"]()
    for ip, recs in records.items():
        assert recs and not failures(recs), (ip, failures(recs)[:3])
        local = sum(1 for r in recs if where.get(r["replica"]) == ip)
        assert local >= LOCAL_SHARE * len(recs), f"node {ip}: {local} of {len(recs)} requests served on the node"


HEALTHZ = """
import json, urllib.request
with urllib.request.urlopen("http://127.0.0.1:8000/-/healthz", timeout=10) as r:
    print(r.status, json.loads(r.read())["status"])
"""


def test_bench_aims_each_client_at_its_own_node_and_counts_what_crossed(cluster, tmp_path):
    out = tmp_path / "bench.json"
    bench = cluster.rayscale("bench", "--address", cluster.address, "--concurrency", "6", "--images-per-request", "1",
                             "--warmup", "1", "--window", "1", "--max-windows", "3", "--duration", "3", "--stability", "0.99",
                             "--client-cpus", "0", "--out", str(out), timeout_s=240)  # fmt: skip
    assert bench.returncode == 0, bench.stderr[-3000:]
    point = load_results(out).points[0]
    assert point.requests_ok > 0 and point.requests_failed == 0, (point.status, point.errors)
    assert point.requests_ok + point.requests_failed + point.requests_incomplete == point.requests_sent
    assert point.clients >= 3
    traffic = {t.node_ip: t for t in point.ingress_traffic}
    assert set(traffic) == {n.ip for n in cluster.nodes}, point.ingress_traffic
    for ip, t in traffic.items():
        assert t.requests > 0 and t.bytes_in > 0 and t.bytes_out > 0, t
        assert t.requests_remote <= (1 - LOCAL_SHARE) * t.requests, f"node {ip}: {t.requests_remote} of {t.requests} crossed"
    assert point.requests_crossed == sum(t.requests_remote for t in point.ingress_traffic)


def test_no_node_opens_anything_unauthenticated_beyond_loopback(cluster):
    """rayscale's own servers on every node: HAProxy on loopback alone, each replica's ports refusing
    anyone without the ingress secret. Ray's own servers must listen on each node's address in a
    multi-node cluster, where their standard gRPC health check and Ray's HTTP agents answer anyone
    who reaches the node (the README says so): nothing else may answer."""
    from test_listeners import is_loopback

    replica_ports = {(r["node_ip"], port) for r in status(cluster)["replicas"] for port in (r["http_port"], r["grpc_port"])}
    beyond = []
    for node in cluster.nodes:
        listeners = cluster.listeners(node)
        haproxy = {(x.ip, x.port) for x in listeners if x.name == "haproxy"}
        assert haproxy == {("127.0.0.1", 8000), ("127.0.0.1", 8001)}, (node.ip, haproxy)
        # a wildcard bind is reached through the node's own address
        beyond += [
            (node.ip if x.ip in ("0.0.0.0", "::") else x.ip, x.port, x.command) for x in listeners if not is_loopback(x.ip)
        ]
    assert {(ip, port) for ip, port, _ in beyond} >= replica_ports, "every replica listens on its node's address"
    probe = cluster.on_head(sys.executable, "-c", PROBE, json.dumps(sorted(set(beyond))), timeout_s=600)
    assert probe.returncode == 0, probe.stderr[-2000:]
    answers = json.loads(probe.stdout)  # [ip, port, process, what answered]
    ours = [a for a in answers if (a[0], a[1]) in replica_ports]
    assert ours == [], "a replica port answered without the ingress secret:\n" + "\n".join(map(str, ours))
    unexpected = [a for a in answers if not a[3].startswith(RAY_OPEN) and not any(agent in a[2] for agent in RAY_AGENTS)]
    assert unexpected == [], "answered without authentication:\n" + "\n".join(map(str, unexpected))


RAY_OPEN = "/grpc.health.v1.Health/Check -> OK"  # Ray's servers answer the standard health check to anyone
# Ray's own HTTP servers on each node: its agents, and the Prometheus endpoints of the metrics agent, the
# dashboard and the autoscaler (the README's "What listens where" names them)
RAY_AGENTS = (
    "ray::DashboardAgent",
    "ray::RuntimeEnvAgent",
    "/ray/dashboard/dashboard.py",
    "/ray/_private/monitor.py",
    "/ray/autoscaler/",
)

# Runs in the head's namespace, which reaches every node's address: what each listener answers to a
# plain HTTP GET and to gRPC calls made without credentials.
PROBE = f"""
import json, sys
import grpc
sys.path.insert(0, {str(TESTS)!r})
from test_listeners import GRPC_METHODS, GRPC_REFUSALS, PROBE_TIMEOUT_S, hostport, http_answer

def grpc_answers(ip, port):
    found = []
    with grpc.insecure_channel(hostport(ip, port)) as channel:
        for method in GRPC_METHODS:  # each one: a health check that answers must not hide another method
            try:
                channel.unary_unary(method)(b"", timeout=PROBE_TIMEOUT_S)
                found.append(f"{{method}} -> OK")
            except grpc.RpcError as e:
                if e.code() not in GRPC_REFUSALS:
                    found.append(f"{{method}} -> {{e.code().name}}")
    return found

answers = []
for ip, port, process in json.loads(sys.argv[1]):
    answers += [[ip, port, process, a] for a in [http_answer(ip, port), *grpc_answers(ip, port)] if a]
print(json.dumps(answers))
"""


def test_a_nodes_haproxy_dies_its_ingress_is_back_within_seconds_and_no_other_node_notices(cluster, tmp_path):
    head, victim = cluster.nodes[0], cluster.nodes[1]
    running = load(cluster, [head, victim], 10.0, 3, tmp_path, "haproxy")
    time.sleep(3.0)
    [haproxy] = [p for p in cluster.pids(victim) if psutil.Process(p).name() == "haproxy"]
    killed_at = time.time()
    os.kill(haproxy, signal.SIGKILL)
    records = running["wait"]()
    assert not failures(records[head.ip]), failures(records[head.ip])[:3]
    failed = failures(records[victim.ip])
    assert all(r["start"] >= killed_at - 1.0 and r["end"] <= killed_at + RESUME_S for r in failed), failed[:5]
    after = [r for r in records[victim.ip] if r["start"] > killed_at + RESUME_S]
    assert after and not failures(after), "serving through the node's ingress did not resume"
    ingress = {i["node_ip"]: i for i in status(cluster)["ingresses"]}[victim.ip]
    assert ingress["restarts"] == 1 and ingress["pid"] != haproxy


def test_the_statistics_actor_dies_and_no_request_notices(cluster, tmp_path):
    running = load(cluster, cluster.nodes, 8.0, 2, tmp_path, "stats")
    time.sleep(2.0)
    [collector] = [p for node in cluster.nodes for p in cluster.pids(node) if "StatsCollector" in " ".join(_cmdline(p))]
    os.kill(collector, signal.SIGKILL)
    records = running["wait"]()
    for ip, recs in records.items():
        assert recs and not failures(recs), (ip, failures(recs)[:3])
    # Ray restarts it: the statistics extension answers again (counting from the restart)
    stats = cluster.on_head(sys.executable, "-c", STATS_AFTER_RESTART, timeout_s=60)
    assert stats.returncode == 0 and stats.stdout.strip() == "200", stats.stderr[-1000:]


STATS_AFTER_RESTART = f"""
import time, urllib.request, urllib.error
for _ in range(40):
    try:
        with urllib.request.urlopen("http://127.0.0.1:8000/v2/models/{MODEL_NAME}/stats", timeout=5) as r:
            print(r.status); break
    except (urllib.error.URLError, OSError):
        time.sleep(0.5)
"""


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def test_a_worker_node_dies_and_the_other_nodes_lose_nothing(cluster, tmp_path):
    head, victim, other = cluster.nodes
    running = load(cluster, [head, other], 10.0, 3, tmp_path, "node")
    time.sleep(3.0)
    cluster.stop_node(victim)
    records = running["wait"]()
    for node in (head, other):
        assert records[node.ip] and not failures(records[node.ip]), (node.ip, failures(records[node.ip])[:3])
    down = cluster.rayscale("down", "--address", cluster.address, timeout_s=300)
    assert down.returncode == 0, down.stderr[-2000:]
    assert "app removed" in down.stdout
    assert json.loads(cluster.rayscale("status", "--json", "--address", cluster.address).stdout)["running"] is False
    for node in (head, other):
        assert not [p for p in cluster.pids(node) if psutil.Process(p).name() == "haproxy"], f"an ingress is left on {node.ip}"

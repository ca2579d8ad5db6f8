"""Two Ray nodes on one machine, as the scaling study's `twonode` phase runs them (one GPU each, node
addresses 127.0.0.2 and 127.0.0.3), driven from a process that is on neither node: `up` prints an
address that answers, each node's ingress and the machine's one metrics exporter listen on their
own loopback addresses, and a bench names the node of every ingress it measured."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from rayscale.results import load_results

from conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NODES = ("127.0.0.2", "127.0.0.3")
ENTRY = "from rayscale.cli import main; main()"


def _run(env: dict[str, str], *cmd: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout_s, env=env)


def _rayscale(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return _run(env, sys.executable, "-c", ENTRY, *args)


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    """A head at 127.0.0.2 and a worker at 127.0.0.3, each with 2 CPUs and one logical GPU."""
    ray_bin = shutil.which("ray")
    assert ray_bin, "the `ray` command is not on PATH"
    state = tmp_path_factory.mktemp("two-nodes")
    token = state / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAYSCALE_STATE_DIR=str(state / "state"))
    gcs_port = free_port()
    temp = Path(f"/tmp/rs1m{os.getpid()}")  # short: Ray's socket paths must fit the kernel's limit
    address = f"{NODES[0]}:{gcs_port}"
    common = ["--num-cpus=2", "--num-gpus=1", "--object-store-memory=150000000", "--disable-usage-stats", f"--temp-dir={temp}"]
    try:
        head = _run(env, ray_bin, "start", "--head", f"--port={gcs_port}", f"--node-ip-address={NODES[0]}",
                    "--include-dashboard=false", *common)  # fmt: skip
        assert head.returncode == 0, head.stderr[-2000:]
        worker = _run(env, ray_bin, "start", f"--address={address}", f"--node-ip-address={NODES[1]}", *common)
        assert worker.returncode == 0, worker.stderr[-2000:]
        yield env, address
    finally:
        _run(env, ray_bin, "stop", "--force", timeout_s=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_two_nodes_on_one_machine_each_serve_on_their_own_address(machine, model_dir, tmp_path):
    env, address = machine
    port, exporter_port = free_port(), free_port()
    up = _rayscale(env, "up", "--address", address, "--replicas", "2", "--provider", "null", "--processes-per-replica", "1",
                   "--cpus-per-replica", "0.25", "--max-batch-size", "8", "--model", str(model_dir), "--port", str(port),
                   "--grpc-port", str(free_port()), "--exporter-port", str(exporter_port))  # fmt: skip
    assert up.returncode == 0, up.stderr[-3000:]
    assert "exporter not started" not in up.stdout + up.stderr, up.stdout
    st = _rayscale(env, "status", "--json", "--address", address)
    assert st.returncode == 0, st.stderr[-2000:]
    status = json.loads(st.stdout)
    ingresses = {i["node_ip"]: i for i in status["ingresses"]}
    assert set(ingresses) == set(NODES) and {i["url"] for i in ingresses.values()} == {f"http://{ip}:{port}" for ip in NODES}
    # the address `up` and `status` name is one of the nodes' ingresses, and it answers
    assert status["url"] in {i["url"] for i in ingresses.values()}, status["url"]
    with urllib.request.urlopen(f"{status['url']}/v2/health/ready", timeout=10) as r:
        assert r.status == 200
    # one exporter for the machine, on the address of the node it runs on, not 127.0.0.1 twice
    exported = [ip for ip in NODES if _answers(f"http://{ip}:{exporter_port}/metrics")]
    assert len(exported) == 1, exported

    out = tmp_path / "bench.json"
    bench = _rayscale(env, "bench", "--address", address, "--concurrency", "2", "--images-per-request", "2", "--clients", "2",
                      "--client-cpus", "0", "--warmup", "0.5", "--window", "1", "--max-windows", "3",
                      "--model-dir", str(model_dir), "--out", str(out))  # fmt: skip
    assert bench.returncode == 0, bench.stderr[-3000:]
    (point,) = load_results(out).points
    traffic = {t.node_ip: t for t in point.ingress_traffic}
    assert set(traffic) == set(NODES), point.ingress_traffic  # every ingress named by its node, clients on both
    assert all(t.requests > 0 for t in traffic.values()) and point.requests_crossed == 0

    down = _rayscale(env, "down", "--address", address)
    assert down.returncode == 0, down.stderr[-2000:]
    assert not any(_answers(f"http://{ip}:{port}/v2/health/live") for ip in NODES)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False

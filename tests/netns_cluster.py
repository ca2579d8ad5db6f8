"""Two Ray nodes on one machine, each in a network namespace of its own, joined by a veth pair.

What crosses between the nodes crosses a real (virtual) network link, as between two KubeRay pods.
Both nodes live in namespaces the fixture creates, so whatever Ray binds (it binds every interface
of a node that is not on loopback) is reachable only from inside them; the commands under test run
in the head's namespace. Ray's token authentication is on, with a token made for this cluster.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rayscale.processes import stop_processes

SUBNET_PREFIX = 30
HEAD_IP = "10.213.0.1"  # the /30 exists only inside the two namespaces: no clash with any host network
WORKER_IP = "10.213.0.2"
GCS_PORT = 6379
# Agent ports given to `ray start`: the raylet then does not wait for the agents to report theirs
# (a 15 s wait that a busy CI machine overruns). Each namespace has all its ports free.
AGENT_PORTS = ("--metrics-export-port=20080", "--dashboard-agent-listen-port=20081",
               "--dashboard-agent-grpc-port=20082", "--runtime-env-agent-port=20083")


@dataclass
class TwoNodeCluster:
    head_ns: str
    worker_ns: str
    env: dict[str, str]
    temp_dirs: list[Path] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{GCS_PORT}"

    def on_head(self, *cmd: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
        """Run ``cmd`` in the head's namespace (where the cluster and its served URL are reachable)."""
        return _ip_netns_exec(self.head_ns, list(cmd), self.env, timeout_s)

    def rayscale(self, *args: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
        return self.on_head(sys.executable, "-m", "rayscale.cli", *args, timeout_s=timeout_s)


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout_s: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)


def _ip_netns_exec(ns: str, cmd: list[str], env: dict[str, str] | None, timeout_s: float) -> subprocess.CompletedProcess:
    return _run(["ip", "netns", "exec", ns, *cmd], env, timeout_s)


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-1500:]}")


def _create_namespaces(head_ns: str, worker_ns: str) -> None:
    # The veth pair is created inside the head's namespace with its peer straight in the worker's:
    # its names never meet the host's interfaces.
    for cmd in (
        ["ip", "-n", head_ns, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", worker_ns],
        ["ip", "-n", head_ns, "addr", "add", f"{HEAD_IP}/{SUBNET_PREFIX}", "dev", "veth0"],
        ["ip", "-n", worker_ns, "addr", "add", f"{WORKER_IP}/{SUBNET_PREFIX}", "dev", "veth1"],
        ["ip", "-n", head_ns, "link", "set", "veth0", "up"],
        ["ip", "-n", worker_ns, "link", "set", "veth1", "up"],
        ["ip", "-n", head_ns, "link", "set", "lo", "up"],
        ["ip", "-n", worker_ns, "link", "set", "lo", "up"],
    ):
        _check(_run(cmd), " ".join(cmd))


def _stop_namespace_processes(ns: str) -> None:
    """Every process in ``ns`` was started by this fixture: stop them all (TERM, then KILL)."""
    stop_processes(lambda: [int(p) for p in _run(["ip", "netns", "pids", ns]).stdout.split()], term_grace_s=3.0)


def _teardown(cluster: TwoNodeCluster, namespaces: list[str]) -> None:
    for ns in namespaces:
        _stop_namespace_processes(ns)
        _run(["ip", "netns", "del", ns])  # takes its end of the veth pair, and so the pair, with it
    for d in cluster.temp_dirs:
        shutil.rmtree(d, ignore_errors=True)


def _ray_start(cluster: TwoNodeCluster, ns: str, args: list[str], temp_dir: Path) -> None:
    ray_bin = shutil.which("ray")
    assert ray_bin, "the `ray` command is not on PATH"
    cluster.temp_dirs.append(temp_dir)
    proc = _ip_netns_exec(ns, [ray_bin, "start", *args, *AGENT_PORTS, f"--temp-dir={temp_dir}", "--num-gpus=1",
                               "--object-store-memory=150000000", "--disable-usage-stats"], cluster.env, 180)
    if proc.returncode != 0:
        raise RuntimeError(f"ray start in {ns} failed: {proc.stderr.strip()[-500:]}\n{_ray_errors(temp_dir)}")


def _ray_errors(temp_dir: Path) -> str:
    """Error and fatal lines of the node's logs: why a node did not come up."""
    lines = []
    for log in sorted((temp_dir / "session_latest" / "logs").glob("*.out")):
        text = log.read_text(errors="replace")
        lines += [f"{log.name}: {line[:300]}" for line in text.splitlines() if " E " in line or " C " in line]
    return "\n".join(lines[-20:])


@pytest.fixture
def two_node_cluster(tmp_path: Path) -> Iterator[TwoNodeCluster]:
    """A head (one logical GPU) at 10.213.0.1 and a worker (one logical GPU) at 10.213.0.2."""
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (`ip netns`) to give the second node its own network address")
    tag = f"rs{os.getpid()}"
    head_ns, worker_ns = f"{tag}-head", f"{tag}-worker"
    namespaces: list[str] = []
    token_file = tmp_path / "ray_auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file),
               RAYSCALE_STATE_DIR=str(tmp_path / "state"))
    cluster = TwoNodeCluster(head_ns=head_ns, worker_ns=worker_ns, env=env)
    try:
        for ns in (head_ns, worker_ns):
            made = _run(["ip", "netns", "add", ns])
            if made.returncode != 0:
                pytest.skip(f"`ip netns add` is not permitted here: {made.stderr.strip()}")
            namespaces.append(ns)
        _create_namespaces(head_ns, worker_ns)
        # Short temp dirs: Ray's Unix socket paths must stay under the kernel's 107-byte limit.
        _ray_start(cluster, head_ns, ["--head", f"--node-ip-address={HEAD_IP}", f"--port={GCS_PORT}",
                                      "--num-cpus=3", "--include-dashboard=false"], Path(f"/tmp/{tag}h"))
        _ray_start(cluster, worker_ns, [f"--address={cluster.address}", f"--node-ip-address={WORKER_IP}",
                                        "--num-cpus=2"], Path(f"/tmp/{tag}w"))
        yield cluster
    finally:
        _teardown(cluster, namespaces)

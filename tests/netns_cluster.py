"""Ray nodes on one machine, each in a network namespace of its own, joined by a bridge.

What crosses between the nodes crosses a real (virtual) network link, as between KubeRay pods.
Every node lives in a namespace the fixture creates, so whatever Ray binds (it binds every interface
of a node that is not on loopback) is reachable only from inside them, and each node has a loopback
of its own: a client on a node that aims at 127.0.0.1 reaches that node's servers alone. The
commands under test run in the head's namespace unless a test names another node. Ray's token
authentication is on, with a token made for this cluster.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pytest

from rayscale.processes import stop_processes

SUBNET = "10.213.0"  # a /24 that exists only inside the namespaces: no clash with any host network
PREFIX = 24
GCS_PORT = 6379
# Agent ports given to `ray start`: the raylet then does not wait for the agents to report theirs
# (a 15 s wait that a busy CI machine overruns). Each namespace has all its ports free.
AGENT_PORTS = (
    "--metrics-export-port=20080",
    "--dashboard-agent-listen-port=20081",
    "--dashboard-agent-grpc-port=20082",
    "--runtime-env-agent-port=20083",
)


@dataclass(frozen=True)
class Node:
    ns: str
    ip: str


class Listening(NamedTuple):
    pid: int
    name: str  # the kernel's name for the process (15 characters at most)
    command: str  # its command line
    ip: str
    port: int


@dataclass
class NetnsCluster:
    nodes: list[Node]
    env: dict[str, str]
    temp_dirs: list[Path] = field(default_factory=list)

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def address(self) -> str:
        return f"{self.head.ip}:{GCS_PORT}"

    def on(self, node: Node, *cmd: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
        """Run ``cmd`` in ``node``'s namespace."""
        return _ip_netns_exec(node.ns, list(cmd), self.env, timeout_s)

    def popen(self, node: Node, *cmd: str) -> subprocess.Popen:
        """Start ``cmd`` in ``node``'s namespace, its output captured as text."""
        return subprocess.Popen(["ip", "netns", "exec", node.ns, *cmd], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip

    def on_head(self, *cmd: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
        """Run ``cmd`` in the head's namespace (where the cluster and its served URL are reachable)."""
        return self.on(self.head, *cmd, timeout_s=timeout_s)

    def rayscale(self, *args: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
        return self.on_head(sys.executable, "-m", "rayscale.cli", *args, timeout_s=timeout_s)

    def pids(self, node: Node) -> list[int]:
        """Every process in ``node``'s namespace."""
        return [int(p) for p in _run(["ip", "netns", "pids", node.ns]).stdout.split()]

    def listeners(self, node: Node) -> list[Listening]:
        """Every TCP socket listening in ``node``'s namespace, read from /proc as that namespace sees it
        (psutil reads the caller's namespace)."""
        found = []
        for pid in self.pids(node):
            try:
                inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
                name = Path(f"/proc/{pid}/comm").read_text().strip()
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:  # exited meanwhile
                continue
            for table in ("tcp", "tcp6"):
                try:
                    rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
                except OSError:
                    continue
                for row in rows:
                    fields = row.split()
                    if fields[3] == "0A" and f"socket:[{fields[9]}]" in inodes:  # 0A: LISTEN
                        ip_hex, port_hex = fields[1].split(":")
                        found.append(Listening(pid, name, command[:300], _ip(ip_hex), int(port_hex, 16)))
        return sorted(set(found))

    def stop_node(self, node: Node) -> None:
        """The node dies: every process in its namespace is killed at once, with no chance to say so."""
        for _ in range(3):  # a process that started meanwhile goes too
            for pid in self.pids(node):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _ip(hex_addr: str) -> str:
    """An address as /proc/net/tcp{,6} writes it (little-endian 32-bit words) in the usual form; an
    IPv4 address a v6 socket binds (gRPC's) as the IPv4 address."""
    raw = bytes.fromhex(hex_addr)
    addr = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))
    return str(getattr(addr, "ipv4_mapped", None) or addr)


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout_s: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)


def _ip_netns_exec(ns: str, cmd: list[str], env: dict[str, str] | None, timeout_s: float) -> subprocess.CompletedProcess:
    return _run(["ip", "netns", "exec", ns, *cmd], env, timeout_s)


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-1500:]}")


def _create_network(bridge_ns: str, nodes: list[Node]) -> None:
    """A bridge in a namespace of its own, and a veth pair from it to each node's namespace; the
    names never meet the host's interfaces."""
    cmds = [["ip", "-n", bridge_ns, "link", "add", "br0", "type", "bridge"], ["ip", "-n", bridge_ns, "link", "set", "br0", "up"]]
    for i, node in enumerate(nodes):
        cmds += [
            ["ip", "-n", bridge_ns, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", node.ns],
            ["ip", "-n", bridge_ns, "link", "set", f"v{i}", "master", "br0"],
            ["ip", "-n", bridge_ns, "link", "set", f"v{i}", "up"],
            ["ip", "-n", node.ns, "addr", "add", f"{node.ip}/{PREFIX}", "dev", "eth0"],
            ["ip", "-n", node.ns, "link", "set", "eth0", "up"],
            ["ip", "-n", node.ns, "link", "set", "lo", "up"],
        ]
    for cmd in cmds:
        _check(_run(cmd), " ".join(cmd))


def _ray_start(cluster: NetnsCluster, node: Node, args: list[str], temp_dir: Path, *, cpus: float, gpus: int) -> None:
    ray_bin = shutil.which("ray")
    assert ray_bin, "the `ray` command is not on PATH"
    cluster.temp_dirs.append(temp_dir)
    proc = cluster.on(node, ray_bin, "start", *args, f"--node-ip-address={node.ip}", *AGENT_PORTS, f"--temp-dir={temp_dir}",
                      f"--num-cpus={cpus:g}", f"--num-gpus={gpus}", "--object-store-memory=150000000", "--disable-usage-stats")  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"ray start in {node.ns} failed: {proc.stderr.strip()[-500:]}\n{_ray_errors(temp_dir)}")


def _ray_errors(temp_dir: Path) -> str:
    """Error and fatal lines of the node's logs: why a node did not come up."""
    lines = []
    for log in sorted((temp_dir / "session_latest" / "logs").glob("*.out")):
        text = log.read_text(errors="replace")
        lines += [f"{log.name}: {line[:300]}" for line in text.splitlines() if " E " in line or " C " in line]
    return "\n".join(lines[-20:])


@contextlib.contextmanager
def netns_cluster(state_dir: Path, nodes: int, *, cpus: list[float], gpus: int = 1) -> Iterator[NetnsCluster]:
    """A head and ``nodes - 1`` workers, node ``i`` at 10.213.0.<i+1> with ``cpus[i]`` CPUs and
    ``gpus`` logical GPUs; skips where network namespaces cannot be made."""
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (`ip netns`) to give each node its own network address")
    tag = f"rs{os.getpid()}"
    state_dir.mkdir(parents=True, exist_ok=True)
    token_file = state_dir / "ray_auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    env = dict(
        os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), RAYSCALE_STATE_DIR=str(state_dir / "state")
    )
    members = [Node(ns=f"{tag}-n{i}", ip=f"{SUBNET}.{i + 1}") for i in range(nodes)]
    cluster = NetnsCluster(nodes=members, env=env)
    made: list[str] = []
    try:
        for ns in [f"{tag}-br", *(n.ns for n in members)]:
            added = _run(["ip", "netns", "add", ns])
            if added.returncode != 0:
                pytest.skip(f"`ip netns add` is not permitted here: {added.stderr.strip()}")
            made.append(ns)
        _create_network(f"{tag}-br", members)
        # Short temp dirs: Ray's Unix socket paths must stay under the kernel's 107-byte limit.
        _ray_start(cluster, members[0], ["--head", f"--port={GCS_PORT}", "--include-dashboard=false"], Path(f"/tmp/{tag}n0"),
                   cpus=cpus[0], gpus=gpus)  # fmt: skip
        for i, node in enumerate(members[1:], start=1):
            _ray_start(cluster, node, [f"--address={cluster.address}"], Path(f"/tmp/{tag}n{i}"), cpus=cpus[i], gpus=gpus)
        yield cluster
    finally:
        for ns in reversed(made):
            stop_processes(lambda ns=ns: [int(p) for p in _run(["ip", "netns", "pids", ns]).stdout.split()], term_grace_s=3.0)
            _run(["ip", "netns", "del", ns])  # takes its ends of the veth pairs, and so the pairs, with it
        for d in cluster.temp_dirs:
            shutil.rmtree(d, ignore_errors=True)

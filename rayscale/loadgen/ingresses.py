"""The rayscale app's node ingresses as the load generator sees them: one target per serving node,
and what each carried over a point.

By default (no ``--url``) a sweep's client actors spread over the nodes that host replicas, in
proportion to their replica processes, and each aims at its own node's ingress, as clients of a
real deployment would: every node's traffic then enters and is served there, and nothing funnels
through one node. An explicit ``--url`` still aims every actor at that one address.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from rayscale.errors import ConfigError, ServerError
from rayscale.results import IngressTraffic

__all__ = ["NodeTarget", "node_targets", "spread", "traffic_delta"]


@dataclass(frozen=True)
class NodeTarget:
    node: str  # Ray node id
    node_ip: str
    url: str  # the node's ingress for a client on that node: http://host:port, or host:port for gRPC
    processes: int  # replica processes on the node: its share of the clients


def node_targets(app_name: str, transport: str) -> list[NodeTarget]:
    """Each node that hosts replicas of the app, with its own ingress's address."""
    from rayscale.serve import registry

    processes = Counter(r.node for r in registry.replica_records(app_name, live_only=True))
    targets = []
    for record in registry.ingress_records(app_name):
        if not processes[record.node]:
            continue  # an ingress with no replica beside it (the node `up` ran on) only forwards
        url = record.url
        if transport == "grpc":
            if not record.grpc_target:
                raise ConfigError("the rayscale app serves no gRPC (it was started with --grpc-port 0): drop --grpc")
            url = record.grpc_target
        targets.append(NodeTarget(node=record.node, node_ip=record.node_ip, url=url, processes=processes[record.node]))
    if not targets:
        raise ServerError(
            f"the rayscale app {app_name!r} has no ingress on a node with replicas: start it with `rayscale up` "
            "(default ingress), or aim at one server with --url"
        )
    return targets


def spread(actors: int, targets: list[NodeTarget], *, room: dict[str, int] | None = None) -> list[NodeTarget]:
    """Where each of ``actors`` client actors goes: every node gets a share in proportion to its
    processes (at least one while there are enough actors), never more than its ``room`` (actors
    its free CPUs can take; the rest go to nodes with room, and past every node's room there are
    fewer actors), interleaved so that a load split over the first k actors reaches the nodes in
    the same proportions."""
    total = sum(t.processes for t in targets)
    exact = [actors * t.processes / total for t in targets]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(targets)), key=lambda i: exact[i] - counts[i], reverse=True)[: actors - sum(counts)]:
        counts[i] += 1
    if actors >= len(targets):  # no node left without a client: take one from the node with most
        for i in [i for i, c in enumerate(counts) if c == 0]:
            donor = max(range(len(counts)), key=lambda j: counts[j])
            counts[donor] -= 1
            counts[i] += 1
    if room is not None:
        limit = [max(room.get(t.node, 0), 0) for t in targets]
        excess = sum(max(c - m, 0) for c, m in zip(counts, limit, strict=True))
        counts = [min(c, m) for c, m in zip(counts, limit, strict=True)]
        while excess:
            spare = [i for i in range(len(targets)) if counts[i] < limit[i]]
            if not spare:
                break
            i = max(spare, key=lambda j: exact[j] - counts[j])
            counts[i] += 1
            excess -= 1
    slots = sorted(((k + 0.5) / c, i) for i, c in enumerate(counts) for k in range(c))
    return [targets[i] for _, i in slots]


def traffic_delta(before: dict[str, Any], after: dict[str, Any], node_ips: dict[str, str] | None = None) -> list[IngressTraffic]:
    """What each node's ingress carried between two snapshots. An ingress whose HAProxy restarted in
    between counts from its restart (a lower bound, marked); one missing from either side is left out."""
    out = []
    for node in sorted(set(before) & set(after)):
        a, b = before[node], after[node]
        restarted = b.restarts != a.restarts
        base = (0, 0, 0, 0) if restarted else (a.requests, a.requests_remote, a.bytes_in, a.bytes_out)
        out.append(IngressTraffic(
            node=node, node_ip=b.node_ip or (node_ips or {}).get(node, ""), requests=b.requests - base[0],
            requests_remote=b.requests_remote - base[1], bytes_in=b.bytes_in - base[2], bytes_out=b.bytes_out - base[3],
            restarted=restarted,
        ))  # fmt: skip
    return out

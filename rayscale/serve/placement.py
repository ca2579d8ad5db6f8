"""What the cluster can hold: the automatic layout of processes per GPU, and why a layout does not fit.

A rayscale replica is ``processes_per_replica`` Serve replica processes, each asking Ray for
``gpus_per_process`` GPU and ``cpus_per_replica`` CPUs. Ray places each process on some node or
waits, silently, until one has room; so ``rayscale up`` decides the automatic layout from each
node's resources and checks that the layout fits before it deploys anything, and says what is
short, per node, when it does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from rayscale.config import ServeConfig

__all__ = ["NodeResources", "cluster_nodes", "fit_layout", "processes_that_fit", "shortfall"]

_EPS = 1e-9


@dataclass(frozen=True)
class NodeResources:
    """One alive Ray node: its address and the resources Ray schedules with (free ones, or in all)."""

    node: str
    address: str
    gpus: float
    cpus: float


def cluster_nodes(*, free: bool) -> list[NodeResources]:
    """The alive nodes with their free (``free=True``) or total resources."""
    import ray
    from ray._private import state

    per_node = state.state.available_resources_per_node() if free else state.state.total_resources_per_node()
    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = per_node.get(n["NodeID"], {})
        nodes.append(NodeResources(node=n["NodeID"], address=n.get("NodeManagerAddress", "?"), gpus=float(res.get("GPU", 0.0)),
                                   cpus=float(res.get("CPU", 0.0))))  # fmt: skip
    return nodes


def fit_layout(cfg: ServeConfig, nodes: list[NodeResources]) -> ServeConfig:
    """``cfg`` with the automatic processes per replica decided for ``nodes`` (their totals): up to
    PROCESSES_PER_GPU per GPU, but never more CPUs per GPU than the GPU nodes have (at least one
    process per replica). A layout the user chose is kept as it is."""
    if cfg.processes_per_replica:
        return cfg
    resolved = cfg.resolved()
    gpu_nodes = [n for n in nodes if n.gpus >= max(cfg.gpus_per_replica, _EPS)]
    if cfg.gpus_per_replica <= 0 or not gpu_nodes or resolved.processes_per_replica <= 1:
        return resolved
    per_replica_cpus = min(n.cpus / n.gpus * cfg.gpus_per_replica for n in gpu_nodes)
    by_cpus = math.floor(per_replica_cpus / cfg.cpus_per_replica + _EPS)
    return replace(resolved, processes_per_replica=max(1, min(resolved.processes_per_replica, by_cpus)))


def processes_that_fit(cfg: ServeConfig, node: NodeResources) -> int:
    """Replica processes of ``cfg`` (resolved) that ``node``'s resources can take."""
    by_cpus = math.floor(node.cpus / cfg.cpus_per_replica + _EPS)
    if cfg.gpus_per_process <= 0:
        return by_cpus
    return min(by_cpus, math.floor(node.gpus / cfg.gpus_per_process + _EPS))


def shortfall(cfg: ServeConfig, nodes: list[NodeResources], processes: int) -> str | None:
    """Why ``processes`` more processes of ``cfg`` (resolved) cannot be placed on the free resources of
    ``nodes``, in one line naming what each node lacks and the flags to change; None when they fit."""
    fits = {n.node: processes_that_fit(cfg, n) for n in nodes}
    if sum(fits.values()) >= processes:
        return None
    per_process = f"{cfg.gpus_per_process:g} GPU and {cfg.cpus_per_replica:g} CPU"
    lacks = []
    for n in nodes:
        short = []
        if cfg.gpus_per_process > 0 and n.gpus + _EPS < cfg.gpus_per_process:
            short.append(f"{n.gpus:g} GPU free")
        if n.cpus + _EPS < cfg.cpus_per_replica:
            short.append(f"{n.cpus:g} CPU free")
        what = ", ".join(short) or f"{n.gpus:g} GPU, {n.cpus:g} CPU free"
        lacks.append(f"{n.address} holds {fits[n.node]} ({what})")
    return (
        f"the cluster cannot place {processes} replica process(es) of {per_process} each "
        f"({cfg.replicas} replica(s) × {cfg.processes_per_replica} process(es)): "
        + "; ".join(lacks)
        + " — use fewer --replicas, --processes-per-replica or --cpus-per-replica, or add nodes"
    )

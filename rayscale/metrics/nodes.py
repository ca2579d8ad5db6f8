"""Placing one actor per Ray node: the alive nodes, and a strategy that pins an actor to one."""

from __future__ import annotations

from typing import Any

__all__ = ["alive_nodes", "head_node_ids", "pinned_to"]


def alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def head_node_ids(nodes: list[dict[str, Any]]) -> list[str]:
    """The ids of the head node(s) among ``nodes`` (as ``alive_nodes`` returns them)."""
    return [n["NodeID"] for n in nodes if "node:__internal_head__" in n.get("Resources", {})]


def pinned_to(node_id: str):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)

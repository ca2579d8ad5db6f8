"""The client actors of a sweep: a Ray connection, actors started, prepared, resized and stopped.

The pool lives for a whole sweep, so settings with the same placement of actors reuse them (each
setting rebuilds their payload and connections); it is rebuilt when the planned count, or (aimed at
each node's ingress) the nodes that serve, change.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any

from rayscale.errors import ConfigError, ServerError
from rayscale.loadgen.client import LoadClient
from rayscale.loadgen.config import BenchConfig
from rayscale.loadgen.ingresses import NodeTarget, node_targets, spread
from rayscale.loadgen.target_spec import TargetSpec

__all__ = ["ClientPool", "connect_ray", "free_cpus"]

ACTOR_START_TIMEOUT_S = 120


def connect_ray(cfg: BenchConfig) -> None:
    """Join the cluster that runs the rayscale app; for an external server and no cluster of ours,
    start a fresh local one for the client actors (never a guessed, maybe stale, one)."""
    import ray

    from rayscale.serve.cluster import connect
    from rayscale.serve.scaling import cluster_started_by_rayscale

    if ray.is_initialized():
        return
    in_cluster = cfg.handle or cfg.per_node  # the app's own cluster, or nothing
    if not in_cluster and cfg.address is None and not cluster_started_by_rayscale():
        _local_ray()
        return
    try:
        connect(cfg.address)
    except ServerError:
        if in_cluster or cfg.address:
            raise
        _local_ray()  # an external server (e.g. Triton) and no cluster: client actors run in a local one


def _local_ray() -> None:
    import ray

    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False, namespace="rayscale")


def free_cpus() -> float:
    import ray

    return float(ray.available_resources().get("CPU", 0.0))


def _split(total: int, parts: int) -> list[int]:
    """``total`` slots over at most ``parts`` actors, none of them empty."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts) if base + (1 if i < extra else 0) > 0]


class ClientPool:
    """``LoadClient`` actors sending ``images_per_request`` images per request to one target, or each to
    its own node's ingress of the rayscale app (``cfg.per_node``)."""

    def __init__(self, cfg: BenchConfig):
        self.cfg = cfg
        self.target = TargetSpec(
            kind="handle" if cfg.handle else cfg.transport,
            url=cfg.url,
            model=cfg.model,
            binary=cfg.binary,
            token=cfg.api_token,
            app_name=cfg.app_name,
            timeout_s=cfg.request_timeout_s,
        )
        self.actors: list[Any] = []
        self.placement: list[NodeTarget | None] = []  # each actor's node and ingress (per node), else None
        self.images_per_request: int | None = None
        self._images_ref: Any = None

    @property
    def size(self) -> int:
        return len(self.actors)

    def free_cpus(self) -> float:
        """CPUs free for client actors, counting those this pool holds as free."""
        return free_cpus() + self.size * self.cfg.client_cpus

    def ready(self, n: int, images_per_request: int) -> None:
        """``n`` actors (aimed at each node's ingress: at least one per serving node where the count is
        automatic), each with a fresh connection and payload of ``images_per_request`` images, checked
        by one request."""
        placement = self._plan(n)
        if placement != self.placement:
            self.close()
            self.actors = self._start(placement)
            self.placement = placement
        self._prepare(images_per_request)

    def restart(self) -> None:
        """Fresh actors in place of the ones there (one died, or a point failed mid-way)."""
        ipr = self.images_per_request
        if ipr is None:  # never made ready: no actors to replace
            return
        placement = self._plan(self.size)
        self.close()
        self.actors = self._start(placement)
        self.placement = placement
        self._prepare(ipr)

    @property
    def nodes(self) -> dict[str, str]:
        """Node id -> address of the nodes whose ingress the actors aim at (per node only)."""
        return {p.node: p.node_ip for p in self.placement if p is not None}

    def _plan(self, n: int) -> list[NodeTarget | None]:
        if not self.cfg.per_node:
            return [None] * n
        targets = node_targets(self.cfg.app_name, self.cfg.transport)
        if not self.cfg.clients:
            n = max(n, len(targets))
        return list(spread(n, targets, room=self._room(targets)))

    def _room(self, targets: list[NodeTarget]) -> dict[str, int] | None:
        """Client actors each node can still schedule (None: no limit, actors reserve no CPU)."""
        if self.cfg.client_cpus <= 0:
            return None
        from rayscale.serve.placement import cluster_nodes

        held: dict[str, int] = {}
        for p in self.placement:  # this pool's own actors count as free
            if p is not None:
                held[p.node] = held.get(p.node, 0) + 1
        free = {n.node: n.cpus for n in cluster_nodes(free=True)}
        return {t.node: math.floor(free.get(t.node, 0.0) / self.cfg.client_cpus + 1e-9) + held.get(t.node, 0) for t in targets}

    def start_load(self, load: int | float) -> list[Any]:
        """Start the load on the actors that share it: concurrency split into slots, or the rate."""
        import ray

        cfg = self.cfg
        if cfg.mode == "closed":
            shares = _split(int(load), self.size)
            active = self.actors[: len(shares)]
            ray.get([c.start_closed.remote(s) for c, s in zip(active, shares, strict=True)])
            return active
        per_actor = float(load) / self.size
        ray.get([c.start_open.remote(per_actor, cfg.arrival, cfg.seed + i) for i, c in enumerate(self.actors)])
        return list(self.actors)

    def close(self) -> None:
        import ray

        for c in self.actors:
            try:
                ray.kill(c)
            except Exception:  # already gone
                pass
        self.actors = []
        self.placement = []
        self.images_per_request = None

    def _start(self, placement: list[NodeTarget | None]) -> list[Any]:
        import ray

        from rayscale.metrics.nodes import pinned_to

        client = ray.remote(LoadClient)
        shared = self._placement()

        def start(p: NodeTarget | None) -> Any:
            strategy, target = (pinned_to(p.node), replace(self.target, url=p.url)) if p is not None else (shared, self.target)
            return client.options(num_cpus=self.cfg.client_cpus, scheduling_strategy=strategy, max_concurrency=1).remote(target)

        actors = [start(p) for p in placement]
        try:
            ray.get([c.__ray_ready__.remote() for c in actors], timeout=ACTOR_START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            for c in actors:
                ray.kill(c)
            raise ConfigError(
                f"{len(placement)} client actors × {self.cfg.client_cpus:g} CPU could not be scheduled ({free_cpus():g} CPUs free in the cluster): "
                "lower --clients or --client-cpus"
            ) from None
        return actors

    def _placement(self) -> Any:
        """Spread over the cluster, except that a loopback URL is reachable from this node alone."""
        from urllib.parse import urlsplit

        from rayscale.config import is_loopback

        url = self.cfg.url or ""
        host = urlsplit(url if "://" in url else f"//{url}").hostname if url else None
        if self.cfg.per_node:
            return "SPREAD"  # unused: each actor is pinned to its node
        if host is None or not is_loopback(host):
            return "SPREAD"
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)

    def _prepare(self, images_per_request: int) -> None:
        import ray

        cfg = self.cfg
        if cfg.handle and images_per_request != self.images_per_request:
            from rayscale.engine import random_images

            self._images_ref = ray.put(random_images(images_per_request, seed=cfg.seed))
        try:
            ray.get([c.prepare.remote(images_per_request, cfg.seed, self._images_ref) for c in self.actors])
        except Exception as e:
            raise ServerError(f"the target failed a first request with {images_per_request} images: {root_cause(e)}") from None
        self.images_per_request = images_per_request


def root_cause(e: BaseException) -> str:
    """The last line of a (Ray-wrapped) error: what went wrong, without the remote traceback."""
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:500]

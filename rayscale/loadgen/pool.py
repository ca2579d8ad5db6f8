"""The client actors of a sweep: a Ray connection, actors started, prepared, resized and stopped.

The pool lives for a whole sweep, so settings with the same number of actors reuse them (each
setting rebuilds their payload and connections); it is resized when the planned count changes.
"""

from __future__ import annotations

import logging
from typing import Any

from rayscale.errors import ConfigError, ServerError
from rayscale.loadgen.client import LoadClient, TargetSpec
from rayscale.loadgen.config import BenchConfig

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
    if not cfg.handle and cfg.address is None and not cluster_started_by_rayscale():
        _local_ray()
        return
    try:
        connect(cfg.address)
    except ServerError:
        if cfg.handle or cfg.address:
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
    """``LoadClient`` actors sending ``images_per_request`` images per request to one target."""

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
        self.images_per_request: int | None = None
        self._images_ref: Any = None

    @property
    def size(self) -> int:
        return len(self.actors)

    def free_cpus(self) -> float:
        """CPUs free for client actors, counting those this pool holds as free."""
        return free_cpus() + self.size * self.cfg.client_cpus

    def ready(self, n: int, images_per_request: int) -> None:
        """``n`` actors, each with a fresh connection and payload of ``images_per_request`` images, checked by one request."""
        if n != self.size:
            self.close()
            self.actors = self._start(n)
        self._prepare(images_per_request)

    def restart(self) -> None:
        """Fresh actors in place of the ones there (one died, or a point failed mid-way)."""
        n, ipr = self.size, self.images_per_request
        self.close()
        self.actors = self._start(n)
        self._prepare(ipr)

    def start_load(self, load: int | float) -> list[Any]:
        """Start the load on the actors that share it: concurrency split into slots, or the rate."""
        import ray

        cfg = self.cfg
        if cfg.mode == "closed":
            shares = _split(int(load), self.size)
            active = self.actors[: len(shares)]
            ray.get([c.start_closed.remote(s) for c, s in zip(active, shares)])
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
        self.images_per_request = None

    def _start(self, n: int) -> list[Any]:
        import ray

        actor = ray.remote(LoadClient).options(num_cpus=self.cfg.client_cpus, scheduling_strategy=self._placement(), max_concurrency=1)
        actors = [actor.remote(self.target) for _ in range(n)]
        try:
            ray.get([c.__ray_ready__.remote() for c in actors], timeout=ACTOR_START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            for c in actors:
                ray.kill(c)
            raise ConfigError(
                f"{n} client actors × {self.cfg.client_cpus:g} CPU could not be scheduled ({free_cpus():g} CPUs free in the cluster): "
                "lower --clients or --client-cpus"
            ) from None
        return actors

    def _placement(self) -> Any:
        """Spread over the cluster, except that a loopback URL is reachable from this node alone."""
        from urllib.parse import urlsplit

        from rayscale.config import is_loopback

        url = self.cfg.url or ""
        host = urlsplit(url if "://" in url else f"//{url}").hostname if url else None
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

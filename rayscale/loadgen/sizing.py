"""How many client actors a point needs, so that the load generator is never what a point measures.

A client actor is one asyncio process. Its CPU goes on two things: a cost per request (HTTP
framing, the event loop, a DeploymentHandle call) and a cost per byte it moves (request bodies
over HTTP; the embeddings a handle call returns, its images being put in the object store once).
``ActorBudget`` holds what one actor does with a whole core, fitted to measurements:

* HTTP, ``benchmarks/results/client-ceiling-cpu-2core.json`` (README, "Client ceiling"): 9,700
  one-image requests/s at 97 % of a core, 32-image requests at 866 MB/s of bodies at 33 %, JSON
  bodies alike per byte: ~23,000 requests/s and ~2.6 GB/s per core. The H100 host was slower per
  byte: the matched Triton call (``benchmarks/results/h100-2026-11-25-session3/7-matched-triton-4inst``)
  drove 145 requests/s of 4.8 MB per actor at 61 %, 1.15 GB/s per core. The budget takes the
  slower host: 20,000 requests/s and 1.2 GB/s.
* DeploymentHandle, the same H100 calls (README, "Performance"): 90 requests/s of 32 images at
  65 %, 59 of 128 at 72 %, 36 of 256 at 68 % fit 5.8 ms per call plus 0.051 ms per image (2 KiB of
  embeddings each): 170 calls/s and 40 MB/s of embeddings per core.

Actors are planned at ``ACTOR_CPU_TARGET`` of a core, far from the saturation flag (85 %): a host
slower than the ones measured, or a burst, still leaves the client ahead of the server. A closed
loop cannot send faster than its requests return, and no server returns faster than its replicas
compute: the plan assumes ``PEAK_IMAGES_PER_S_PER_REPLICA`` (an H200 computes ~37,000 images/s at
batch 256), an upper bound, so a slower server gets more actors than it needs, never fewer.
The cluster's CPUs cap the count; a point whose actors still saturate is measured again with
twice as many where the cluster has the CPUs (``rayscale.loadgen.bench``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rayscale.config import EMBED_DIM, IMAGE_BYTES
from rayscale.loadgen.config import BenchConfig

__all__ = [
    "ACTOR_CPU_TARGET",
    "HANDLE_BUDGET",
    "HTTP_BUDGET",
    "PEAK_IMAGES_PER_S_PER_REPLICA",
    "ActorBudget",
    "client_cap",
    "clients_needed",
    "expected_requests_per_s",
    "plan_clients",
]

ACTOR_CPU_TARGET = 0.5  # cores per actor the plan aims at
PEAK_IMAGES_PER_S_PER_REPLICA = 40_000.0
MIN_REQUEST_S = 0.001  # a loopback round trip with no work behind it
JSON_BYTES_PER_VALUE = 3.57  # mean length of "0".."255" plus a comma, uniform pixels


@dataclass(frozen=True)
class ActorBudget:
    """What one client actor drives with a whole core, per request and per byte moved."""

    requests_per_s: float
    bytes_per_s: float

    def cores(self, requests_per_s: float, bytes_per_request: float) -> float:
        return requests_per_s / self.requests_per_s + requests_per_s * bytes_per_request / self.bytes_per_s


HTTP_BUDGET = ActorBudget(requests_per_s=20_000.0, bytes_per_s=1.2e9)
HANDLE_BUDGET = ActorBudget(requests_per_s=170.0, bytes_per_s=40e6)


def _budget(cfg: BenchConfig) -> ActorBudget:
    return HANDLE_BUDGET if cfg.handle else HTTP_BUDGET


def bytes_per_request(cfg: BenchConfig, images_per_request: int) -> float:
    """The bytes an actor moves per request: the body over HTTP, the embeddings of a handle call."""
    if cfg.handle:
        return images_per_request * EMBED_DIM * 4.0
    return images_per_request * IMAGE_BYTES * (1.0 if cfg.binary else JSON_BYTES_PER_VALUE)


def expected_requests_per_s(cfg: BenchConfig, *, load: float, images_per_request: int, replicas: int) -> float:
    """The most requests/s the point can see: its rate (open loop), or what its concurrency and the
    replicas' compute allow (closed loop)."""
    if cfg.mode == "open":
        return float(load)
    one_request_s = MIN_REQUEST_S + images_per_request / PEAK_IMAGES_PER_S_PER_REPLICA
    return min(load / one_request_s, replicas * PEAK_IMAGES_PER_S_PER_REPLICA / images_per_request)


def clients_needed(cfg: BenchConfig, *, load: float, images_per_request: int, replicas: int) -> int:
    """Actors that keep each at ``ACTOR_CPU_TARGET`` of a core at the point's load (no cap)."""
    rps = expected_requests_per_s(cfg, load=load, images_per_request=images_per_request, replicas=replicas)
    cores = _budget(cfg).cores(rps, bytes_per_request(cfg, images_per_request))
    return max(1, math.ceil(cores / ACTOR_CPU_TARGET - 1e-9))


def client_cap(cfg: BenchConfig, *, load: float, cpus_free: float) -> int:
    """The most actors worth starting: each needs ``ACTOR_CPU_TARGET`` of a free core (and its
    ``client_cpus`` reservation), and a closed loop gives each at least one slot."""
    cap = math.floor(cpus_free / max(cfg.client_cpus, ACTOR_CPU_TARGET) + 1e-9)
    if cfg.mode == "closed":
        cap = min(cap, int(load))
    return max(1, cap)


def plan_clients(cfg: BenchConfig, *, load: float, images_per_request: int, replicas: int, cpus_free: float) -> int:
    """``--clients`` when given; else the actors the load needs, within the cluster's free CPUs."""
    if cfg.clients:
        return cfg.clients
    needed = clients_needed(cfg, load=load, images_per_request=images_per_request, replicas=replicas)
    return min(needed, client_cap(cfg, load=load, cpus_free=cpus_free))

"""What ``rayscale bench`` measures and how: one typed settings object for every load engine."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rayscale.config import MODEL_NAME
from rayscale.errors import ConfigError
from rayscale.loadgen.schedule import ARRIVALS

__all__ = ["CLIENT_CPU_SATURATED_PCT", "BenchConfig"]

# A client actor is one asyncio process: past this share of its core its own send/receive loop,
# not the server, sets the pace, and the point's throughput is only a lower bound.
CLIENT_CPU_SATURATED_PCT = 85.0
TRANSPORTS = ("http", "grpc")


@dataclass
class BenchConfig:
    # An Open Inference Protocol server (rayscale, Triton, ...), host:port for gRPC; None (and no handle):
    # the rayscale app's ingress on each node, each client actor aiming at its own node's
    url: str | None = None
    transport: str = "http"  # http | grpc (Triton's GRPCInferenceService)
    handle: bool = False  # call the rayscale app through a DeploymentHandle instead of HTTP
    model: str = MODEL_NAME
    app_name: str = "rayscale"
    target: str = "auto"  # label in results; auto: the server's own name from GET /v2
    replicas: list[int] | None = None  # rayscale replica counts to sweep; None: measure the server as it runs
    concurrency: list[int] | None = field(default_factory=lambda: [1, 4, 16, 64, 128])
    rates_rps: list[float] | None = None
    arrival: str = "constant"
    images_per_request: list[int] = field(default_factory=lambda: [1])
    binary: bool = True
    warmup_s: float = 5.0
    window_s: float = 5.0
    stability: float = 0.1
    max_windows: int = 10
    duration_s: float = 120.0  # cap on measured time per point
    clients: int = 0  # 0: sized from the load, the images per request, the replicas and the cluster's CPUs
    client_cpus: float = 0.5
    client_cpu_saturated_pct: float = CLIENT_CPU_SATURATED_PCT  # busiest actor's share of a core that flags a point
    request_timeout_s: float = 60.0
    drain_timeout_s: float = 30.0
    seed: int = 0
    api_token: str | None = None
    address: str | None = None  # Ray cluster (for handle mode, rescaling and client actors)
    model_dir: str | None = None  # model.json to record when the server cannot tell
    out: str | None = None
    csv: bool = False
    overwrite: bool = False
    resume: bool = False
    gpu_sample_interval_s: float = 0.5
    metrics_port: int | None = None
    command: str | None = None

    def __post_init__(self) -> None:
        if self.handle and self.url is not None:
            raise ConfigError(
                "give one target: --url URL of a server, or --handle for the rayscale app in Ray (neither: its ingress on each node)"
            )
        if self.transport not in TRANSPORTS:
            raise ConfigError(f"unknown transport {self.transport!r}: use one of {', '.join(TRANSPORTS)}")
        if self.transport == "grpc":
            from rayscale.loadgen.grpc_client import grpc_address

            if self.handle:
                raise ConfigError("--grpc and --handle are two ways to reach the app: pick one")
            if not self.binary:
                raise ConfigError("--json applies to HTTP only; gRPC sends raw tensor bytes")
            if self.url is not None:
                grpc_address(self.url)
        elif self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"--url must start with http:// or https://, got {self.url!r}")
        if (self.concurrency is None) == (self.rates_rps is None):
            raise ConfigError("give exactly one load shape: --concurrency (closed loop) or --rate (open loop)")
        for name, values in (
            ("replicas", self.replicas),
            ("concurrency", self.concurrency),
            ("images per request", self.images_per_request),
        ):
            if values is not None and (not values or any(v < 1 for v in values)):
                raise ConfigError(f"{name} must be a non-empty list of integers ≥ 1, got {values}")
        if self.rates_rps is not None and (not self.rates_rps or any(r <= 0 for r in self.rates_rps)):
            raise ConfigError(f"rates must be a non-empty list of numbers > 0 requests/s, got {self.rates_rps}")
        if self.arrival not in ARRIVALS:
            raise ConfigError(f"unknown arrival {self.arrival!r}: use one of {', '.join(ARRIVALS)}")
        if not 0 < self.stability < 1:
            raise ConfigError(f"stability must be in (0, 1), got {self.stability}")
        if self.window_s <= 0 or self.warmup_s < 0:
            raise ConfigError(f"window must be > 0 s and warmup ≥ 0 s, got {self.window_s} and {self.warmup_s}")
        if self.max_windows < 3:
            raise ConfigError(f"max windows must be ≥ 3 (stability needs three), got {self.max_windows}")
        if self.duration_s < 3 * self.window_s:
            raise ConfigError(f"duration ({self.duration_s:g} s) must allow three windows of {self.window_s:g} s")
        if self.clients < 0:
            raise ConfigError(f"clients must be ≥ 0 (0 = automatic), got {self.clients}")
        if self.client_cpus < 0:
            raise ConfigError(f"client CPUs must be ≥ 0 per actor, got {self.client_cpus}")
        if not 0 < self.client_cpu_saturated_pct <= 100:
            raise ConfigError(f"client CPU saturation must be in (0, 100] % of a core, got {self.client_cpu_saturated_pct}")
        if self.handle and not self.binary:
            raise ConfigError("--json applies to HTTP only; handle calls pass numpy arrays")

    @property
    def per_node(self) -> bool:
        """The rayscale app through each node's own ingress (no --url, no --handle)."""
        return self.url is None and not self.handle

    @property
    def mode(self) -> str:
        return "closed" if self.concurrency is not None else "open"

    @property
    def loads(self) -> list[int | float]:
        """The sweep's innermost axis: concurrencies (closed loop) or rates in requests/s (open loop)."""
        return list(self.concurrency if self.concurrency is not None else self.rates_rps or [])

    @property
    def transport_label(self) -> str:
        """How points record the path their requests took (``PointResult.transport``)."""
        if self.transport == "grpc" and not self.handle:
            return "grpc"
        return "handle" if self.handle else ("http-binary" if self.binary else "http-json")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("api_token")
        return d

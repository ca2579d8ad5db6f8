"""Typed settings. Units are in the field names; validation names the value and the limit."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rayscale.engine_options import EngineOptions
from rayscale.errors import ConfigError

__all__ = [
    "DEFAULT_MODEL_DIR",
    "EMBED_DIM",
    "IMAGE_SIZE",
    "INPUT_NAME",
    "MODEL_NAME",
    "OUTPUT_NAME",
    "LOCAL_HOST",
    "LOOPBACK_HOSTS",
    "BATCH_WAIT_MS",
    "MAX_BATCH_SIZE",
    "ServeConfig",
    "check",
    "check_batch_wait_ms",
    "check_max_batch_size",
    "client_host",
    "is_loopback",
    "node_bind_host",
    "parse_int_list",
    "queue_delay_us",
    "parse_float_list",
]

MODEL_NAME = "openclip_vit_b32"
INPUT_NAME = "IMAGE"
OUTPUT_NAME = "EMBEDDING"
IMAGE_SIZE = 224
EMBED_DIM = 512
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
IMAGE_BYTES = IMAGE_SIZE * IMAGE_SIZE * 3
DEFAULT_MODEL_DIR = Path("models") / MODEL_NAME
APP_NAME = "rayscale"
LOCAL_HOST = "127.0.0.1"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ANY_ADDRESS_HOSTS = ("0.0.0.0", "::", "")  # bind every interface; a local client connects to LOCAL_HOST
# Images in one batch: the bound ServeConfig, the engine and Triton's model config all accept.
MAX_BATCH_SIZE = 4096
# How long a batch may wait to fill, rayscale's and Triton's alike (Triton's config file calls it
# max_queue_delay_microseconds: the only place the value leaves milliseconds).
BATCH_WAIT_MS = 2.0
MAX_BATCH_WAIT_MS = 1000.0
# direct: rayscale's load balancer straight to each replica process's own servers (default) |
# proxy: Serve's Python HTTP proxy | haproxy: Ray Serve's own HAProxy mode (binds every interface)
INGRESSES = ("direct", "proxy", "haproxy")
# Replica processes per GPU when --processes-per-replica is auto: one process serves about
# 350-530 requests/s of HTTP whatever the model (H100, H200), and 4 sharing a card reached the
# best HTTP figures measured (benchmarks/results/h100-2026-11-25-session3/).
PROCESSES_PER_GPU = 4


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def node_bind_host(host: str, node_ip: str) -> str:
    """Where a server that runs on every node (the ingress, the metrics exporter) binds for the user's ``host``.

    Loopback: the node's loopback, which is the node's own Ray address where that is a loopback one
    (several nodes on one machine, 127.0.0.1 and 127.0.0.2, each get their own). Every interface: as
    given. Any other address means "this node's own address" (each node has its own), except on a
    one-machine cluster, whose node address is loopback and the user's address is the machine's.
    """
    if is_loopback(host):
        return node_ip if is_loopback(node_ip) and ":" not in node_ip else host
    if host in ANY_ADDRESS_HOSTS or is_loopback(node_ip):
        return host
    return node_ip


def client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host`` (any-address: loopback)."""
    return LOCAL_HOST if host in ANY_ADDRESS_HOSTS else host


def check(cond: bool, message: str) -> None:
    """A ConfigError with ``message`` unless ``cond``: the one validation helper of every config."""
    if not cond:
        raise ConfigError(message)


def check_max_batch_size(max_batch_size: int) -> None:
    check(
        1 <= max_batch_size <= MAX_BATCH_SIZE,
        f"max_batch_size must be in 1..{MAX_BATCH_SIZE} images, got {max_batch_size}",
    )


def check_batch_wait_ms(batch_wait_ms: float) -> None:
    check(
        0 <= batch_wait_ms <= MAX_BATCH_WAIT_MS,
        f"batch_wait_ms must be in 0..{MAX_BATCH_WAIT_MS:g} ms, got {batch_wait_ms:g}",
    )


def queue_delay_us(batch_wait_ms: float) -> int:
    """Triton's max_queue_delay_microseconds for a batch wait: where the value leaves milliseconds."""
    return round(batch_wait_ms * 1000)


def parse_int_list(text: str | list[int] | tuple[int, ...], what: str, *, minimum: int = 1) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; an empty list or a value under ``minimum`` is a ConfigError."""
    if isinstance(text, (list, tuple)):
        values = [int(v) for v in text]
    else:
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(f"{what} must be a comma-separated list of integers, got {text!r}") from None
    check(bool(values), f"{what} is empty: give at least one value, e.g. '1,4,16'")
    for v in values:
        check(v >= minimum, f"{what} values must be ≥ {minimum}, got {v}")
    return values


def parse_float_list(text: str | list[float], what: str, *, exclusive_minimum: float = 0.0) -> list[float]:
    if isinstance(text, (list, tuple)):
        values = [float(v) for v in text]
    else:
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ConfigError(f"{what} must be a comma-separated list of numbers, got {text!r}") from None
    check(bool(values), f"{what} is empty: give at least one value, e.g. '100,500'")
    for v in values:
        check(v > exclusive_minimum, f"{what} values must be > {exclusive_minimum:g}, got {v:g}")
        check(math.isfinite(v), f"{what} values must be finite, got {v:g}")
    return values


@dataclass
class ServeConfig:
    """How the Ray Serve application runs. The same fields feed deployments/ and k8s/."""

    model_dir: str = str(DEFAULT_MODEL_DIR)
    replicas: int = 1
    gpus_per_replica: float = 1.0
    cpus_per_replica: float = 1.0
    max_batch_size: int = 256  # images, not requests
    batch_wait_ms: float = BATCH_WAIT_MS
    batches_in_flight: int = 4  # batches a replica runs at once: copies, compute and Python overlap (H100: 1.3-1.4x over 2)
    max_ongoing_requests: int = 512
    max_queued_requests: int = 256
    host: str = LOCAL_HOST
    port: int = 8000
    grpc_port: int = 8001  # the ingress's gRPC port (ingress "direct"); 0: no gRPC
    max_body_bytes: int = 0  # 0: derived from max_batch_size (one full batch plus headroom)
    request_timeout_s: float = 60.0
    api_token: str | None = None
    provider: str = "auto"  # auto | cuda | cpu | null (zeros at once: measures the serving path alone)
    intra_op_threads: int = 0  # 0: onnxruntime's default on CPU, 1 on CUDA
    app_name: str = "rayscale"
    route_prefix: str = "/"
    ingress: str = "direct"  # see INGRESSES
    # Serve replica processes per rayscale replica, sharing its GPUs: 0 = auto (PROCESSES_PER_GPU per
    # GPU on GPUs, 1 on the CPU). Serve runs replicas × processes_per_replica processes in all.
    processes_per_replica: int = 0
    engine: EngineOptions = field(default_factory=EngineOptions)  # a config file may give a dict or key=value,...

    def __post_init__(self) -> None:
        self.engine = EngineOptions.from_value(self.engine)
        check(self.replicas >= 1, f"replicas must be ≥ 1, got {self.replicas}")
        check(self.gpus_per_replica >= 0, f"gpus_per_replica must be ≥ 0, got {self.gpus_per_replica}")
        check(self.cpus_per_replica > 0, f"cpus_per_replica must be > 0, got {self.cpus_per_replica}")
        check_max_batch_size(self.max_batch_size)
        check_batch_wait_ms(self.batch_wait_ms)
        check(1 <= self.batches_in_flight <= 8, f"batches_in_flight must be in 1..8, got {self.batches_in_flight}")
        check(self.max_ongoing_requests >= 1, f"max_ongoing_requests must be ≥ 1, got {self.max_ongoing_requests}")
        check(
            self.max_queued_requests >= -1,
            f"max_queued_requests must be ≥ 0 (or -1 for no limit), got {self.max_queued_requests}",
        )
        check(1 <= self.port <= 65535, f"port must be in 1..65535, got {self.port}")
        check(0 <= self.grpc_port <= 65535, f"grpc_port must be in 1..65535 (0: no gRPC), got {self.grpc_port}")
        check(self.grpc_port != self.port, f"grpc_port and port must differ, both are {self.port}")
        check(
            0 <= self.processes_per_replica <= 64,
            f"processes_per_replica must be in 0..64 (0: auto), got {self.processes_per_replica}",
        )
        check(
            self.provider in ("auto", "cuda", "cpu", "null"),
            f"provider must be auto, cuda, cpu or null (serving path only), got {self.provider!r}",
        )
        check(self.ingress in INGRESSES, f"ingress must be one of {', '.join(INGRESSES)}, got {self.ingress!r}")
        check(self.request_timeout_s > 0, f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        check(self.max_body_bytes >= 0, f"max_body_bytes must be ≥ 0, got {self.max_body_bytes}")

    @property
    def body_limit_bytes(self) -> int:
        """Largest request body accepted (413 above it). JSON bodies need ~4 bytes per pixel."""
        if self.max_body_bytes:
            return self.max_body_bytes
        return self.max_batch_size * IMAGE_BYTES * 5 + (1 << 20)

    def resolved(self) -> ServeConfig:
        """This config with ``processes_per_replica`` decided (auto: PROCESSES_PER_GPU per GPU on GPUs)."""
        from dataclasses import replace

        if self.processes_per_replica:
            return self
        on_gpu = self.gpus_per_replica > 0 and self.provider != "cpu"
        per = max(1, math.floor(PROCESSES_PER_GPU * self.gpus_per_replica + 1e-9)) if on_gpu else 1
        return replace(self, processes_per_replica=per)

    @property
    def serve_replicas(self) -> int:
        """Serve replicas (processes) in all."""
        return self.replicas * max(self.processes_per_replica, 1)

    @property
    def gpus_per_process(self) -> float:
        """Each process's share of its replica's GPUs, rounded down so that the shares fit."""
        return math.floor(self.gpus_per_replica / max(self.processes_per_replica, 1) * 10000) / 10000

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("api_token")  # never written to results files or printed
        # As a config file gives it (key=value,...), and only where it differs from the defaults.
        d["engine"] = self.engine.spec()
        if not d["engine"]:
            del d["engine"]
        return d

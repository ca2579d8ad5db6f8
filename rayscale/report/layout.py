"""How a measured point was served, read from its results file: hardware, transport, ingress, processes per GPU.

Older files lack some of these records; each reader falls back to what the code that wrote
them did (``processes_per_replica`` absent → 1, ``ingress`` absent → "proxy", bench
``transport`` absent → "http"), so every file that ever loaded still reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rayscale.results import BenchResult, PointResult

__all__ = ["Layout", "layout_of", "transport_of"]


@dataclass(frozen=True)
class Layout:
    """What a point's numbers depend on besides the server: compared only like for like."""

    hardware: str  # "GPU" | "CPU"
    transport: str  # "http" | "grpc" | "handle"
    ingress: str | None  # "direct" | "proxy" | "haproxy" for a rayscale app over HTTP/gRPC; else not recorded
    processes_per_gpu: float | None  # Serve replica processes (rayscale) or model instances (Triton) per GPU
    per_gpu_unit: str = "processes"  # "processes" | "instances": what processes_per_gpu counts

    @property
    def per_gpu_text(self) -> str:
        """'1 process/GPU', '4 instances/GPU', or '' where not recorded."""
        if self.processes_per_gpu is None:
            return ""
        n = self.processes_per_gpu
        unit = "instance" if self.per_gpu_unit == "instances" else "process"
        plural = "" if n == 1 else ("s" if unit == "instance" else "es")
        return f"{n:g} {unit}{plural}/GPU"

    def describe(self) -> str:
        """'http via direct, 2 processes/GPU' or 'handle, CPU'."""
        parts = [self.transport + (f" via {self.ingress}" if self.ingress else "")]
        if self.hardware == "CPU":
            parts.append("CPU")
        elif self.per_gpu_text:
            parts.append(self.per_gpu_text)
        return ", ".join(parts)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


def _is_rayscale_config(serve: dict[str, Any]) -> bool:
    """rayscale's own ServeConfig record (not the Triton-form model config a server answers with)."""
    return "gpus_per_replica" in serve and "instance_group" not in serve


def _parameter(serve: dict[str, Any], name: str) -> Any:
    value = (serve.get("parameters") or {}).get(name)
    return value.get("string_value") if isinstance(value, dict) else value


def transport_of(point: PointResult, result: BenchResult) -> str:
    """http, grpc or handle: a DeploymentHandle call, else the bench config's protocol (absent: http)."""
    config = result.config or {}
    if point.transport == "handle" or config.get("handle"):
        return "handle"
    recorded = str(config.get("transport") or "")
    if point.transport.startswith("grpc") or recorded.startswith("grpc"):
        return "grpc"
    return "http"


def _ingress(serve: dict[str, Any], transport: str) -> str | None:
    if transport == "handle" or not _is_rayscale_config(serve):
        return None  # a handle call skips the ingress; other servers have their own
    return str(serve.get("ingress") or "proxy")


def _triton_form_on_cpu(serve: dict[str, Any]) -> bool:
    groups = serve.get("instance_group") or []
    return bool(groups) and all(g.get("kind") == "KIND_CPU" for g in groups)


def _says_cpu(serve: dict[str, Any]) -> bool:
    """The server's own record says it computed on CPU."""
    if str(serve.get("provider") or "") == "cpu":
        return True
    if _is_rayscale_config(serve) and _number(serve.get("gpus_per_replica")) == 0:
        return True
    if _number(_parameter(serve, "gpus_per_replica")) == 0:
        return True
    return _triton_form_on_cpu(serve)


def _on_gpu(point: PointResult, result: BenchResult) -> bool:
    """A point ran on GPUs when nothing says CPU and some hardware record shows a GPU.

    The load generator's host inventory and its GPU samples are the evidence; a Triton server
    elsewhere is believed when its model config places instances on GPUs. A rayscale config
    asking for GPUs is not evidence alone: a CPU machine can offer Ray logical GPUs.
    """
    serve = result.serve_config or {}
    if _says_cpu(serve):
        return False
    if point.gpus or (result.environment or {}).get("gpus"):
        return True
    is_triton = bool(serve.get("instance_group")) and serve.get("backend") != "rayscale"
    return is_triton and any(g.get("kind") == "KIND_GPU" for g in serve["instance_group"])


def _processes_per_gpu(serve: dict[str, Any]) -> tuple[float | None, str]:
    if _is_rayscale_config(serve):
        per_replica = _number(serve.get("gpus_per_replica"))
        processes = _number(serve.get("processes_per_replica")) or 1.0
        return (processes / per_replica if per_replica else None), "processes"
    groups = [g for g in serve.get("instance_group") or [] if g.get("kind") == "KIND_GPU"]
    if not groups:
        return None, "processes"
    if serve.get("backend") == "rayscale":
        # rayscale's Triton-form config counts every replica once over the GPUs it lists.
        per_replica = _number(_parameter(serve, "gpus_per_replica"))
        if per_replica:
            return 1.0 / per_replica, "processes"
        count = sum(int(g.get("count", 1)) for g in groups)
        gpus = {gpu for g in groups for gpu in g.get("gpus") or []}
        return count / max(len(gpus), 1), "processes"
    # Triton places `count` instances on each GPU a group lists.
    return float(groups[0].get("count", 1)), "instances"


def layout_of(point: PointResult, result: BenchResult) -> Layout:
    serve = result.serve_config or {}
    transport = transport_of(point, result)
    on_gpu = _on_gpu(point, result)
    per_gpu, unit = _processes_per_gpu(serve) if on_gpu else (None, "processes")
    return Layout(
        hardware="GPU" if on_gpu else "CPU",
        transport=transport,
        ingress=_ingress(serve, transport),
        processes_per_gpu=per_gpu,
        per_gpu_unit=unit,
    )

"""What one client actor talks to: a spec that crosses to the actor's process as itself."""

from __future__ import annotations

from dataclasses import dataclass

from rayscale.config import MODEL_NAME

__all__ = ["TargetSpec"]


@dataclass(frozen=True)
class TargetSpec:
    kind: str  # http | grpc | handle
    url: str | None = None  # http(s)://host:port, or host:port for gRPC
    model: str = MODEL_NAME
    binary: bool = True
    token: str | None = None
    app_name: str = "rayscale"
    timeout_s: float = 60.0

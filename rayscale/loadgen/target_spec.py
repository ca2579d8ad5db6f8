"""What one client actor talks to: a spec that crosses to the actor's process as itself."""

from __future__ import annotations

from dataclasses import dataclass

from rayscale.config import MODEL_NAME
from rayscale.errors import ConfigError

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

    def server_url(self) -> str:
        """The url of an http or grpc target; a ConfigError for one that has none."""
        if not self.url:
            raise ConfigError(f"a {self.kind} target needs a url")
        return self.url

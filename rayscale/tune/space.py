"""What `rayscale tune` searches: one typed settings record per target, and the values each may take.

A *candidate* is one settings record (``RayscaleSettings`` or ``TritonSettings``): the server
settings that need a restart. Concurrency is not part of it: it is swept per candidate.
A *space* lists the values of each dimension; ``--space NAME=V1,V2`` replaces one list.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Union

from rayscale.config import BATCH_WAIT_MS, ServeConfig
from rayscale.errors import ConfigError
from rayscale.triton.repository import DEFAULT_INSTANCES_PER_GPU

__all__ = [
    "TARGETS",
    "RayscaleSettings",
    "RayscaleSpace",
    "Settings",
    "Space",
    "TritonSettings",
    "TritonSpace",
    "default_space",
    "parse_space_overrides",
    "serve_layout",
]

TARGETS = ("rayscale", "triton")
_SERVE_DEFAULTS = ServeConfig()


def serve_layout(gpus: int, replicas_per_gpu: int) -> tuple[int, float]:
    """(Serve replica processes, GPU share of each) for ``replicas_per_gpu`` processes on each of ``gpus`` GPUs.

    rayscale runs them as ``gpus`` replicas of one GPU with ``processes_per_replica=replicas_per_gpu``;
    the share is rounded down to Ray's resource granularity (1e-4) so k shares fit on one GPU.
    """
    return gpus * replicas_per_gpu, math.floor(10_000 / replicas_per_gpu) / 10_000


@dataclass(frozen=True)
class RayscaleSettings:
    """One rayscale candidate: the ServeConfig settings `rayscale tune` varies."""

    replicas_per_gpu: int = 1
    batches_in_flight: int = _SERVE_DEFAULTS.batches_in_flight
    max_batch_size: int = _SERVE_DEFAULTS.max_batch_size
    batch_wait_ms: float = _SERVE_DEFAULTS.batch_wait_ms

    target: ClassVar[str] = "rayscale"

    @property
    def label(self) -> str:
        return (f"rayscale {self.replicas_per_gpu}/GPU bif{self.batches_in_flight} mbs{self.max_batch_size} "
                f"wait{self.batch_wait_ms:g}ms")

    @property
    def file_stem(self) -> str:
        return (f"rayscale-rpg{self.replicas_per_gpu}-bif{self.batches_in_flight}-mbs{self.max_batch_size}"
                f"-wait{self.batch_wait_ms:g}ms")

    def serve_config(self, gpus: int, **base: Any) -> ServeConfig:
        return ServeConfig(replicas=gpus, gpus_per_replica=1.0, processes_per_replica=self.replicas_per_gpu,
                           batches_in_flight=self.batches_in_flight, max_batch_size=self.max_batch_size,
                           batch_wait_ms=self.batch_wait_ms, **base)

    def up_command(self, gpus: int, provider: str = "auto") -> str:
        command = (f"rayscale up --replicas {gpus} --processes-per-replica {self.replicas_per_gpu} "
                   f"--batches-in-flight {self.batches_in_flight} --max-batch-size {self.max_batch_size} "
                   f"--batch-wait-ms {self.batch_wait_ms:g}")
        return command + (f" --provider {provider}" if provider != "auto" else "")


@dataclass(frozen=True)
class TritonSettings:
    """One Triton candidate: the TritonConfig settings `rayscale tune` varies."""

    instances_per_gpu: int = DEFAULT_INSTANCES_PER_GPU
    max_batch_size: int = _SERVE_DEFAULTS.max_batch_size
    batch_wait_ms: float = BATCH_WAIT_MS

    target: ClassVar[str] = "triton"

    @property
    def label(self) -> str:
        return f"triton {self.instances_per_gpu}/GPU mbs{self.max_batch_size} wait{self.batch_wait_ms:g}ms"

    @property
    def file_stem(self) -> str:
        return f"triton-ipg{self.instances_per_gpu}-mbs{self.max_batch_size}-wait{self.batch_wait_ms:g}ms"

    def triton_config(self, gpus: int, **base: Any):
        from rayscale.triton.server import TritonConfig

        return TritonConfig(gpus=gpus, instances_per_gpu=self.instances_per_gpu, max_batch_size=self.max_batch_size,
                            batch_wait_ms=self.batch_wait_ms, **base)

    def up_command(self, gpus: int, provider: str = "auto") -> str:
        command = (f"rayscale triton up --gpus {gpus} --instances-per-gpu {self.instances_per_gpu} "
                   f"--max-batch-size {self.max_batch_size} --batch-wait-ms {self.batch_wait_ms:g}")
        return command + (f" --provider {provider}" if provider != "auto" else "")


Settings = Union[RayscaleSettings, TritonSettings]


@dataclass
class RayscaleSpace:
    """Values per dimension; the grid is their product, in this field order."""

    replicas_per_gpu: list[int] = field(default_factory=lambda: [1, 2, 4])
    batches_in_flight: list[int] = field(default_factory=lambda: [2, 4, 8])
    max_batch_size: list[int] = field(default_factory=lambda: [128, 256, 512])
    batch_wait_ms: list[float] = field(default_factory=lambda: [1.0, 2.0, 5.0])

    settings_type: ClassVar[type] = RayscaleSettings


@dataclass
class TritonSpace:
    instances_per_gpu: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    max_batch_size: list[int] = field(default_factory=lambda: [128, 256, 512])
    batch_wait_ms: list[float] = field(default_factory=lambda: [0.5, 2.0, 5.0])

    settings_type: ClassVar[type] = TritonSettings


Space = Union[RayscaleSpace, TritonSpace]


def dimensions(space: Space) -> list[str]:
    return [f.name for f in fields(space)]


def values_of(space: Space, name: str) -> list:
    return list(getattr(space, name))


def space_to_dict(space: Space) -> dict[str, list]:
    return asdict(space)


def default_space(target: str) -> Space:
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
    return RayscaleSpace() if target == "rayscale" else TritonSpace()


def _parse_values(name: str, text: str, kind: type) -> list:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"--space {name}= is empty: give values, e.g. {name}=1,2,4")
    try:
        values = [kind(float(p)) if kind is float else int(p) for p in parts]
    except ValueError:
        what = "numbers" if kind is float else "integers"
        raise ConfigError(f"--space {name} must be comma-separated {what}, got {text!r}") from None
    if len(set(values)) != len(values):
        raise ConfigError(f"--space {name} lists a value twice: {text!r}")
    return sorted(values)


# Dimensions renamed since results were first written: old name -> (name, factor to its unit).
_OLD_NAMES = {"max_queue_delay_us": ("batch_wait_ms", 1e-3)}


def parse_space_overrides(target: str, overrides: list[str], *, gpus: int = 1) -> Space:
    """The default space of ``target`` with each ``NAME=V1,V2`` replacing one dimension's values.

    Every value is checked by building the server config it would start, so a value the server
    refuses is refused here, before anything starts.
    """
    space = default_space(target)
    names = dimensions(space)
    for item in overrides:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep:
            raise ConfigError(f"--space {item!r} needs NAME=VALUES, e.g. {names[0]}=1,2,4")
        factor = 1.0
        if name in _OLD_NAMES and name not in names:
            name, factor = _OLD_NAMES[name]
        if name not in names:
            raise ConfigError(f"unknown search dimension {name!r} for {target}: use one of {', '.join(names)}")
        kind = float if name.endswith("_ms") else int
        values = _parse_values(name, text, float if factor != 1.0 else kind)
        setattr(space, name, [kind(v * factor) for v in values])
    defaults = space.settings_type()
    for name in names:
        for value in values_of(space, name):
            check_settings(replace(defaults, **{name: value}), gpus)
    return space


def check_settings(settings: Settings, gpus: int) -> None:
    """Raises the ConfigError the server's own config would raise for these settings."""
    if isinstance(settings, RayscaleSettings):
        if settings.replicas_per_gpu < 1:
            raise ConfigError(f"replicas_per_gpu must be ≥ 1, got {settings.replicas_per_gpu}")
        settings.serve_config(gpus, provider="null")
    else:
        settings.triton_config(gpus, provider="cpu")

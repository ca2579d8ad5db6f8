"""What `rayscale tune` searches: one typed settings record per target, and the values each may take.

A *candidate* is one settings record (``RayscaleSettings`` or ``TritonSettings``): the server
settings the search varies. Load is not part of it: each candidate gets its own search for the
highest load that meets the SLO (``rayscale.tune.loads``).
A *space* lists the values of each dimension; ``--space NAME=V1,V2`` replaces one list.

Some settings change on a running server, others need new processes. rayscale changes
``batches_in_flight`` and ``batch_wait_ms`` in place (Serve's ``user_config``: the processes stay
up); ``processes_per_gpu`` and ``max_batch_size`` restart them. Triton reloads its model for any
change (its repository API, explicit model control). ``restart_key`` says which settings two
candidates must share for the second to start without new processes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar

from rayscale.config import BATCH_WAIT_MS, ServeConfig
from rayscale.errors import ConfigError
from rayscale.triton.repository import DEFAULT_INSTANCES_PER_GPU

__all__ = [
    "PREFERRED_POLICIES",
    "TARGETS",
    "RayscaleSettings",
    "RayscaleSpace",
    "Settings",
    "Space",
    "TritonSettings",
    "TritonSpace",
    "default_space",
    "in_place_dimensions",
    "parse_space_overrides",
    "preferred_batch_sizes",
    "serve_layout",
    "settings_from_dict",
]

TARGETS = ("rayscale", "triton")
_SERVE_DEFAULTS = ServeConfig()


def serve_layout(gpus: int, processes_per_gpu: int) -> tuple[int, float]:
    """(Serve replica processes, GPU share of each) for ``processes_per_gpu`` processes on each of ``gpus`` GPUs.

    rayscale runs them as ``gpus`` replicas of one GPU with ``processes_per_replica=processes_per_gpu``;
    the share is rounded down to Ray's resource granularity (1e-4) so k shares fit on one GPU.
    """
    return gpus * processes_per_gpu, math.floor(10_000 / processes_per_gpu) / 10_000


@dataclass(frozen=True)
class RayscaleSettings:
    """One rayscale candidate: the ServeConfig settings `rayscale tune` varies."""

    processes_per_gpu: int = 4
    batches_in_flight: int = _SERVE_DEFAULTS.batches_in_flight
    batch_wait_ms: float = _SERVE_DEFAULTS.batch_wait_ms
    max_batch_size: int = _SERVE_DEFAULTS.max_batch_size

    target: ClassVar[str] = "rayscale"
    in_place: ClassVar[tuple[str, ...]] = ("batches_in_flight", "batch_wait_ms")  # Serve's user_config

    @property
    def label(self) -> str:
        return (
            f"rayscale {self.processes_per_gpu}/GPU bif{self.batches_in_flight} mbs{self.max_batch_size} "
            f"wait{self.batch_wait_ms:g}ms"
        )

    @property
    def file_stem(self) -> str:
        return (
            f"rayscale-ppg{self.processes_per_gpu}-bif{self.batches_in_flight}-mbs{self.max_batch_size}"
            f"-wait{self.batch_wait_ms:g}ms"
        )

    @property
    def restart_key(self) -> tuple:
        return (self.processes_per_gpu, self.max_batch_size)

    def serve_config(self, gpus: int, **base: Any) -> ServeConfig:
        return ServeConfig(
            replicas=gpus,
            gpus_per_replica=1.0,
            processes_per_replica=self.processes_per_gpu,
            batches_in_flight=self.batches_in_flight,
            max_batch_size=self.max_batch_size,
            batch_wait_ms=self.batch_wait_ms,
            **base,
        )

    def up_command(self, gpus: int, provider: str = "auto", images_per_request: int = 1) -> str:
        command = (
            f"rayscale up --replicas {gpus} --processes-per-replica {self.processes_per_gpu} "
            f"--batches-in-flight {self.batches_in_flight} --max-batch-size {self.max_batch_size} "
            f"--batch-wait-ms {self.batch_wait_ms:g}"
        )
        return command + (f" --provider {provider}" if provider != "auto" else "")


# Preferred batch sizes, as a policy: "none" writes none, and Triton then prefers max_batch_size
# (its config normalisation fills it in: GET .../config shows it), so "none" and "max" batch alike;
# "pow2" prefers the request's image count times 1, 2, 4, ... up to the max batch size, so the
# batcher sends as soon as the queue holds one of those sizes instead of waiting out the queue
# delay for a full batch; "A+B+C" names sizes.
PREFERRED_POLICIES = ("none", "max", "pow2")


def preferred_batch_sizes(policy: str, *, max_batch_size: int, images_per_request: int) -> list[int]:
    """The preferred_batch_size list a policy writes for one max batch size and request size."""
    if policy == "none":
        return []
    if policy == "max":
        return [max_batch_size]
    if policy == "pow2":
        sizes, size = [], images_per_request
        while size < max_batch_size:
            sizes.append(size)
            size *= 2
        return sizes + [max_batch_size]
    sizes = _explicit_sizes(policy)
    kept = [s for s in sizes if s <= max_batch_size]
    return kept or [max_batch_size]


def _explicit_sizes(policy: str) -> list[int]:
    try:
        sizes = sorted({int(p) for p in policy.split("+")})
    except ValueError:
        raise ConfigError(
            f"preferred batch sizes {policy!r} must be one of {', '.join(PREFERRED_POLICIES)} or sizes "
            "joined by '+', e.g. 32+64+128"
        ) from None
    if not sizes or sizes[0] < 1:
        raise ConfigError(f"preferred batch sizes must be ≥ 1, got {policy!r}")
    return sizes


@dataclass(frozen=True)
class TritonSettings:
    """One Triton candidate: the TritonConfig settings `rayscale tune` varies."""

    instances_per_gpu: int = DEFAULT_INSTANCES_PER_GPU
    batch_wait_ms: float = BATCH_WAIT_MS
    preferred_batch_sizes: str = "none"  # a policy (PREFERRED_POLICIES) or sizes joined by '+'
    max_batch_size: int = _SERVE_DEFAULTS.max_batch_size

    target: ClassVar[str] = "triton"
    in_place: ClassVar[tuple[str, ...]] = ()  # every change is a model reload

    @property
    def label(self) -> str:
        return (
            f"triton {self.instances_per_gpu}/GPU mbs{self.max_batch_size} wait{self.batch_wait_ms:g}ms "
            f"pref-{self.preferred_batch_sizes}"
        )

    @property
    def file_stem(self) -> str:
        return (
            f"triton-ipg{self.instances_per_gpu}-mbs{self.max_batch_size}-wait{self.batch_wait_ms:g}ms"
            f"-pref-{self.preferred_batch_sizes}"
        )

    @property
    def restart_key(self) -> tuple:
        return ()

    def preferred_sizes(self, images_per_request: int) -> list[int]:
        return preferred_batch_sizes(
            self.preferred_batch_sizes, max_batch_size=self.max_batch_size, images_per_request=images_per_request
        )

    def triton_config(self, gpus: int, *, images_per_request: int = 1, **base: Any):
        from rayscale.triton.server import TritonConfig

        return TritonConfig(
            gpus=gpus,
            instances_per_gpu=self.instances_per_gpu,
            max_batch_size=self.max_batch_size,
            batch_wait_ms=self.batch_wait_ms,
            preferred_batch_sizes=self.preferred_sizes(images_per_request),
            **base,
        )

    def up_command(self, gpus: int, provider: str = "auto", images_per_request: int = 1) -> str:
        command = (
            f"rayscale triton up --gpus {gpus} --instances-per-gpu {self.instances_per_gpu} "
            f"--max-batch-size {self.max_batch_size} --batch-wait-ms {self.batch_wait_ms:g}"
        )
        sizes = self.preferred_sizes(images_per_request)
        if sizes:
            command += f" --preferred-batch-sizes {','.join(map(str, sizes))}"
        return command + (f" --provider {provider}" if provider != "auto" else "")


Settings = RayscaleSettings | TritonSettings


@dataclass
class RayscaleSpace:
    """Values per dimension, in the settings' field order."""

    processes_per_gpu: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    batches_in_flight: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    batch_wait_ms: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 5.0])
    max_batch_size: list[int] = field(default_factory=lambda: [128, 256, 512])

    settings_type: ClassVar[type[RayscaleSettings]] = RayscaleSettings


@dataclass
class TritonSpace:
    instances_per_gpu: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 12])
    batch_wait_ms: list[float] = field(default_factory=lambda: [0.0, 0.5, 2.0, 5.0])
    preferred_batch_sizes: list[str] = field(default_factory=lambda: ["none", "pow2"])
    max_batch_size: list[int] = field(default_factory=lambda: [128, 256, 512])

    settings_type: ClassVar[type[TritonSettings]] = TritonSettings


Space = RayscaleSpace | TritonSpace


def dimensions(space: Space) -> list[str]:
    return [f.name for f in fields(space)]


def in_place_dimensions(space: Space) -> list[str]:
    """The dimensions a running server changes without new processes, in field order."""
    return [n for n in dimensions(space) if n in space.settings_type.in_place]


def values_of(space: Space, name: str) -> list:
    return list(getattr(space, name))


def space_to_dict(space: Space) -> dict[str, list]:
    return asdict(space)


def default_space(target: str) -> Space:
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
    return RayscaleSpace() if target == "rayscale" else TritonSpace()


# Dimensions renamed since results were first written: old name -> (name, factor to its unit).
_OLD_NAMES = {"max_queue_delay_us": ("batch_wait_ms", 1e-3), "replicas_per_gpu": ("processes_per_gpu", 1)}


def settings_from_dict(target: str, data: dict[str, Any]) -> Settings:
    """A candidate's settings as tune.json holds them (older names read too)."""
    space = default_space(target)
    values = {}
    for key, value in data.items():
        name, factor = _OLD_NAMES.get(key, (key, 1))
        values[name] = value * factor if factor != 1 else value
    names = set(dimensions(space))
    return space.settings_type(**{k: v for k, v in values.items() if k in names})


def _parse_values(name: str, text: str, kind: type) -> list:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"--space {name}= is empty: give values, e.g. {name}=1,2,4")
    values: list[str] | list[float] | list[int]
    if kind is str:
        values = [p if p in PREFERRED_POLICIES else "+".join(map(str, _explicit_sizes(p))) for p in parts]
    else:
        try:
            values = [float(p) for p in parts] if kind is float else [int(p) for p in parts]
        except ValueError:
            what = "numbers" if kind is float else "integers"
            raise ConfigError(f"--space {name} must be comma-separated {what}, got {text!r}") from None
    if len(set(values)) != len(values):
        raise ConfigError(f"--space {name} lists a value twice: {text!r}")
    return values if kind is str else sorted(values)


def _kind(space: Space, name: str) -> type:
    example = values_of(default_space(space.settings_type.target), name)[0]
    return type(example)


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
        factor: float = 1
        if name in _OLD_NAMES and name not in names:
            name, factor = _OLD_NAMES[name]
        if name not in names:
            raise ConfigError(f"unknown search dimension {name!r} for {target}: use one of {', '.join(names)}")
        kind = _kind(space, name)
        values = _parse_values(name, text, float if factor != 1 else kind)
        setattr(space, name, [kind(v * factor) for v in values] if factor != 1 else values)
    defaults = space.settings_type()
    for name in names:
        for value in values_of(space, name):
            check_settings(replace(defaults, **{name: value}), gpus)
    return space


def check_settings(settings: Settings, gpus: int) -> None:
    """Raises the ConfigError the server's own config would raise for these settings."""
    if isinstance(settings, RayscaleSettings):
        if settings.processes_per_gpu < 1:
            raise ConfigError(f"processes_per_gpu must be ≥ 1, got {settings.processes_per_gpu}")
        settings.serve_config(gpus, provider="null")
    else:
        settings.triton_config(gpus, provider="cpu")

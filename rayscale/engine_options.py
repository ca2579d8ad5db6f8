"""How the engine runs the model: one typed set of options for rayscale's engine and Triton's model.

Every default is the setting rayscale measured as its baseline; a field changes only once a
side-by-side measurement on the GPU (``benchmarks/engine_study.py``) shows it wins. The same
options reach every place that runs the model, so comparisons stay like for like:

* ``Engine`` (onnxruntime) and ``TorchEngine`` (``backend=torch``) through :func:`create_engine`;
* ``rayscale engine-bench --engine-options``, ``rayscale up --engine-options``, ``ServeConfig.engine``;
* Triton's Python-backend model, which cannot import rayscale: its config.pbtxt carries
  :meth:`EngineOptions.cuda_provider_options` and the session settings as plain strings.

On the command line (and in Serve's string arguments) the options are one spec,
``key=value,key=value``, e.g. ``cuda_graph=1,attention=flash``; ``EngineOptions.parse`` reads it and
``EngineOptions.spec`` writes the canonical form back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rayscale.errors import ConfigError

__all__ = [
    "ATTENTION_KERNELS",
    "BACKENDS",
    "GRAPH_OPTIMIZATIONS",
    "TORCH_COMPILE_MODES",
    "EngineOptions",
    "create_engine",
]

BACKENDS = ("onnxruntime", "torch")
# onnxruntime's CUDA provider option sdpa_kernel (AttentionBackend in its attention_common.h): which
# fused attention kernel its Attention/MultiHeadAttention ops may use. 0 lets onnxruntime choose; at
# sequence length 50 it then skips flash attention (its packed-QKV threshold is 513 tokens) and its
# TensorRT fused kernels (not built for sm_90). A positive value names the kernels allowed and drops
# that threshold; the unfused kernel stays as the fallback either way.
ATTENTION_KERNELS = {"auto": 0, "flash": 1, "efficient": 2, "trt": 4, "cudnn": 8, "math": 16}
GRAPH_OPTIMIZATIONS = ("all", "extended", "basic", "disabled")
TORCH_COMPILE_MODES = ("off", "default", "max-autotune", "max-autotune-no-cudagraphs")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class EngineOptions:
    """Engine settings beyond provider, device and batch size. Defaults: the measured baseline."""

    backend: str = "onnxruntime"  # onnxruntime | torch (open_clip's weights, SDPA attention)
    # onnxruntime, CUDA provider: one CUDA graph per batch bucket (fixed buffers, replayed per batch)
    cuda_graph: bool = False
    attention: str = "auto"  # see ATTENTION_KERNELS
    graph_optimization: str = "all"  # onnxruntime's graph optimization level for the session
    tunable_op: bool = False  # onnxruntime's TunableOp: time candidate kernels once per shape
    # torch: torch.compile mode ("off": eager)
    torch_compile: str = "off"

    def __post_init__(self) -> None:
        _one_of("backend", self.backend, BACKENDS)
        _one_of("attention", self.attention, tuple(ATTENTION_KERNELS))
        _one_of("graph_optimization", self.graph_optimization, GRAPH_OPTIMIZATIONS)
        _one_of("torch_compile", self.torch_compile, TORCH_COMPILE_MODES)
        if self.backend == "torch" and (self.cuda_graph or self.attention != "auto" or self.tunable_op):
            raise ConfigError(
                "cuda_graph, attention and tunable_op are onnxruntime settings: drop them with backend=torch "
                "(torch picks its attention kernel itself; torch_compile=max-autotune captures CUDA graphs)"
            )
        if self.backend == "onnxruntime" and self.torch_compile != "off":
            raise ConfigError("torch_compile needs backend=torch: add backend=torch or drop torch_compile")

    # ---- text at the edges ---------------------------------------------------------------------

    @classmethod
    def parse(cls, spec: str | None) -> EngineOptions:
        """Options from ``key=value,key=value`` (empty: the defaults); unknown keys list the valid ones."""
        values: dict[str, Any] = {}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for item in (spec or "").split(","):
            item = item.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            key, value = key.strip().replace("-", "_"), value.strip()
            if not sep or not value:
                raise ConfigError(f"engine option {item!r} must be key=value, e.g. cuda_graph=1,attention=flash")
            if key not in fields:
                raise ConfigError(f"unknown engine option {key!r}: valid ones are {', '.join(fields)}")
            values[key] = _convert(key, value, fields[key].type)
        return cls(**values)

    @classmethod
    def from_value(cls, value: EngineOptions | dict | str | None) -> EngineOptions:
        """Options from themselves, a spec string (CLI, ``serve run``) or a dict (a Serve config file's args)."""
        if isinstance(value, cls):
            return value
        if value is None or isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, dict):
            return cls.parse(",".join(f"{k}={v}" for k, v in value.items()))
        raise ConfigError(f"engine options must be a key=value,... string or a mapping, got {type(value).__name__}")

    def spec(self) -> str:
        """The options that differ from the defaults, as ``key=value,...`` ('' for the defaults)."""
        default = EngineOptions()
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                parts.append(f"{f.name}={int(value) if isinstance(value, bool) else value}")
        return ",".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---- onnxruntime ---------------------------------------------------------------------------

    def cuda_provider_options(self, device_id: int) -> dict[str, str]:
        """The CUDA execution provider's options: rayscale's fixed ones plus these settings."""
        options = {
            "device_id": str(device_id),
            "cudnn_conv_algo_search": "HEURISTIC",
            "do_copy_in_default_stream": "1",
        }
        if self.cuda_graph:
            options["enable_cuda_graph"] = "1"
        if self.attention != "auto":
            options["sdpa_kernel"] = str(ATTENTION_KERNELS[self.attention])
        if self.tunable_op:
            options["tunable_op_enable"] = "1"
            options["tunable_op_tuning_enable"] = "1"
            options["tunable_op_max_tuning_duration_ms"] = "200"
        return options

    def apply_to_session(self, opts: Any, ort: Any) -> None:
        """Set these options on an ``onnxruntime.SessionOptions``."""
        opts.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[self.graph_optimization]


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"engine option {name} must be one of {', '.join(allowed)}, got {value!r}")


def _convert(key: str, text: str, annotation: Any) -> Any:
    if annotation in (bool, "bool"):
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"engine option {key} must be 1 or 0 (true/false), got {text!r}")
    return text


def create_engine(
    model: Any,
    *,
    options: EngineOptions | None = None,
    provider: str = "auto",
    device_id: int = 0,
    max_batch_size: int = 256,
    intra_op_threads: int = 0,
    warmup: bool = True,
):
    """The engine ``options.backend`` names, with the one interface a replica and engine-bench use
    (``encode``, ``encode_parts``, ``release_buffers``, ``provider``)."""
    options = options or EngineOptions()
    if options.backend == "torch":
        from rayscale.torch_engine import TorchEngine

        return TorchEngine(
            model, options=options, provider=provider, device_id=device_id, max_batch_size=max_batch_size, warmup=warmup
        )
    from rayscale.engine import Engine

    return Engine(
        model,
        options=options,
        provider=provider,
        device_id=device_id,
        max_batch_size=max_batch_size,
        intra_op_threads=intra_op_threads,
        warmup=warmup,
    )

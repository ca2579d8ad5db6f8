"""`rayscale engine-bench`: the engine alone, the ceiling every served number is compared with.

For each batch size it times ``Engine.encode`` on host (numpy) input — what a serving replica
must do — and, on CUDA, the same batch made of 32-image requests in each copy mode (what a
replica does: ``host-parts-pinned|direct|pageable``), and the same session on input already on
the GPU. Where torch and a GPU
are present it times torch eager fp16 on open_clip's own tower beside it, so the ratio of the
two is measured in one run, and checks output parity against torch fp32.

``engine_options`` (``--engine-options``) runs the engine with other settings, or the torch engine
(``backend=torch``). ``profile`` (``--profile``) adds where the largest batch's GPU time goes: its
kernels by operator group beside each group's roofline, and onnxruntime's own per-operator times
(see ``rayscale.engine_profile``).
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayscale.config import DEFAULT_MODEL_DIR, INPUT_NAME, OUTPUT_NAME, parse_int_list
from rayscale.engine import COPY_MODES, Engine, random_images
from rayscale.engine_options import EngineOptions, create_engine
from rayscale.environment import collect_environment, now_iso
from rayscale.errors import ConfigError, ResultsError
from rayscale.export import load_model_info
from rayscale.results import EngineBenchResult, EnginePoint, write_json_atomic

__all__ = ["EngineBenchConfig", "run_engine_bench"]

GATHER_PART = 32  # images per request in the gathered (as-served) measurement


@dataclass
class EngineBenchConfig:
    model_dir: str = str(DEFAULT_MODEL_DIR)
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32, 128, 256])
    provider: str = "auto"
    min_time_s: float = 2.0  # per batch size and mode
    min_iterations: int = 5
    torch_eager: str = "auto"  # auto | on | off
    device_input: bool = True  # also time input already on the GPU (CUDA only)
    engine_options: EngineOptions = field(default_factory=EngineOptions)
    profile: bool = False  # kernel times by operator group at the largest batch (CUDA, needs torch)
    out: str | None = None
    overwrite: bool = False
    command: str | None = None

    def __post_init__(self) -> None:
        self.batch_sizes = parse_int_list(self.batch_sizes, "batch sizes")
        self.engine_options = EngineOptions.from_value(self.engine_options)
        if self.min_time_s <= 0:
            raise ConfigError(f"min time must be > 0 s, got {self.min_time_s}")
        if self.torch_eager not in ("auto", "on", "off"):
            raise ConfigError(f"torch eager must be auto, on or off, got {self.torch_eager!r}")


def _time_loop(fn: Callable[[int], Any], min_time_s: float, min_iterations: int) -> np.ndarray:
    times: list[float] = []
    deadline = time.perf_counter() + min_time_s
    while len(times) < min_iterations or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn(len(times))
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def _rotating(run: Callable[[Any], Any], inputs: Sequence[Any]) -> Callable[[int], Any]:
    """Iteration i runs on input i mod len(inputs): several inputs in turn keep caches from flattering the times."""
    return lambda i: run(inputs[i % len(inputs)])


def _point(batch: int, times: np.ndarray, *, backend: str, where: str, provider: str) -> EnginePoint:
    return EnginePoint(
        batch_size=batch,
        images_per_s=batch * len(times) / float(times.sum()),
        latency_mean_ms=float(times.mean() * 1000),
        latency_p50_ms=float(np.percentile(times, 50) * 1000),
        latency_p99_ms=float(np.percentile(times, 99) * 1000),
        iterations=int(len(times)),
        backend=backend,
        input_location=where,
        provider=provider,
    )


def memcpy_report(model_path: Path, device_id: int = 0) -> dict[str, Any]:
    """Memcpy nodes onnxruntime adds on CUDA (each is lost speed), read from the optimised graph."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opt_path = os.path.join(tmp, "optimized.onnx")
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = opt_path
        opts.log_severity_level = 3
        ort.InferenceSession(
            str(model_path),
            sess_options=opts,
            providers=[("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"],
        )
        graph = onnx.load(opt_path, load_external_data=False).graph
        ops: dict[str, int] = {}
        for node in graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
    memcpy = {k: v for k, v in ops.items() if k.startswith("Memcpy")}
    return {
        "memcpy_nodes": sum(memcpy.values()),
        "memcpy_by_type": memcpy,
        "fused": {
            k: ops[k] for k in ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "BiasGelu", "FastGelu") if k in ops
        },
    }


def ort_device_runner(session, device_id: int, batch: int, run_options=None):
    """One batch already on the GPU, run by ``session`` into a GPU output: a function of the iteration."""
    import onnxruntime as ort

    dev = ort.OrtValue.ortvalue_from_numpy(random_images(batch, seed=batch), "cuda", device_id)
    out = ort.OrtValue.ortvalue_from_shape_and_type((batch, 512), np.float32, "cuda", device_id)
    binding = session.io_binding()
    binding.bind_ortvalue_input(INPUT_NAME, dev)
    binding.bind_ortvalue_output(OUTPUT_NAME, out)
    return functools.partial(_run_bound, session, binding, run_options, (dev, out))


def _run_bound(session, binding, run_options, _buffers: tuple, _i: int = 0) -> None:
    """One run through an IO binding; ``_buffers``, the bound device buffers, ride along so they live as long as the runner."""
    session.run_with_iobinding(binding, run_options)
    binding.synchronize_outputs()


def torch_device_runner(engine, batch: int):
    """The torch engine's model on one batch already on the GPU."""
    import torch

    x = torch.from_numpy(random_images(batch, seed=batch)).to(engine.device)

    def run(_i: int = 0) -> None:
        with torch.inference_mode():
            engine._forward(x)
        torch.cuda.synchronize(engine.device)

    return run


def _device_input_runner(engine, batch: int):
    if isinstance(engine, Engine):
        return ort_device_runner(engine.session, engine.device_id, batch)
    return torch_device_runner(engine, batch)


def _profile(engine, batch: int, warnings: list[str]) -> dict[str, Any] | None:
    """Where one batch's GPU time goes (rayscale.engine_profile), or None with a warning saying why."""
    from rayscale.engine_profile import datasheet_peaks, measure_peaks, ort_node_profile, profile_batch

    try:
        import torch

        if not torch.cuda.is_available():
            raise ImportError("torch sees no CUDA device")
    except ImportError as e:
        warnings.append(f"--profile skipped: the kernel profile needs torch with CUDA ({e})")
        return None
    try:
        peaks = measure_peaks(engine.device_id)
    except RuntimeError as e:
        peaks = datasheet_peaks(torch.cuda.get_device_name(engine.device_id))
        warnings.append(f"peaks from the datasheet: measuring them failed ({e})")
    result = profile_batch(_device_input_runner(engine, batch), batch, peaks)
    if isinstance(engine, Engine):
        result.ort_nodes = ort_node_profile(engine.session, lambda s: ort_device_runner(s, engine.device_id, batch))
    warnings.extend(result.notes)
    return result.to_dict()


def _torch_eager(
    batch_sizes: list[int], cfg: EngineBenchConfig, engine: Engine, warnings: list[str]
) -> tuple[list[EnginePoint], dict[str, Any] | None]:
    try:
        import torch

        from rayscale.export import cosine_rows
    except ImportError:
        warnings.append("torch eager comparison skipped: torch/open_clip not installed")
        return [], None
    if not torch.cuda.is_available():
        warnings.append("torch eager comparison skipped: torch sees no CUDA device")
        return [], None
    import copy

    from rayscale.errors import ConfigError
    from rayscale.torch_engine import load_visual_for

    info = load_model_info(cfg.model_dir)
    try:
        visual = load_visual_for(info)
    except ConfigError as e:
        warnings.append(f"torch eager comparison skipped: {e}")
        return [], None
    device = torch.device("cuda", 0)
    mean = torch.tensor(info.preprocessing["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(info.preprocessing["std"], device=device).view(1, 3, 1, 1)
    points = []
    half = copy.deepcopy(visual).half().to(device).eval()

    def forward(x: torch.Tensor) -> None:
        half(x)
        torch.cuda.synchronize()

    for batch in batch_sizes:
        x = (
            torch.from_numpy(random_images(batch, seed=batch))
            .to(device)
            .permute(0, 3, 1, 2)
            .float()
            .div(255)
            .sub(mean)
            .div(std)
            .half()
        )
        with torch.inference_mode():
            for _ in range(3):
                forward(x)
            times = _time_loop(_rotating(forward, [x]), cfg.min_time_s, cfg.min_iterations)
        points.append(_point(batch, times, backend="torch-eager-fp16", where="device", provider="cuda"))
    parity = None
    if info.weights != "random" or info.extra.get("random_seed") is not None:  # the same weights rebuilt
        from rayscale.export import parity_batch

        imgs = parity_batch(16, seed=123)
        del half
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # a true fp32 reference
        try:
            with torch.inference_mode():
                x = torch.from_numpy(imgs).to(device).permute(0, 3, 1, 2).float().div(255).sub(mean).div(std)
                ref = visual.to(device)(x).float().cpu().numpy()
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        cos = cosine_rows(ref, engine.encode(imgs))
        parity = {
            "reference": "open_clip torch fp32 (GPU, no TF32)",
            "min_cosine": float(cos.min()),
            "mean_cosine": float(cos.mean()),
        }
    return points, parity


def run_engine_bench(cfg: EngineBenchConfig) -> EngineBenchResult:
    if cfg.out and not cfg.overwrite and Path(cfg.out).exists():
        raise ResultsError(f"{cfg.out} exists: pass --overwrite to replace it")
    info = load_model_info(cfg.model_dir)
    max_batch = max(cfg.batch_sizes)
    started = now_iso()
    engine = create_engine(
        cfg.model_dir, options=cfg.engine_options, provider=cfg.provider, max_batch_size=max_batch, warmup=False
    )
    onnxruntime = isinstance(engine, Engine)
    backend = "onnxruntime" if onnxruntime else "torch"
    warnings: list[str] = []
    extra: dict[str, Any] = {}
    if engine.provider == "cuda" and onnxruntime:
        extra["copy_mode"] = engine.copy
        extra.update(memcpy_report(engine.model_path, engine.device_id))
        if extra["memcpy_nodes"]:
            warnings.append(f"onnxruntime added {extra['memcpy_nodes']} Memcpy nodes: {extra['memcpy_by_type']}")
    else:
        warnings.append("the engine runs on the CPU: these are CPU figures, not a GPU ceiling")
    points: list[EnginePoint] = []
    for batch in cfg.batch_sizes:
        inputs = [random_images(batch, seed=batch * 10 + k) for k in range(3)]  # rotate: no cache effects
        for _ in range(3):
            engine.encode(inputs[0])
        times = _time_loop(_rotating(engine.encode, inputs), cfg.min_time_s, cfg.min_iterations)
        points.append(_point(batch, times, backend=backend, where="host", provider=engine.provider))
        if onnxruntime and engine.copy != "pageable" and batch > GATHER_PART:
            # What a replica does: several requests' images into one batch, in each copy mode.
            parts = [np.array_split(x, batch // GATHER_PART) for x in inputs]
            default = engine.copy
            for mode in COPY_MODES:
                engine.set_copy(mode)
                try:
                    for _ in range(3):
                        engine.encode_parts(parts[0])
                    times = _time_loop(_rotating(engine.encode_parts, parts), cfg.min_time_s, cfg.min_iterations)
                except RuntimeError as e:  # a CUDA call of that mode failed: the other modes still count
                    warnings.append(f"copy mode {mode} failed at batch {batch}: {e}")
                    continue
                points.append(_point(batch, times, backend="onnxruntime", where=f"host-parts-{mode}", provider=engine.provider))
            engine.set_copy(default)
        if engine.provider == "cuda" and cfg.device_input:
            run = _device_input_runner(engine, batch)
            for i in range(3):
                run(i)
            times = _time_loop(run, cfg.min_time_s, cfg.min_iterations)
            points.append(_point(batch, times, backend=backend, where="device", provider=engine.provider))
    profile = _profile(engine, max_batch, warnings) if cfg.profile and engine.provider == "cuda" else None
    if cfg.profile and engine.provider != "cuda":
        warnings.append("--profile skipped: the engine runs on the CPU (the profile times GPU kernels)")
    parity = None
    if cfg.torch_eager == "on" or (cfg.torch_eager == "auto" and engine.provider == "cuda"):
        torch_points, parity = _torch_eager(cfg.batch_sizes, cfg, engine, warnings)
        points.extend(torch_points)
    model = info.to_dict()
    model["engine_extra"] = extra
    if parity:
        model["gpu_parity"] = parity
    result = EngineBenchResult(
        command=cfg.command or "",
        environment=collect_environment(cfg.command),
        model=model,
        points=points,
        warnings=warnings,
        started_at=started,
        ended_at=now_iso(),
        engine_options=cfg.engine_options.to_dict(),
        profile=profile,
    )
    if cfg.out:
        write_json_atomic(cfg.out, result.to_dict(), overwrite=cfg.overwrite)
    return result

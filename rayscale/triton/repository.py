"""Triton model repositories for the OpenCLIP ViT-B/32 encoder, with the same contract as rayscale.

Both kinds serve model ``openclip_vit_b32``: input ``IMAGE`` UINT8 [-1, 224, 224, 3], output
``EMBEDDING`` FP32 [-1, 512], ``max_batch_size`` equal to rayscale's (256 images by default) and
Triton's dynamic batcher with a queue delay equal to rayscale's batch wait (2 ms by default).

* :func:`write_python_backend_repo`: for the bundled ``tritonserver`` (see ``install.py``). The
  Python backend runs ``model_py/model.py``: onnxruntime inside the backend's stub process,
  ``instances_per_gpu`` instances on each GPU (``KIND_GPU``, ``gpus: [i]``), or ``KIND_CPU``.
* :func:`write_onnxruntime_repo`: for the official Triton container (``nvcr.io/nvidia/tritonserver``)
  with its C++ ``onnxruntime`` backend; one repository per GPU count, ``<out>/gpus-<N>/``, each
  serving the same model name so the same client measures every count. TensorRT (through
  onnxruntime's TensorRT execution provider) and its CUDA graphs are opt-in.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from rayscale.config import (
    BATCH_WAIT_MS,
    EMBED_DIM,
    IMAGE_SIZE,
    INPUT_NAME,
    MODEL_NAME,
    OUTPUT_NAME,
    check,
    check_batch_wait_ms,
    check_max_batch_size,
    queue_delay_us,
)
from rayscale.engine_options import EngineOptions
from rayscale.errors import ConfigError
from rayscale.export import load_model_info
from rayscale.files import replacing, write_text_atomic

__all__ = [
    "ACCELERATORS",
    "DEFAULT_INSTANCES_PER_GPU",
    "MODEL_PY",
    "ModelBatching",
    "engine_parameters",
    "onnxruntime_config",
    "python_backend_config",
    "repo_dir_for_gpus",
    "write_onnxruntime_repo",
    "write_python_backend_repo",
]

ACCELERATORS = ("none", "tensorrt")
MODEL_PY = Path(__file__).resolve().parent / "model_py" / "model.py"
MODEL_FILE = "model.onnx"
VERSION = "1"


# ---- validation ----------------------------------------------------------------------------------


# Concurrent model executions per GPU, matched to a rayscale replica's default batches in flight
# (ServeConfig.batches_in_flight), so the two servers' defaults compare like for like.
DEFAULT_INSTANCES_PER_GPU = 4


@dataclass(frozen=True)
class ModelBatching:
    """How the Triton model batches, in every repository kind: checked once, here.

    Batch limits default to rayscale's own (ServeConfig): 256 images, a 2 ms batch wait.

    Where ``preferred_batch_sizes`` is empty the config names none, and Triton fills in
    ``max_batch_size`` (its normalised config, ``GET .../config``, shows it): its dynamic batcher
    then holds a batch for up to ``batch_wait_ms`` until it is full. Under a closed loop that
    returns a whole batch at once, the next requests arrive together again, within the wait, and
    every batch holds every request in flight: one instance runs while the others idle. Preferred
    sizes at the request's image count and its doublings (or a wait of 0) let the batcher send each
    request as it comes, to the next free instance.
    """

    instances_per_gpu: int = DEFAULT_INSTANCES_PER_GPU  # on the CPU: instances in all
    max_batch_size: int = 256  # images
    batch_wait_ms: float = BATCH_WAIT_MS  # the config file's max_queue_delay_microseconds
    preferred_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        check(1 <= self.instances_per_gpu <= 16, f"instances_per_gpu must be in 1..16, got {self.instances_per_gpu}")
        check_max_batch_size(self.max_batch_size)
        check_batch_wait_ms(self.batch_wait_ms)
        sizes = tuple(sorted(set(self.preferred_batch_sizes)))
        for size in sizes:
            check(
                1 <= size <= self.max_batch_size,
                f"preferred batch size {size} must be in 1..max_batch_size ({self.max_batch_size})",
            )
        object.__setattr__(self, "preferred_batch_sizes", sizes)


def _check_gpus(gpus: int) -> None:
    check(gpus >= 1, f"gpus must be ≥ 1, got {gpus} (to serve on the CPU pass provider 'cpu' with gpus 1)")


# ---- config.pbtxt pieces -------------------------------------------------------------------------


def _io_block() -> str:
    return (
        "input [\n"
        f'  {{ name: "{INPUT_NAME}" data_type: TYPE_UINT8 dims: [ {IMAGE_SIZE}, {IMAGE_SIZE}, 3 ] }}\n'
        "]\n"
        "output [\n"
        f'  {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: [ {EMBED_DIM} ] }}\n'
        "]\n"
    )


def _gpu_instance_groups(gpus: int, count: int) -> str:
    groups = ",\n".join(f'  {{ name: "gpu{i}" kind: KIND_GPU count: {count} gpus: [ {i} ] }}' for i in range(gpus))
    return f"instance_group [\n{groups}\n]\n"


def _cpu_instance_group(count: int) -> str:
    return f'instance_group [\n  {{ name: "cpu" kind: KIND_CPU count: {count} }}\n]\n'


def _dynamic_batching(batching: ModelBatching) -> str:
    lines = ["dynamic_batching {"]
    if batching.preferred_batch_sizes:
        lines.append(f"  preferred_batch_size: [ {', '.join(str(s) for s in batching.preferred_batch_sizes)} ]")
    lines.append(f"  max_queue_delay_microseconds: {queue_delay_us(batching.batch_wait_ms)}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _parameters(params: dict[str, str]) -> str:
    return "".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in params.items())


def _warmup(batch_sizes: list[int]) -> str:
    entries = []
    for b in batch_sizes:
        entries.append(
            f'  {{ name: "random_{b}" batch_size: {b} inputs {{ key: "{INPUT_NAME}" value: '
            f"{{ data_type: TYPE_UINT8 dims: [ {IMAGE_SIZE}, {IMAGE_SIZE}, 3 ] random_data: true }} }} }}"
        )
    return "model_warmup [\n" + ",\n".join(entries) + "\n]\n"


def _tensorrt_accelerator(max_batch_size: int, precision: str, cache_dir: str, workspace_bytes: int, cuda_graphs: bool) -> str:
    shape = f"{IMAGE_SIZE}x{IMAGE_SIZE}x3"
    params = {
        "precision_mode": precision.upper(),
        "max_workspace_size_bytes": str(workspace_bytes),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": cache_dir,
        # One optimisation profile over every batch size the dynamic batcher can form: no rebuilds mid-run.
        "trt_profile_min_shapes": f"{INPUT_NAME}:1x{shape}",
        "trt_profile_opt_shapes": f"{INPUT_NAME}:{max_batch_size}x{shape}",
        "trt_profile_max_shapes": f"{INPUT_NAME}:{max_batch_size}x{shape}",
    }
    if cuda_graphs:
        params["trt_cuda_graph_enable"] = "1"
    body = "\n".join(f'        parameters {{ key: "{k}" value: "{v}" }}' for k, v in params.items())
    return (
        "optimization {\n"
        "  execution_accelerators {\n"
        "    gpu_execution_accelerator: [\n"
        "      {\n"
        '        name: "tensorrt"\n'
        f"{body}\n"
        "      }\n"
        "    ]\n"
        "  }\n"
        "}\n"
    )


# ---- files ---------------------------------------------------------------------------------------


def _place(src: Path, dst: Path, how: str) -> None:
    """Put src at dst: 'symlink', 'copy', or 'link' (a hard link where the file system allows, else a copy)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if how == "symlink":
        dst.symlink_to(src.resolve())
        return
    if how == "link":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    with replacing(dst) as tmp:
        shutil.copyfile(src, tmp)


def _prepare_out(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {out} ({e.strerror}): choose another --out") from None
    return out


# ---- public --------------------------------------------------------------------------------------


def engine_parameters(options: EngineOptions) -> dict[str, str]:
    """The engine settings as the Python-backend model reads them (it cannot import rayscale).

    ``cuda_provider_options`` is ``key=value;...`` without the device, which each instance adds.
    """
    check(
        options.backend == "onnxruntime",
        f"Triton's Python-backend model runs onnxruntime: backend={options.backend} is rayscale's alone",
    )
    cuda = {k: v for k, v in options.cuda_provider_options(0).items() if k != "device_id"}
    return {
        "cuda_provider_options": ";".join(f"{k}={v}" for k, v in cuda.items()),
        "graph_optimization": options.graph_optimization,
        "cuda_graph": "1" if options.cuda_graph else "0",
    }


def python_backend_config(
    batching: ModelBatching = ModelBatching(),
    *,
    gpus: int,
    provider: str = "cuda",
    intra_op_threads: int = 0,
    engine_options: EngineOptions | None = None,
) -> str:
    """The config.pbtxt text of the Python-backend model; ``engine_options`` as rayscale's engine takes them."""
    check(provider in ("cuda", "cpu"), f"provider must be cuda or cpu, got {provider!r}")
    _check_gpus(gpus)
    check(intra_op_threads >= 0, f"intra_op_threads must be ≥ 0, got {intra_op_threads}")
    engine = engine_parameters(engine_options or EngineOptions())
    count = batching.instances_per_gpu
    groups = _gpu_instance_groups(gpus, count) if provider == "cuda" else _cpu_instance_group(count)
    return (
        f'name: "{MODEL_NAME}"\n'
        'backend: "python"\n'
        f"max_batch_size: {batching.max_batch_size}\n"
        + _io_block()
        + groups
        + _dynamic_batching(batching)
        + _parameters(
            {
                "model_file": MODEL_FILE,
                "intra_op_threads": str(intra_op_threads),
                # Inputs arrive in host memory (the model copies them once into its device buffers).
                "FORCE_CPU_ONLY_INPUT_TENSORS": "yes",
                **engine,
            }
        )
    )


def write_python_backend_repo(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    batching: ModelBatching = ModelBatching(),
    *,
    gpus: int,
    provider: str = "cuda",
    intra_op_threads: int = 0,
    link: str = "symlink",
    engine_options: EngineOptions | None = None,
) -> Path:
    """Write ``<out_dir>/openclip_vit_b32/{config.pbtxt, 1/model.py, 1/model.onnx}``; returns out_dir.

    ``provider`` 'cuda' gives one ``KIND_GPU`` instance group per GPU (``gpus: [i]``, ``count:
    instances_per_gpu``); 'cpu' gives one ``KIND_CPU`` group of ``instances_per_gpu`` instances.
    ``link`` is how model.onnx gets there: 'symlink' (default, instant), 'link' or 'copy'.
    """
    config = python_backend_config(
        batching, gpus=gpus, provider=provider, intra_op_threads=intra_op_threads, engine_options=engine_options
    )
    check(link in ("symlink", "link", "copy"), f"link must be symlink, link or copy, got {link!r}")
    load_model_info(model_dir)  # a missing export is a ModelNotFoundError that says how to make one
    out = _prepare_out(out_dir)
    model_root = out / MODEL_NAME
    write_text_atomic(model_root / "config.pbtxt", config)
    (model_root / VERSION).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MODEL_PY, model_root / VERSION / "model.py")
    _place(Path(model_dir) / MODEL_FILE, model_root / VERSION / MODEL_FILE, link)
    shutil.copyfile(Path(model_dir) / "model.json", model_root / "model.json")
    return out


def onnxruntime_config(
    batching: ModelBatching = ModelBatching(),
    *,
    gpus: int,
    accelerator: str = "none",
    cuda_graphs: bool = False,
    trt_precision: str = "fp16",
    trt_cache_dir: str = "/tmp/rayscale-trt-cache",
    trt_workspace_bytes: int = 4 << 30,
    warmup: bool = True,
) -> str:
    """The config.pbtxt text of the onnxruntime-backend model for ``gpus`` GPUs."""
    _check_gpus(gpus)
    check(
        accelerator in ACCELERATORS,
        f"accelerator must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}",
    )
    check(trt_precision in ("fp16", "fp32"), f"trt_precision must be fp16 or fp32, got {trt_precision!r}")
    # onnxruntime's CUDA provider captures CUDA graphs only with fixed input addresses and shapes,
    # which Triton's onnxruntime backend does not give it; TensorRT's provider handles them itself.
    check(
        not cuda_graphs or accelerator == "tensorrt",
        "cuda_graphs needs accelerator 'tensorrt' (the onnxruntime backend captures CUDA graphs only through "
        "TensorRT): add --accelerator tensorrt or drop --cuda-graphs",
    )
    text = (
        f'name: "{MODEL_NAME}"\n'
        'backend: "onnxruntime"\n'
        f'default_model_filename: "{MODEL_FILE}"\n'
        f"max_batch_size: {batching.max_batch_size}\n"
        + _io_block()
        + _gpu_instance_groups(gpus, batching.instances_per_gpu)
        + _dynamic_batching(batching)
    )
    if accelerator == "tensorrt":
        text += _tensorrt_accelerator(batching.max_batch_size, trt_precision, trt_cache_dir, trt_workspace_bytes, cuda_graphs)
    if warmup:
        text += _warmup(sorted({1, *batching.preferred_batch_sizes, batching.max_batch_size}))
    return text


def repo_dir_for_gpus(out_dir: str | os.PathLike, gpus: int) -> Path:
    """The repository for ``gpus`` GPUs inside an out dir written by write_onnxruntime_repo."""
    return Path(out_dir) / f"gpus-{gpus}"


def write_onnxruntime_repo(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    batching: ModelBatching = ModelBatching(),
    *,
    gpus_list: tuple[int, ...] | list[int] = (1, 2, 4, 8),
    accelerator: str = "none",
    cuda_graphs: bool = False,
    trt_precision: str = "fp16",
    trt_cache_dir: str = "/tmp/rayscale-trt-cache",
    warmup: bool = True,
) -> dict[int, Path]:
    """One repository per GPU count for the official Triton container; returns {gpus: repository dir}.

    Layout: ``<out>/gpus-<N>/openclip_vit_b32/{config.pbtxt, 1/model.onnx}`` plus ``<out>/manifest.json``
    (what was generated and with which settings). Serve one with
    ``tritonserver --model-repository <out>/gpus-<N>`` on a host (or pod) with N GPUs. model.onnx is
    copied once and hard-linked into the other repositories where the file system allows.
    """
    counts = sorted(set(int(g) for g in gpus_list))
    check(bool(counts), "gpus_list is empty: give at least one GPU count, e.g. 1,2,4,8")
    configs = {
        g: onnxruntime_config(
            batching,
            gpus=g,
            accelerator=accelerator,
            cuda_graphs=cuda_graphs,
            trt_precision=trt_precision,
            trt_cache_dir=trt_cache_dir,
            warmup=warmup,
        )
        for g in counts
    }
    info = load_model_info(model_dir)
    out = _prepare_out(out_dir)
    source = Path(model_dir) / MODEL_FILE
    first: Path | None = None
    repos: dict[int, Path] = {}
    for g, text in configs.items():
        repo = repo_dir_for_gpus(out, g)
        model_root = repo / MODEL_NAME
        write_text_atomic(model_root / "config.pbtxt", text)
        target = model_root / VERSION / MODEL_FILE
        if first is None:
            _place(source, target, "copy")
            first = target
        else:
            _place(first, target, "link")
        shutil.copyfile(Path(model_dir) / "model.json", model_root / "model.json")
        repos[g] = repo
    manifest = {
        "model": MODEL_NAME,
        "backend": "onnxruntime",
        "model_sha256": info.sha256,
        "precision": info.precision,
        "repositories": {str(g): str(p.relative_to(out)) for g, p in repos.items()},
        "settings": {
            **asdict(batching),
            "accelerator": accelerator,
            "cuda_graphs": cuda_graphs,
            "trt_precision": trt_precision if accelerator == "tensorrt" else None,
            "warmup": warmup,
        },
        "serve": "tritonserver --model-repository <out>/gpus-<N> on a host with N GPUs",
    }
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return repos

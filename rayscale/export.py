"""Export the OpenCLIP ViT-B/32 image encoder to ONNX, check parity, write model.json.

The exported graph takes what a client can send cheaply, ``UINT8 [N, 224, 224, 3]`` (already
resized and center-cropped), and returns ``FP32 [N, 512]`` embeddings. Everything between is
in the graph:

* patch embedding as reshape + matmul on the uint8 pixels, with CLIP's mean/std normalisation
  folded into the patch weights and bias (exact algebra, no per-pixel arithmetic);
* attention written with separate q/k/v projections, the pattern onnxruntime's transformer
  optimizer fuses into one ``Attention`` kernel, and no shape arithmetic on the dynamic batch
  axis (every reshape uses -1 for the batch), so the CUDA provider needs no Memcpy nodes;
* the final LayerNorm on the class token only (LayerNorm is per token, so this is exact).

The weights are open_clip's own: the module below copies them from open_clip's ``visual``
tower, and ``export_model`` proves the copy with a parity check against open_clip itself.
torch and open_clip are an optional extra (``pip install 'rayscale[export]'``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayscale.config import EMBED_DIM, IMAGE_SIZE, INPUT_NAME, MODEL_NAME, OUTPUT_NAME
from rayscale.errors import ExportError, ModelNotFoundError
from rayscale.files import write_text_atomic

__all__ = ["ExportConfig", "ModelInfo", "export_model", "load_model_info", "parity_batch"]

log = logging.getLogger(__name__)

ARCH = "ViT-B-32"
RANDOM_WEIGHTS_SEED = 0
PARITY_MIN_COSINE = {"fp32": 0.999, "fp16": 0.99}
_EXTRA_HINT = "install the export extra: pip install 'rayscale[export]' (torch, torchvision, open_clip_torch, onnx)"


@dataclass
class ExportConfig:
    out_dir: str = f"models/{MODEL_NAME}"
    precision: str = "fp16"  # fp16 | fp32
    pretrained: str | None = None  # a local checkpoint file, or an open_clip pretrained tag
    opset: int = 17
    optimize: bool = True  # run onnxruntime's transformer optimizer (fuses attention, LayerNorm, GELU)
    parity_batch_size: int = 4

    def __post_init__(self) -> None:
        from rayscale.errors import ConfigError

        if self.precision not in PARITY_MIN_COSINE:
            raise ConfigError(f"precision must be fp16 or fp32, got {self.precision!r}")
        if not 13 <= self.opset <= 23:
            raise ConfigError(f"opset must be in 13..23, got {self.opset}")
        if not 1 <= self.parity_batch_size <= 64:
            raise ConfigError(f"parity_batch_size must be in 1..64, got {self.parity_batch_size}")


@dataclass
class ModelInfo:
    """What model.json records: everything a benchmark must state about the model it measured."""

    name: str
    architecture: str
    file: str
    sha256: str
    size_bytes: int
    precision: str
    opset: int
    weights: str  # "random" or the checkpoint / tag it came from
    activation: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    preprocessing: dict[str, Any]
    parity: dict[str, Any]
    fused_operators: dict[str, int]
    versions: dict[str, str]
    exported_at: str
    export_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_model_info(model_dir: str | os.PathLike) -> ModelInfo:
    """Read model.json; a missing model is a ModelNotFoundError that says how to export one."""
    d = Path(model_dir)
    info_path, onnx_path = d / "model.json", d / "model.onnx"
    if not onnx_path.is_file() or not info_path.is_file():
        raise ModelNotFoundError(
            f"model not found at {d} (need model.onnx and model.json): run `rayscale export --out {d}` first"
        )
    try:
        data = json.loads(info_path.read_text())
        return ModelInfo(**data)
    except (json.JSONDecodeError, TypeError) as e:
        raise ModelNotFoundError(f"{info_path} is not a rayscale model.json ({e}): export the model again") from None


def parity_batch(n: int, seed: int = 0) -> np.ndarray:
    """A fixed, reproducible uint8 image batch with structure (not pure noise) for parity checks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / IMAGE_SIZE
    imgs = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i in range(n):
        f = rng.uniform(1, 6, size=3)
        base = np.stack([np.sin(f[c] * np.pi * (xx + yy * (c + 1))) for c in range(3)], axis=-1)
        noise = rng.normal(0, 0.15, size=base.shape)
        imgs[i] = np.clip((base * 0.5 + 0.5 + noise) * 255, 0, 255).astype(np.uint8)
    return imgs


# ---- torch side ----------------------------------------------------------------------------------


def _import_torch():
    try:
        import open_clip
        import torch
    except ImportError as e:
        raise ExportError(f"model export needs torch and open_clip ({e.name} is missing): {_EXTRA_HINT}") from None
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError(f"model export needs the onnx package: {_EXTRA_HINT}") from None
    return torch, open_clip


def _looks_like_path(s: str) -> bool:
    return os.sep in s or s.startswith(".") or s.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def load_openclip_visual(pretrained: str | None):
    """Build open_clip's ViT-B-32 and return (visual tower in eval mode, weights source, quick_gelu)."""
    torch, open_clip = _import_torch()
    quick_gelu = False
    if pretrained is None:
        warnings.warn(
            "no --pretrained weights given: exporting ViT-B/32 with RANDOM weights. Throughput and latency "
            "are those of the real model, but the embeddings mean nothing. Pass --pretrained CHECKPOINT for real ones.",
            stacklevel=2,
        )
        log.warning("exporting with RANDOM weights (no --pretrained given)")
        # Seeded, so the same random weights can be rebuilt (engine-bench's parity check on GPU).
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        with _quiet_openclip():
            model = open_clip.create_model(ARCH, pretrained=None)
        source = "random"
    elif _looks_like_path(pretrained) or Path(pretrained).exists():
        path = Path(pretrained)
        if not path.is_file():
            raise ExportError(f"checkpoint not found: {pretrained}: pass an existing open_clip checkpoint file")
        quick_gelu = _checkpoint_wants_quick_gelu(path)
        try:
            model = open_clip.create_model(ARCH, pretrained=str(path), force_quick_gelu=quick_gelu)
        except Exception as e:  # open_clip raises many kinds for a bad file
            raise ExportError(f"could not load checkpoint {pretrained} into {ARCH}: {e}") from None
        source = f"file:{path.resolve()}"
    else:
        cfg = open_clip.get_pretrained_cfg(ARCH, pretrained)
        if not cfg:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(ARCH))
            raise ExportError(f"unknown pretrained tag {pretrained!r} for {ARCH}: use one of {tags}, or a checkpoint file")
        quick_gelu = bool(cfg.get("quick_gelu", False))
        try:
            model = open_clip.create_model(ARCH, pretrained=pretrained, force_quick_gelu=quick_gelu)
        except Exception as e:
            raise ExportError(
                f"could not fetch pretrained weights {pretrained!r} ({type(e).__name__}: {e}); where no model hub is "
                "reachable, download the checkpoint elsewhere and pass its path to --pretrained"
            ) from None
        source = f"open_clip:{ARCH}/{pretrained}"
    return model.visual.eval(), source, quick_gelu


def _checkpoint_wants_quick_gelu(path: Path) -> bool:
    """OpenAI-format (TorchScript) checkpoints use QuickGELU; a sidecar or name can say so too."""
    return "quickgelu" in path.name.lower() or "openai" in path.name.lower()


class _quiet_openclip:
    def __enter__(self):
        self._level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)

    def __exit__(self, *exc):
        logging.getLogger().setLevel(self._level)


def build_export_module(visual):
    """Copy open_clip's visual tower into a graph-friendly module (see the module docstring)."""
    torch, _ = _import_torch()
    import torch.nn.functional as F
    from torch import nn

    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "final_ln_after_pool", False):
        raise ExportError("this open_clip visual tower uses attention pooling or post-pool LayerNorm: not supported")
    if getattr(visual, "pool_type", "tok") != "tok":
        raise ExportError(f"pool_type {visual.pool_type!r} is not supported (ViT-B-32 uses 'tok')")
    mean = torch.tensor(getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
    std = torch.tensor(getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))
    conv = visual.conv1.weight.detach().float()  # [768, 3, 32, 32]
    width, _, patch, _ = conv.shape
    grid = IMAGE_SIZE // patch
    # Fold x_norm = x * a + b (a = 1/(255 std), b = -mean/std) into the patch projection.
    a, b = 1.0 / (255.0 * std), -mean / std
    w_hwc = conv.permute(2, 3, 1, 0).reshape(patch * patch * 3, width)  # rows ordered (kh, kw, c)
    a_rows = a.repeat(patch * patch)
    b_rows = b.repeat(patch * patch)
    patch_w = w_hwc * a_rows[:, None]
    patch_b = (w_hwc * b_rows[:, None]).sum(0)
    if visual.conv1.bias is not None:
        patch_b = patch_b + visual.conv1.bias.detach().float()
    pos = visual.positional_embedding.detach().float().clone()
    pos[0] = pos[0] + visual.class_embedding.detach().float()
    blocks = visual.transformer.resblocks
    heads = blocks[0].attn.num_heads
    quick = not isinstance(blocks[0].mlp.gelu, nn.GELU)

    class Block(nn.Module):
        def __init__(self, blk):
            super().__init__()
            e = width
            self.ln_1, self.ln_2 = blk.ln_1, blk.ln_2
            w, bias = blk.attn.in_proj_weight.detach(), blk.attn.in_proj_bias.detach()
            self.q, self.k, self.v = nn.Linear(e, e), nn.Linear(e, e), nn.Linear(e, e)
            for i, lin in enumerate((self.q, self.k, self.v)):
                lin.weight.data.copy_(w[i * e : (i + 1) * e])
                lin.bias.data.copy_(bias[i * e : (i + 1) * e])
            self.out = blk.attn.out_proj
            self.fc, self.proj = blk.mlp.c_fc, blk.mlp.c_proj
            self.scale = (e // heads) ** -0.5

        def attention(self, x):
            tokens, e = x.shape[1], x.shape[2]
            d = e // heads
            # Shapes chosen for onnxruntime's attention fusion: k is transposed once to [N, H, D, L],
            # and the scale multiplies q·k (the fused kernel's default scale is the same 1/sqrt(D)).
            q = self.q(x).reshape(-1, tokens, heads, d).transpose(1, 2)
            k = self.k(x).reshape(-1, tokens, heads, d).permute(0, 2, 3, 1)
            v = self.v(x).reshape(-1, tokens, heads, d).transpose(1, 2)
            w = torch.softmax(torch.matmul(q, k) * self.scale, dim=-1)
            o = torch.matmul(w, v).transpose(1, 2).reshape(-1, tokens, e)
            return self.out(o)

        def forward(self, x):
            x = x + self.attention(self.ln_1(x))
            h = self.fc(self.ln_2(x))
            h = h * torch.sigmoid(1.702 * h) if quick else F.gelu(h)
            return x + self.proj(h)

    class ImageEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("patch_w", patch_w.contiguous())
            self.register_buffer("patch_b", patch_b.contiguous())
            self.register_buffer("pos", pos.contiguous())
            self.ln_pre, self.ln_post = visual.ln_pre, visual.ln_post
            self.blocks = nn.ModuleList(Block(b) for b in blocks)
            self.register_buffer("proj", visual.proj.detach().float().contiguous())

        def forward(self, image):  # uint8 [N, 224, 224, 3]
            x = image.reshape(-1, grid, patch, grid, patch, 3).permute(0, 1, 3, 2, 4, 5)
            x = x.reshape(-1, grid * grid, patch * patch * 3).to(self.patch_w.dtype)
            x = torch.matmul(x, self.patch_w) + self.patch_b
            x = torch.cat([x[:, :1] * 0, x], dim=1) + self.pos
            x = self.ln_pre(x)
            for blk in self.blocks:
                x = blk(x)
            return torch.matmul(self.ln_post(x[:, 0]), self.proj)

    return ImageEncoder().eval(), quick


def reference_embeddings(visual, images: np.ndarray) -> np.ndarray:
    """open_clip's own forward pass (fp32, with its own normalisation) on uint8 NHWC images."""
    torch, _ = _import_torch()
    mean = torch.tensor(visual.image_mean or (0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor(visual.image_std or (0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return visual((x - mean) / std).float().numpy()


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


# ---- ONNX side -----------------------------------------------------------------------------------


def _torch_export(module, path: Path, opset: int) -> None:
    torch, _ = _import_torch()
    dummy = torch.zeros(2, IMAGE_SIZE, IMAGE_SIZE, 3, dtype=torch.uint8)
    kwargs = dict(
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        do_constant_folding=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            try:
                torch.onnx.export(module, (dummy,), str(path), dynamo=False, **kwargs)
            except TypeError:  # torch without the dynamo switch
                torch.onnx.export(module, (dummy,), str(path), **kwargs)


def _optimize(src: Path, dst: Path, precision: str, fusion: dict[str, Any] | None = None) -> dict[str, int]:
    """Fuse attention/LayerNorm/GELU with onnxruntime's transformer optimizer; fp16 keeps FP32 output.

    ``fusion``: FusionOptions attributes to change from the optimizer's defaults for CLIP (the engine
    study tries ``use_multi_head_attention``).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("clip")
    for name, value in (fusion or {}).items():
        if not hasattr(options, name):
            raise ExportError(f"onnxruntime's FusionOptions has no {name!r}")
        setattr(options, name, value)
    with _quiet_ort():
        opt = optimize_model(
            str(src), model_type="clip", num_heads=12, hidden_size=768, opt_level=0, optimization_options=options
        )
        if precision == "fp16":
            opt.convert_float_to_float16(keep_io_types=True)
        stats = {k: int(v) for k, v in (opt.get_fused_operator_statistics() or {}).items() if v}
        opt.save_model_to_file(str(dst))
    return stats


class _quiet_ort:
    def __enter__(self):
        self._loggers = [logging.getLogger(n) for n in ("onnxruntime", "fusion", "onnx_model", "")]
        self._levels = [lg.level for lg in self._loggers]
        for lg in self._loggers:
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for lg, lvl in zip(self._loggers, self._levels, strict=True):
            lg.setLevel(lvl)


def _onnx_run(path: Path, images: np.ndarray) -> tuple[np.ndarray, str]:
    from rayscale.engine import Engine

    engine = Engine(path, provider="auto", warmup=False)
    return engine.encode(images), engine.provider


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    from rayscale.environment import package_versions

    return package_versions(("torch", "open_clip_torch", "onnx", "onnxruntime-gpu", "onnxruntime", "numpy"))


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir):
            pass
    except OSError as e:
        raise ExportError(f"cannot write to {out_dir} ({e.strerror}): choose another --out") from None


def export_model(config: ExportConfig) -> ModelInfo:
    """Export, optimise, check parity and write model.onnx + model.json atomically into out_dir."""
    t0 = time.perf_counter()
    out_dir = Path(config.out_dir)
    _check_writable(out_dir)
    torch, _ = _import_torch()
    visual, source, _ = load_openclip_visual(config.pretrained)
    module, quick = build_export_module(visual)
    images = parity_batch(config.parity_batch_size)
    reference = reference_embeddings(visual, images)
    with torch.no_grad():
        ported = module(torch.from_numpy(images)).numpy()
    port_cos = float(cosine_rows(reference, ported).min())
    if port_cos < 0.9999:
        raise ExportError(f"internal error: graph-friendly tower disagrees with open_clip (cosine {port_cos:.6f})")

    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        raw = Path(tmp) / "raw.onnx"
        final = Path(tmp) / "model.onnx"
        _torch_export(module, raw, config.opset)
        fused = _optimize(raw, final, config.precision) if config.optimize else {}
        if not config.optimize:
            if config.precision == "fp16":
                import onnx
                from onnxruntime.transformers.onnx_model import OnnxModel

                m = OnnxModel(onnx.load(str(raw)))
                m.convert_float_to_float16(keep_io_types=True)
                m.save_model_to_file(str(final))
            else:
                raw.replace(final)
        got, provider = _onnx_run(final, images)
        cos = cosine_rows(reference, got)
        min_cosine, threshold = float(cos.min()), PARITY_MIN_COSINE[config.precision]
        parity = {
            "images": int(len(images)),
            "min_cosine": min_cosine,
            "mean_cosine": float(cos.mean()),
            "max_abs_diff": float(np.abs(reference - got).max()),
            "threshold": threshold,
            "provider": provider,
            "reference": "open_clip fp32 (torch, CPU)",
        }
        if min_cosine < threshold:
            raise ExportError(
                f"parity check failed: min cosine {min_cosine:.5f} < {threshold} "
                f"({config.precision} on {provider}); try --precision fp32 or another --opset"
            )
        final.replace(out_dir / "model.onnx")

    onnx_path = out_dir / "model.onnx"
    info = ModelInfo(
        name=MODEL_NAME,
        architecture=f"open_clip {ARCH} visual tower",
        file="model.onnx",
        sha256=_sha256(onnx_path),
        size_bytes=onnx_path.stat().st_size,
        precision=config.precision,
        opset=config.opset,
        weights=source,
        activation="quick_gelu" if quick else "gelu",
        inputs=[{"name": INPUT_NAME, "datatype": "UINT8", "shape": [-1, IMAGE_SIZE, IMAGE_SIZE, 3], "layout": "NHWC"}],
        outputs=[{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, EMBED_DIM]}],
        preprocessing={
            "client": "resize shortest side to 224 (bicubic), center-crop 224x224, RGB uint8 HWC",
            "in_graph": "cast to float, CLIP mean/std normalisation (folded into the patch projection)",
            "mean": list(getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)),
            "std": list(getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)),
        },
        parity=parity,
        fused_operators=fused,
        versions=_versions(),
        exported_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        export_seconds=round(time.perf_counter() - t0, 2),
        extra={"random_seed": RANDOM_WEIGHTS_SEED} if source == "random" else {},
    )
    write_text_atomic(out_dir / "model.json", json.dumps(info.to_dict(), indent=2) + "\n")
    return info

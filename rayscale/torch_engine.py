"""A second engine: the same ViT-B/32 tower in torch, with SDPA attention (``backend=torch``).

It runs open_clip's own weights, rebuilt from what model.json records (a checkpoint, a pretrained
tag, or the seeded random weights of an export without ``--pretrained``), through the same
graph-friendly form the ONNX export uses: uint8 NHWC pixels in, CLIP's normalisation folded into the
patch projection, the final LayerNorm on the class token only. Two differences, both for speed: the
q, k and v projections are one matrix product, and attention is ``scaled_dot_product_attention``
(torch picks a fused kernel). ``torch_compile`` compiles it with inductor.

It has the interface a replica and ``engine-bench`` use (``encode``, ``encode_parts``,
``release_buffers``, ``provider``), pads batches to the same buckets as ``Engine`` so a compiled
model meets few shapes, and on CUDA gathers each batch into page-locked memory and copies it on the
calling thread's own stream, so several batches can be in flight. torch and open_clip come with the
export extra (``pip install 'rayscale[export]'``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rayscale.config import IMAGE_SHAPE, check_max_batch_size
from rayscale.engine_options import EngineOptions
from rayscale.errors import ConfigError, ExportError, InputError
from rayscale.export import ModelInfo, load_model_info

__all__ = ["TorchEngine", "build_torch_encoder", "load_visual_for", "pretrained_for"]

log = logging.getLogger(__name__)

_EXTRA_HINT = "install the export extra: pip install 'rayscale[export]' (torch, open_clip_torch)"


def pretrained_for(info: ModelInfo) -> str | None:
    """What ``load_openclip_visual`` needs to rebuild the weights model.json names (None: seeded random)."""
    if info.weights == "random":
        return None
    if info.weights.startswith("file:"):
        return info.weights.split("file:", 1)[1]
    return info.weights.split("/", 1)[-1]  # open_clip:ViT-B-32/<tag>


def load_visual_for(info: ModelInfo):
    """open_clip's visual tower with the weights the exported model was made from."""
    import warnings

    from rayscale.export import load_openclip_visual

    export_log = logging.getLogger("rayscale.export")
    level = export_log.level
    export_log.setLevel(logging.ERROR)  # its warning speaks of exporting; here the weights are only rebuilt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            visual, _, _ = load_openclip_visual(pretrained_for(info))
        except ExportError as e:
            raise ConfigError(f"backend=torch needs torch and open_clip: {e}") from None
        finally:
            export_log.setLevel(level)
    return visual


def build_torch_encoder(visual):
    """The tower as a torch module taking uint8 [N, 224, 224, 3] and returning float32 [N, 512]."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from rayscale.export import build_export_module

    graph, quick = build_export_module(visual)
    width = graph.patch_w.shape[1]
    patch_dim = graph.patch_w.shape[0]
    patch = int(round((patch_dim // 3) ** 0.5))
    grid = IMAGE_SHAPE[0] // patch
    heads = width // round(graph.blocks[0].scale ** -2)  # the block's scale is head_dim ** -0.5

    class Block(nn.Module):
        def __init__(self, blk):
            super().__init__()
            self.ln_1, self.ln_2, self.out, self.fc, self.proj = blk.ln_1, blk.ln_2, blk.out, blk.fc, blk.proj
            self.qkv = nn.Linear(width, 3 * width)
            with torch.no_grad():
                self.qkv.weight.copy_(torch.cat([blk.q.weight, blk.k.weight, blk.v.weight]))
                self.qkv.bias.copy_(torch.cat([blk.q.bias, blk.k.bias, blk.v.bias]))

        def forward(self, x):
            n, t, e = x.shape
            q, k, v = self.qkv(self.ln_1(x)).view(n, t, 3, heads, e // heads).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(q, k, v)
            x = x + self.out(o.transpose(1, 2).reshape(n, t, e))
            h = self.fc(self.ln_2(x))
            h = h * torch.sigmoid(1.702 * h) if quick else F.gelu(h)
            return x + self.proj(h)

    class TorchEncoder(nn.Module):
        patch_w: torch.Tensor  # buffers (register_buffer), declared for the type checker
        patch_b: torch.Tensor
        pos: torch.Tensor
        proj: torch.Tensor

        def __init__(self):
            super().__init__()
            self.register_buffer("patch_w", graph.patch_w.clone())
            self.register_buffer("patch_b", graph.patch_b.clone())
            self.register_buffer("pos", graph.pos.clone())
            self.register_buffer("proj", graph.proj.clone())
            self.ln_pre, self.ln_post = graph.ln_pre, graph.ln_post
            self.blocks = nn.ModuleList(Block(b) for b in graph.blocks)

        def forward(self, image):  # uint8 [N, 224, 224, 3]
            n = image.shape[0]
            # One kernel gathers the patches and converts them (a permute then a cast would be two).
            patches = torch.empty((n, grid, grid, patch, patch, 3), dtype=self.patch_w.dtype, device=image.device)
            patches.copy_(image.view(n, grid, patch, grid, patch, 3).permute(0, 1, 3, 2, 4, 5))
            x = torch.matmul(patches.view(n, grid * grid, patch_dim), self.patch_w) + self.patch_b
            x = torch.cat([x.new_zeros(n, 1, width), x], dim=1) + self.pos
            x = self.ln_pre(x)
            for blk in self.blocks:
                x = blk(x)
            return torch.matmul(self.ln_post(x[:, 0]), self.proj).float()

    return TorchEncoder().eval()


@dataclass
class _Slot:
    """One thread's buffers for one bucket: page-locked staging and the device input."""

    host: Any  # torch uint8 tensor, pinned on CUDA
    host_np: np.ndarray  # a numpy view of it
    device: Any


class TorchEngine:
    """Encode uint8 [N, 224, 224, 3] images into FP32 [N, 512] embeddings with torch."""

    backend = "torch"

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        options: EngineOptions | None = None,
        provider: str = "auto",
        device_id: int = 0,
        max_batch_size: int = 256,
        warmup: bool = True,
    ):
        try:
            import torch
        except ImportError:
            raise ConfigError(f"backend=torch needs torch: {_EXTRA_HINT}") from None
        from rayscale.engine import batch_buckets

        if provider not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"provider must be auto, cuda or cpu, got {provider!r}")
        check_max_batch_size(max_batch_size)
        self.options = options or EngineOptions(backend="torch")
        model_dir = Path(model).parent if Path(model).suffix == ".onnx" else Path(model)
        self.info = load_model_info(model_dir)
        on_cuda = provider in ("auto", "cuda") and torch.cuda.is_available()
        if provider == "cuda" and not on_cuda:
            raise ConfigError(
                "provider 'cuda' was asked for but torch sees no CUDA device: check the driver and torch's CUDA build"
            )
        self.provider = "cuda" if on_cuda else "cpu"
        self.device_id = device_id
        self.device = torch.device("cuda", device_id) if on_cuda else torch.device("cpu")
        # fp16 as the exported file when on a GPU; fp32 on the CPU, where half precision is slow.
        self.dtype = torch.float16 if on_cuda and self.info.precision == "fp16" else torch.float32
        self.max_batch_size = max_batch_size
        self.buckets = batch_buckets(max_batch_size)
        module = build_torch_encoder(load_visual_for(self.info)).to(self.device, self.dtype)
        self.module = module
        self._forward = module
        if self.options.torch_compile != "off":
            mode = None if self.options.torch_compile == "default" else self.options.torch_compile
            self._forward = torch.compile(module, mode=mode)
        self._torch = torch
        self._local = threading.local()
        if warmup:
            self.warmup()

    # ---- public --------------------------------------------------------------------------------

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Embeddings for a uint8 [N, 224, 224, 3] batch, N in 1..max_batch_size."""
        self._check(images)
        return self.encode_parts([images])[0][0]

    def encode_parts(self, parts: list[np.ndarray]) -> tuple[list[np.ndarray], int, int]:
        """Run several requests' images as one batch; returns (per-part outputs, gather ns, run ns)."""
        t0 = time.perf_counter_ns()
        sizes = [int(p.shape[0]) for p in parts]
        n = sum(sizes)
        if not 1 <= n <= self.max_batch_size:
            raise InputError(f"batch size must be in 1..{self.max_batch_size}, got {n}")
        bucket = self.bucket_for(n)
        slot = self._slot(bucket)
        offset = 0
        for p in parts:
            slot.host_np[offset : offset + p.shape[0]] = p
            offset += p.shape[0]
        t1 = time.perf_counter_ns()
        torch = self._torch
        with torch.inference_mode():
            if self.provider == "cuda":
                stream = self._stream()
                with torch.cuda.stream(stream):
                    slot.device.copy_(slot.host, non_blocking=True)
                    out = self._forward(slot.device)[:n].cpu()
            else:
                out = self._forward(slot.device)[:n]
        result = out.numpy()
        t2 = time.perf_counter_ns()
        outputs = np.split(result, np.cumsum(sizes)[:-1]) if len(parts) > 1 else [result]
        return outputs, t1 - t0, t2 - t1

    def warmup(self) -> float:
        """Run every bucket once (on a GPU; two sizes on the CPU); returns seconds."""
        from rayscale.engine import random_images

        t0 = time.perf_counter()
        sizes = self.buckets if self.provider == "cuda" else [1, min(8, self.max_batch_size)]
        for s in sizes:
            self.encode(random_images(s, seed=s))
        return time.perf_counter() - t0

    def release_buffers(self) -> None:
        """Free the calling thread's staging and device buffers (its next batch allocates afresh)."""
        if hasattr(self._local, "slots"):
            del self._local.slots

    def bucket_for(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        return self.max_batch_size

    # ---- internals -----------------------------------------------------------------------------

    def _check(self, images: np.ndarray) -> None:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise InputError(f"images must be a uint8 numpy array, got {getattr(images, 'dtype', type(images))}")
        if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
            raise InputError(f"images must have shape [N, 224, 224, 3], got {list(images.shape)}")

    def _stream(self):
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = self._torch.cuda.Stream(device=self.device)
        return stream

    def _slot(self, bucket: int) -> _Slot:
        slots = getattr(self._local, "slots", None)
        if slots is None:
            slots = self._local.slots = {}
        slot = slots.get(bucket)
        if slot is None:
            torch = self._torch
            shape = (bucket, *IMAGE_SHAPE)
            host = torch.zeros(shape, dtype=torch.uint8, pin_memory=self.provider == "cuda")
            device = torch.zeros(shape, dtype=torch.uint8, device=self.device) if self.provider == "cuda" else host
            slot = slots[bucket] = _Slot(host, host.numpy(), device)
        return slot

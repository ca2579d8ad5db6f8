"""The inference engine: one onnxruntime session on one device, encoding uint8 image batches.

On CUDA the engine uses IO binding. How a batch's images reach the device buffer of its size bucket
is the ``copy`` mode (see ``rayscale.cudart``; both fast modes release the GIL while copying):

* ``pinned`` (default): gather the requests' images into a page-locked host buffer, one DMA copy;
* ``direct`` (opt-in): copy each request's array straight into its place in the device buffer
  (no host gather; the driver stages pageable memory itself). On an H100 it beat ``pinned`` by
  1.01-1.19x in ``engine-bench`` but made no difference to a replica serving 32-image requests;
* ``pageable``: gather into ordinary memory and let onnxruntime copy (the fallback when the CUDA
  runtime library cannot be loaded). ``RAYSCALE_ENGINE_COPY`` overrides the default.

The output is written to a device buffer and copied back once. Buffers are allocated once per
bucket and reused. Batches are padded up to the next bucket so
the set of shapes the session sees stays small (no re-planning per batch size). ``encode`` is
thread-safe: each calling thread has its own binding and buffers, so a replica can keep several
batches in flight (some copying while another computes).
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

from rayscale.config import EMBED_DIM, IMAGE_BYTES, IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAME, check_max_batch_size
from rayscale.cudart import CudaRuntime, page_locked_zeros
from rayscale.engine_options import EngineOptions
from rayscale.errors import ConfigError, InputError, ModelNotFoundError, ServerError

__all__ = ["COPY_MODES", "Engine", "NullEngine", "batch_buckets", "random_images"]

COPY_MODES = ("pinned", "direct", "pageable")
DEFAULT_COPY = "pinned"

log = logging.getLogger(__name__)


def batch_buckets(max_batch_size: int) -> list[int]:
    """Sizes batches are padded to: 1, 2, 4, 8, 16, then multiples of 16 up to max_batch_size."""
    sizes = [s for s in (1, 2, 4, 8, 16) if s < max_batch_size]
    sizes += list(range(32, max_batch_size, 16))
    sizes.append(max_batch_size)
    return sorted(set(sizes))


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *IMAGE_SHAPE), dtype=np.uint8)


def _has_cuda_driver() -> bool:
    """True when the NVIDIA driver library loads; avoids onnxruntime's noisy failure on CPU-only hosts."""
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def _resolve_model_path(model: str | os.PathLike) -> Path:
    p = Path(model)
    if p.is_dir():
        p = p / "model.onnx"
    if not p.is_file():
        raise ModelNotFoundError(f"model not found at {model}: run `rayscale export --out {Path(model)}` first")
    return p


def _describe(args) -> str:
    return ", ".join(f"{a.name} {a.type} {list(a.shape)}" for a in args)


def _check_signature(session, path: Path) -> None:
    """The file must be this model's contract: IMAGE uint8 [N, 224, 224, 3] -> EMBEDDING float [N, 512]."""
    ins, outs = session.get_inputs(), session.get_outputs()
    ok = (
        len(ins) == 1
        and (ins[0].name, ins[0].type, list(ins[0].shape[1:])) == (INPUT_NAME, "tensor(uint8)", list(IMAGE_SHAPE))
        and any((o.name, o.type, list(o.shape[1:])) == (OUTPUT_NAME, "tensor(float)", [EMBED_DIM]) for o in outs)
    )
    if not ok:
        raise ModelNotFoundError(
            f"{path} takes {_describe(ins)} and returns {_describe(outs)}; expected {INPUT_NAME} tensor(uint8) "
            f"[N, 224, 224, 3] -> {OUTPUT_NAME} tensor(float) [N, {EMBED_DIM}]: export the model with `rayscale export`"
        )


@dataclass
class _Buffers:
    binding: Any  # onnxruntime's IOBinding (onnxruntime ships no type hints)
    inputs: dict  # bucket -> (host staging array, device OrtValue, host array is page-locked)
    outputs: dict  # bucket -> device OrtValue
    stream: int = 0  # this thread's CUDA stream for host->device copies (0: not created yet)
    graph_slot: int = -1  # cuda_graph: this thread's block of graph ids, one per bucket (-1: none yet)


class Engine:
    """Encode uint8 [N, 224, 224, 3] images into FP32 [N, 512] embeddings with onnxruntime."""

    backend = "onnxruntime"

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        provider: str = "auto",
        device_id: int = 0,
        max_batch_size: int = 256,
        intra_op_threads: int = 0,
        copy: str = "auto",
        warmup: bool = True,
        options: EngineOptions | None = None,
    ):
        import onnxruntime as ort

        if provider not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"provider must be auto, cuda or cpu, got {provider!r}")
        self.options = options or EngineOptions()
        if self.options.backend != "onnxruntime":
            raise ConfigError(f"Engine runs onnxruntime, not {self.options.backend}: use rayscale.engine_options.create_engine")
        check_max_batch_size(max_batch_size)
        self.model_path = _resolve_model_path(model)
        self.max_batch_size = max_batch_size
        self.device_id = device_id
        self.buckets = batch_buckets(max_batch_size)
        available = ort.get_available_providers()
        want_cuda = provider in ("auto", "cuda") and "CUDAExecutionProvider" in available and _has_cuda_driver()
        opts = ort.SessionOptions()
        self.options.apply_to_session(opts, ort)
        opts.log_severity_level = 3
        if want_cuda:
            opts.intra_op_num_threads = intra_op_threads or 1
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            cuda_opts = self.options.cuda_provider_options(device_id)
            providers = [("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]
        else:
            if intra_op_threads:
                opts.intra_op_num_threads = intra_op_threads
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.model_path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime has one exception type per status code; a bad file is any of several
            if "Load model from" not in str(e):
                raise
            reason = str(e).split("failed:", 1)[-1].strip()
            reason = f": {reason}" if len(reason) < 160 and "\n" not in reason else ""
            raise ModelNotFoundError(
                f"cannot load {self.model_path} (onnxruntime cannot read it{reason}): export it again with `rayscale export`"
            ) from None
        _check_signature(self.session, self.model_path)
        got = self.session.get_providers()[0]
        self.provider = "cuda" if got == "CUDAExecutionProvider" else "cpu"
        if provider == "cuda" and self.provider != "cuda":
            raise ConfigError(
                "provider 'cuda' was asked for but onnxruntime could not load CUDAExecutionProvider: check the "
                "NVIDIA driver, CUDA/cuDNN libraries and that onnxruntime-gpu (not onnxruntime) is installed"
            )
        if self.provider == "cpu":
            log.warning("onnxruntime runs on the CPU (no CUDA provider available): expect CPU-level throughput")
        self._local = threading.local()
        self._ort = ort
        self._graphs = _CudaGraphs(ort, len(self.buckets)) if self.options.cuda_graph and self.provider == "cuda" else None
        self._cudart: CudaRuntime | None = None
        self.copy = "pageable"
        if self.provider == "cuda":
            self.set_copy(copy)
        if warmup:
            self.warmup()

    # ---- public --------------------------------------------------------------------------------

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Embeddings for a uint8 [N, 224, 224, 3] batch, N in 1..max_batch_size."""
        n = self._check(images)
        if self.provider == "cpu":
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
        return self._encode_cuda(images, n)

    def warmup(self) -> float:
        """Run every bucket once so no real batch pays the session's planning for its shape; returns seconds.

        Buffers belong to the calling thread, so other threads still allocate theirs on first use.
        """
        t0 = time.perf_counter()
        sizes = self.buckets if self.provider == "cuda" else [1, min(8, self.max_batch_size)]
        for s in sizes:
            self.encode(random_images(s, seed=s))
        return time.perf_counter() - t0

    def release_buffers(self) -> None:
        """Free the calling thread's buffers (one per bucket it used: ~330 MB of GPU and as much
        page-locked host memory at max batch 256). A replica calls it after warming up on a thread
        that never runs a batch again; this thread's next ``encode`` allocates afresh."""
        if hasattr(self._local, "buffers"):
            del self._local.buffers

    def set_copy(self, mode: str = "auto") -> str:
        """Choose how host input reaches the GPU (module docstring); returns the mode in use.

        Buffers are re-created on next use. The other modes exist to measure what each one buys.
        """
        if mode == "auto":
            mode = os.environ.get("RAYSCALE_ENGINE_COPY", DEFAULT_COPY)
        if mode not in COPY_MODES:
            raise ConfigError(f"copy mode must be one of {', '.join(COPY_MODES)} (or auto), got {mode!r}")
        if mode != "pageable" and self.provider == "cuda" and self._cudart is None:
            self._cudart = CudaRuntime.load()
            if self._cudart is None:
                log.warning("no CUDA runtime library found: host->GPU copies stay pageable, through onnxruntime")
        self.copy = mode if self._cudart is not None else "pageable"
        self._local = threading.local()
        return self.copy

    def bucket_for(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        return self.max_batch_size

    # ---- internals -----------------------------------------------------------------------------

    def _check(self, images: np.ndarray) -> int:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise InputError(f"images must be a uint8 numpy array, got {getattr(images, 'dtype', type(images))}")
        if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
            raise InputError(f"images must have shape [N, 224, 224, 3], got {list(images.shape)}")
        n = images.shape[0]
        if not 1 <= n <= self.max_batch_size:
            raise InputError(f"batch size must be in 1..{self.max_batch_size}, got {n}")
        return n

    def _buffers(self) -> _Buffers:
        buf = getattr(self._local, "buffers", None)
        if buf is None:
            buf = _Buffers(binding=self.session.io_binding(), inputs={}, outputs={})
            self._local.buffers = buf
        return buf

    def _bucket_buffers(self, bucket: int):
        buf = self._buffers()
        entry = buf.inputs.get(bucket)
        if entry is None:
            ort = self._ort
            if self.copy == "direct":  # nothing is gathered on the host
                host, locked = np.empty((0, *IMAGE_SHAPE), dtype=np.uint8), False
            else:
                runtime = self._cudart if self.copy == "pinned" else None
                host, locked = page_locked_zeros((bucket, *IMAGE_SHAPE), np.uint8, runtime)
            dev = ort.OrtValue.ortvalue_from_shape_and_type((bucket, *IMAGE_SHAPE), np.uint8, "cuda", self.device_id)
            out = ort.OrtValue.ortvalue_from_shape_and_type((bucket, EMBED_DIM), np.float32, "cuda", self.device_id)
            entry = buf.inputs[bucket] = (host, dev, locked)
            buf.outputs[bucket] = out
        return buf, entry, buf.outputs[bucket]

    @property
    def _cuda(self) -> CudaRuntime:
        """The CUDA runtime, which the direct and pinned copy modes are chosen only with."""
        if self._cudart is None:
            raise ServerError(f"copy mode {self.copy!r} needs the CUDA runtime library, which was not loaded")
        return self._cudart

    def _stream(self, buf: _Buffers) -> int:
        if not buf.stream:
            self._cuda.set_device(self.device_id)
            buf.stream = self._cuda.stream()
        return buf.stream

    def _upload(self, buf: _Buffers, entry, parts: list[np.ndarray], n: int) -> int:
        """Put ``parts`` (``n`` images in all) into the bucket's device buffer, in this engine's copy mode.

        Returns when the host-side gather ended (``perf_counter_ns``); in ``direct`` mode nothing is
        gathered and the copy counts as part of the run.
        """
        host, dev, locked = entry
        if self.copy == "direct":  # each part straight into its rows of the device buffer, then one wait
            gathered = time.perf_counter_ns()
            stream, base, offset = self._stream(buf), dev.data_ptr(), 0
            parts = [np.ascontiguousarray(p) for p in parts]  # kept alive until the copies are done
            for p in parts:
                self._cuda.copy_async(base + offset, p, p.nbytes, stream)
                offset += p.nbytes
            self._cuda.synchronize(stream)
            return gathered
        offset = 0
        for p in parts:
            host[offset : offset + p.shape[0]] = p
            offset += p.shape[0]
        gathered = time.perf_counter_ns()
        if locked:
            self._cuda.copy_to_device(dev.data_ptr(), host, n * IMAGE_BYTES, self._stream(buf))
        else:
            dev.update_inplace(host)
        return gathered

    def _run_cuda(self, buf: _Buffers, dev, out, n: int) -> np.ndarray:
        binding = buf.binding
        binding.bind_ortvalue_input(INPUT_NAME, dev)
        binding.bind_ortvalue_output(OUTPUT_NAME, out)
        if self._graphs is None:
            self.session.run_with_iobinding(binding)
        else:
            self._graphs.run(self.session, binding, buf, self.buckets.index(self.bucket_for(n)))
        return out.numpy()[:n]

    def _encode_cuda(self, images: np.ndarray, n: int) -> np.ndarray:
        bucket = self.bucket_for(n)
        buf, entry, out = self._bucket_buffers(bucket)
        dev = entry[1]
        if self.copy != "direct" and n == bucket and images.flags.c_contiguous:
            # A whole bucket needs no gathering: one copy straight from the caller's array beats
            # a copy into page-locked staging plus DMA (measured on an H100, batch 256).
            dev.update_inplace(images)
        else:
            self._upload(buf, entry, [images], n)
        return self._run_cuda(buf, dev, out, n)

    def encode_parts(self, parts: list[np.ndarray]) -> tuple[list[np.ndarray], int, int]:
        """Run several requests' images as one batch; returns (per-part outputs, gather ns, run ns).

        Each part is copied once, straight into the batch buffer (no concatenate-then-pad);
        outputs are views into one result array.
        """
        t0 = time.perf_counter_ns()
        sizes = [int(p.shape[0]) for p in parts]
        n = sum(sizes)
        if not 1 <= n <= self.max_batch_size:
            raise InputError(f"batch size must be in 1..{self.max_batch_size}, got {n}")
        if self.provider == "cpu":
            batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
            t1 = time.perf_counter_ns()
            result = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        else:
            bucket = self.bucket_for(n)
            buf, entry, out = self._bucket_buffers(bucket)
            t1 = self._upload(buf, entry, parts, n)
            result = self._run_cuda(buf, entry[1], out, n)
        t2 = time.perf_counter_ns()
        outputs = np.split(result, np.cumsum(sizes)[:-1]) if len(parts) > 1 else [result]
        return outputs, t1 - t0, t2 - t1


class _CudaGraphs:
    """onnxruntime's CUDA graphs (``cuda_graph``): one graph per thread and bucket, replayed per batch.

    A graph replays the device addresses it was captured with, so each thread's bucket buffers (which
    never move) get their own graph id. onnxruntime captures a graph after a few ordinary runs with
    that id. Runs hold one lock: graphs captured one after another may share intermediate buffers, so
    they must not run at once (copies in and out still overlap other threads' runs).
    """

    def __init__(self, ort, buckets: int):
        self._ort = ort
        self._buckets = buckets
        self._lock = threading.Lock()
        self._slots = 0
        self._run_options: dict[int, object] = {}

    def run(self, session, binding, buf: _Buffers, bucket_index: int) -> None:
        with self._lock:
            if buf.graph_slot < 0:
                buf.graph_slot, self._slots = self._slots, self._slots + 1
            graph_id = buf.graph_slot * self._buckets + bucket_index
            options = self._run_options.get(graph_id)
            if options is None:
                options = self._run_options[graph_id] = self._ort.RunOptions()
                options.add_run_config_entry("gpu_graph_id", str(graph_id))
            session.run_with_iobinding(binding, options)


class NullEngine:
    """Returns zero embeddings at once: measures the serving path alone (like Triton's identity model).

    ``rayscale up --provider null`` serves it, so a benchmark shows how many requests and images
    per second the proxy, batcher and protocol can move before any model runs. Never for real use.
    """

    provider = "null"
    backend = "null"
    device_id = 0

    def __init__(self, model: str | os.PathLike | None = None, *, max_batch_size: int = 256, **_ignored: object):
        self.max_batch_size = max_batch_size
        log.warning("null engine: embeddings are zeros; this measures the serving path only")

    def encode(self, images: np.ndarray) -> np.ndarray:
        return np.zeros((images.shape[0], EMBED_DIM), dtype=np.float32)

    def release_buffers(self) -> None:
        pass

    def encode_parts(self, parts: list[np.ndarray]) -> tuple[list[np.ndarray], int, int]:
        return [np.zeros((p.shape[0], EMBED_DIM), dtype=np.float32) for p in parts], 0, 0

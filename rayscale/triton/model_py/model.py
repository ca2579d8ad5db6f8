"""Triton Python-backend model: the OpenCLIP ViT-B/32 image encoder, run by onnxruntime in the stub.

Copied into ``<repo>/openclip_vit_b32/1/model.py`` by ``rayscale.triton.repository``. It needs only
numpy and onnxruntime (rayscale need not be importable by the stub's interpreter) and mirrors
``rayscale.engine.Engine``: on a GPU instance the CUDA provider with one intra-op thread and no
spinning, IO binding into per-bucket device buffers that are allocated once, and batches padded
up to a small set of size buckets; on a CPU instance a plain ``session.run``.

Triton's dynamic batcher hands ``execute`` several requests at once (at most ``max_batch_size``
images in all). Their images are copied straight into one staging buffer, encoded as one batch,
and the embeddings are split back per request.

The engine settings are rayscale's (``EngineOptions``), written into config.pbtxt as parameters:
``cuda_provider_options`` (``key=value;...``, the instance adds its device), ``graph_optimization``
and ``cuda_graph`` (one CUDA graph per bucket; an instance runs one batch at a time, so each bucket's
buffers and graph are its own).
"""

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

INPUT_NAME = "IMAGE"
OUTPUT_NAME = "EMBEDDING"
IMAGE_SHAPE = (224, 224, 3)
EMBED_DIM = 512
GRAPH_OPTIMIZATION = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


def provider_options(text):
    """{'k': 'v', ...} from 'k=v;k=v' (config.pbtxt's cuda_provider_options)."""
    pairs = [item.split("=", 1) for item in text.split(";") if "=" in item]
    return {k.strip(): v.strip() for k, v in pairs}


def batch_buckets(max_batch_size):
    """Sizes batches are padded to: 1, 2, 4, 8, 16, then multiples of 16 up to max_batch_size."""
    sizes = [s for s in (1, 2, 4, 8, 16) if s < max_batch_size]
    sizes += list(range(32, max_batch_size, 16))
    sizes.append(max_batch_size)
    return sorted(set(sizes))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.max_batch_size = int(config["max_batch_size"])
        self.buckets = batch_buckets(self.max_batch_size)
        model_path = os.path.join(args["model_repository"], args["model_version"], params.get("model_file", "model.onnx"))
        on_gpu = args["model_instance_kind"] == "GPU"
        self.device_id = int(args["model_instance_device_id"]) if on_gpu else 0
        intra_op_threads = int(params.get("intra_op_threads", "0") or 0)

        opts = ort.SessionOptions()
        opts.graph_optimization_level = GRAPH_OPTIMIZATION[params.get("graph_optimization") or "all"]
        opts.log_severity_level = 3
        self.cuda_graph = on_gpu and params.get("cuda_graph") == "1"
        if on_gpu:
            if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from nvidia-* wheels, where those are installed
                try:
                    ort.preload_dlls()
                except Exception:
                    pass
            opts.intra_op_num_threads = intra_op_threads or 1
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            cuda_opts = {"cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": "1"}
            cuda_opts.update(provider_options(params.get("cuda_provider_options", "")))
            cuda_opts["device_id"] = str(self.device_id)
            providers = [("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]
        else:
            if intra_op_threads:
                opts.intra_op_num_threads = intra_op_threads
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(model_path, sess_options=opts, providers=providers)
        self.on_gpu = on_gpu
        if on_gpu and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(
                f"GPU instance on device {self.device_id} but onnxruntime could not load CUDAExecutionProvider "
                f"(available: {ort.get_available_providers()}): install onnxruntime-gpu with its CUDA 12 and cuDNN 9 "
                "libraries in the Triton interpreter (`rayscale triton setup --gpu-libs`)"
            )
        self.binding: Any = self.session.io_binding() if on_gpu else None  # an onnxruntime IOBinding (untyped)
        self.buffers = {}  # bucket -> (host staging array, device input, device output)
        self.run_options = {}  # cuda_graph: bucket -> RunOptions naming that bucket's graph
        self._warmup()

    def execute(self, requests):
        try:
            arrays = [pb_utils.get_input_tensor_by_name(r, INPUT_NAME).as_numpy() for r in requests]
            sizes = [a.shape[0] for a in arrays]
            embeddings = self._encode(arrays, sum(sizes))
        except Exception as e:  # every request of the batch gets the error; the instance stays up
            error = pb_utils.TritonError(f"{type(e).__name__}: {e}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for n in sizes:
            tensor = pb_utils.Tensor(OUTPUT_NAME, embeddings[start : start + n])
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += n
        return responses

    def finalize(self):
        self.buffers.clear()
        self.binding = None
        self.session = None

    # ---- encoding ------------------------------------------------------------------------------

    def _encode(self, arrays, total):
        if total > self.max_batch_size:  # the dynamic batcher never forms such a batch
            raise ValueError(f"batch of {total} images exceeds max_batch_size {self.max_batch_size}")
        if not self.on_gpu:
            images = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
        return self._encode_cuda(arrays, total)

    def _bucket_for(self, n):
        for b in self.buckets:
            if b >= n:
                return b
        return self.max_batch_size

    def _encode_cuda(self, arrays, total):
        bucket = self._bucket_for(total)
        entry = self.buffers.get(bucket)
        if entry is None:
            host = np.zeros((bucket, *IMAGE_SHAPE), dtype=np.uint8)
            dev_in = ort.OrtValue.ortvalue_from_shape_and_type(host.shape, np.uint8, "cuda", self.device_id)
            dev_out = ort.OrtValue.ortvalue_from_shape_and_type((bucket, EMBED_DIM), np.float32, "cuda", self.device_id)
            entry = self.buffers[bucket] = (host, dev_in, dev_out)
        host, dev_in, dev_out = entry
        if len(arrays) == 1 and total == bucket and arrays[0].flags.c_contiguous:
            dev_in.update_inplace(arrays[0])  # straight from the request's shared memory
        else:
            pos = 0
            for a in arrays:
                host[pos : pos + a.shape[0]] = a
                pos += a.shape[0]
            dev_in.update_inplace(host)
        self.binding.bind_ortvalue_input(INPUT_NAME, dev_in)
        self.binding.bind_ortvalue_output(OUTPUT_NAME, dev_out)
        self.session.run_with_iobinding(self.binding, self._run_options(bucket))
        return dev_out.numpy()[:total]

    def _run_options(self, bucket):
        if not self.cuda_graph:
            return None
        options = self.run_options.get(bucket)
        if options is None:
            options = self.run_options[bucket] = ort.RunOptions()
            options.add_run_config_entry("gpu_graph_id", str(self.buckets.index(bucket)))
        return options

    def _warmup(self):
        """Every bucket once on a GPU (buffers and kernels ready before the first request), two sizes on CPU."""
        sizes = self.buckets if self.on_gpu else sorted({1, min(8, self.max_batch_size)})
        rng = np.random.default_rng(0)
        for s in sizes:
            images = rng.integers(0, 256, size=(s, *IMAGE_SHAPE), dtype=np.uint8)
            self._encode([images], s)

"""The model as the protocol describes it: v2 metadata, and the configuration in Triton's JSON form."""

from __future__ import annotations

from typing import Any

from rayscale.config import EMBED_DIM, IMAGE_SIZE, INPUT_NAME, MODEL_NAME, OUTPUT_NAME, ServeConfig, queue_delay_us
from rayscale.serve.registry import ReplicaRecord

__all__ = ["DEPLOYMENT_NAME", "MODEL_VERSION", "model_metadata", "triton_model_config"]

DEPLOYMENT_NAME = "OpenClipEncoder"
MODEL_VERSION = "1"


def model_metadata(info) -> dict[str, Any]:
    """``GET /v2/models/<model>``: names, datatypes and shapes, with the export's precision and hash."""
    return {
        "name": MODEL_NAME,
        "versions": [MODEL_VERSION],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": INPUT_NAME, "datatype": "UINT8", "shape": [-1, IMAGE_SIZE, IMAGE_SIZE, 3]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, EMBED_DIM]}],
        "parameters": {"precision": info.precision, "sha256": info.sha256, "weights": info.weights},
    }


def triton_model_config(cfg: ServeConfig, replicas: list[ReplicaRecord]) -> dict[str, Any]:
    """The model configuration in Triton's JSON form (what perf_analyzer reads).

    ``replicas`` are the running replica processes (their records in the app's registry): the
    instance group counts them, as Triton counts model instances.
    """
    kind = "KIND_GPU" if cfg.gpus_per_replica > 0 else "KIND_CPU"
    gpus = sorted({int(g) for r in replicas for g in r.gpu_ids if str(g).isdigit()})
    # Triton's form names GPU indices only, and every node has a GPU 0: the GPUs in all (what a
    # client records as the server's size) and each replica's share go in parameters.
    gpus_in_all = len({(r.node, str(g)) for r in replicas for g in r.gpu_ids})
    return {
        "name": MODEL_NAME,
        "platform": "onnxruntime_onnx",
        "backend": "rayscale",
        "max_batch_size": cfg.max_batch_size,
        "input": [{"name": INPUT_NAME, "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC", "dims": [IMAGE_SIZE, IMAGE_SIZE, 3]}],
        "output": [{"name": OUTPUT_NAME, "data_type": "TYPE_FP32", "dims": [EMBED_DIM]}],
        "dynamic_batching": {
            "max_queue_delay_microseconds": queue_delay_us(cfg.batch_wait_ms),
            "preferred_batch_size": [cfg.max_batch_size],
        },
        "instance_group": [{"name": DEPLOYMENT_NAME, "kind": kind, "count": max(len(replicas), 1), "gpus": gpus}],
        "version_policy": {"latest": {"num_versions": 1}},
        "parameters": {
            "rayscale_gpus": {"string_value": str(gpus_in_all)},
            "gpus_per_replica": {"string_value": f"{cfg.gpus_per_replica:g}"},
            "processes_per_replica": {"string_value": str(max(cfg.processes_per_replica, 1))},
            "ingress": {"string_value": cfg.ingress},
        },
    }

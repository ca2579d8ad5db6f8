"""Open Inference Protocol (KServe v2) tensors over HTTP: parse and encode, server and client side.

Both the JSON tensor form and the binary tensor data extension are supported:

* binary request: header ``Inference-Header-Content-Length: L``; the first L bytes of the body
  are the JSON header, in which each binary input carries ``parameters.binary_data_size``;
  the raw tensor bytes follow, in input order.
* binary response: the same layout; an output asked for with ``parameters.binary_data: true``
  (or the request-level ``binary_data_output: true``) is sent as raw bytes.

Decoding a binary request copies nothing: the image batch is a read-only ``np.frombuffer`` view
of the request body. Every violation raises ``BadRequest`` with a message naming the problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayscale.config import IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAME
from rayscale.errors import BadRequest, ErrorReply

__all__ = [
    "HEADER_LENGTH",
    "InferRequest",
    "build_infer_request",
    "check_image_shape",
    "encode_error",
    "encode_infer_response",
    "get_json",
    "parse_infer_request",
    "parse_infer_response",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
_MAX_JSON_HEADER_BYTES = 1 << 20  # a v2 header with binary data is tiny; refuse absurd ones


@dataclass
class InferRequest:
    images: np.ndarray  # uint8 [N, 224, 224, 3]
    request_id: str | None
    binary_output: bool


def encode_error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def _loads(data: bytes | str, *, header_length_given: bool = True) -> object:
    # Raw bytes after the JSON read as "Extra data" or bad UTF-8: most likely a missing header.
    hint = "" if header_length_given else f" (a body with binary tensor data needs the {HEADER_LENGTH} header)"
    try:
        return json.loads(data)
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"malformed JSON: {e}{hint if e.msg == 'Extra data' else ''}") from None
    except UnicodeDecodeError as e:
        raise BadRequest(f"malformed JSON: {e}{hint}") from None
    except ValueError:  # json turns integers longer than Python's digit limit into a ValueError
        raise BadRequest("malformed JSON: a number has too many digits") from None


def _header_length(value: str | None, body_len: int) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise BadRequest(f"{HEADER_LENGTH} must be an integer, got {value!r}") from None
    if n <= 0 or n > body_len:
        raise BadRequest(f"{HEADER_LENGTH} is {n} but the body has {body_len} bytes")
    if n > _MAX_JSON_HEADER_BYTES:
        raise BadRequest(f"{HEADER_LENGTH} is {n}: the JSON header may be at most {_MAX_JSON_HEADER_BYTES} bytes")
    return n


def check_image_shape(shape: object, max_batch_size: int) -> tuple[int, ...]:
    """The image input's shape as a tuple: [N, 224, 224, 3] with 1 ≤ N ≤ max_batch_size, else BadRequest."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise BadRequest(f"input {INPUT_NAME} shape must be a list of integers, got {shape!r}")
    if len(shape) != 4 or tuple(shape[1:]) != IMAGE_SHAPE:
        raise BadRequest(
            f"input {INPUT_NAME} must have shape [N, {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]}, {IMAGE_SHAPE[2]}], got {shape}"
        )
    n = shape[0]
    if n < 1:
        raise BadRequest(f"input {INPUT_NAME} batch size must be ≥ 1, got {n}")
    if n > max_batch_size:
        raise BadRequest(f"input {INPUT_NAME} batch size {n} exceeds the model's max_batch_size {max_batch_size}")
    return tuple(shape)


def parse_infer_request(body: bytes | memoryview, header_length: str | None, *, max_batch_size: int) -> InferRequest:
    """Decode a v2 infer request for this model's single UINT8 image input.

    Binary image data is not copied: the images are a view of ``body``.
    """
    if not len(body):
        raise BadRequest("empty request body: send a v2 inference request")
    json_len = _header_length(header_length, len(body))
    header = _loads(bytes(body[:json_len] if json_len is not None else body), header_length_given=json_len is not None)
    if not isinstance(header, dict):
        raise BadRequest("request body must be a JSON object with an 'inputs' list")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("request must have a non-empty 'inputs' list")
    if len(inputs) != 1:
        raise BadRequest(f"model takes exactly one input ({INPUT_NAME}), got {len(inputs)}")
    spec = inputs[0]
    if not isinstance(spec, dict):
        raise BadRequest("each input must be a JSON object")
    name = spec.get("name")
    if name != INPUT_NAME:
        raise BadRequest(f"unknown input {name!r}: the model's input is {INPUT_NAME!r}")
    if spec.get("datatype") != "UINT8":
        raise BadRequest(f"input {INPUT_NAME} must have datatype UINT8, got {spec.get('datatype')!r}")
    shape = check_image_shape(spec.get("shape"), max_batch_size)
    expected = int(np.prod(shape))
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("input 'parameters' must be a JSON object")

    size = params.get("binary_data_size")
    if size is not None:
        if json_len is None:
            raise BadRequest(f"input has binary_data_size but the {HEADER_LENGTH} header is missing")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"binary_data_size must be a non-negative integer, got {size!r}")
        if size != expected:
            raise BadRequest(f"binary_data_size is {size} bytes but shape {list(shape)} of UINT8 needs {expected}")
        available = len(body) - json_len
        if available != size:
            raise BadRequest(f"binary body has {available} bytes after the JSON header, expected {size}")
        images = np.frombuffer(body, dtype=np.uint8, count=size, offset=json_len).reshape(shape)
    else:
        if json_len is not None and json_len != len(body):
            raise BadRequest(f"{len(body) - json_len} bytes follow the JSON header but no input declares binary data")
        data = spec.get("data")
        if data is None:
            raise BadRequest(f"input {INPUT_NAME} has neither 'data' nor parameters.binary_data_size")
        images = _json_tensor(data, shape, expected)

    outputs = header.get("outputs")
    request_params = header.get("parameters") or {}
    if not isinstance(request_params, dict):
        raise BadRequest("request 'parameters' must be a JSON object")
    binary_output = bool(request_params.get("binary_data_output", False))
    if outputs is not None:
        if not isinstance(outputs, list):
            raise BadRequest("'outputs' must be a list")
        for out in outputs:
            if not isinstance(out, dict) or out.get("name") != OUTPUT_NAME:
                got = out.get("name") if isinstance(out, dict) else out
                raise BadRequest(f"unknown output {got!r}: the model's output is {OUTPUT_NAME!r}")
            out_params = out.get("parameters") or {}
            if isinstance(out_params, dict) and out_params.get("binary_data"):
                binary_output = True
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("request 'id' must be a string")
    return InferRequest(images=images, request_id=request_id, binary_output=binary_output)


def _json_tensor(data: object, shape: tuple[int, ...], expected: int) -> np.ndarray:
    if not isinstance(data, list):
        raise BadRequest(f"input {INPUT_NAME} 'data' must be a list of integers")
    try:
        arr = np.asarray(data)
    except (ValueError, RecursionError):
        raise BadRequest(f"input {INPUT_NAME} 'data' is not a regular array of integers") from None
    if arr.size != expected:
        raise BadRequest(f"input {INPUT_NAME} 'data' has {arr.size} values but shape {list(shape)} needs {expected}")
    if arr.dtype.kind not in "iu":
        raise BadRequest(f"input {INPUT_NAME} 'data' must hold integers 0..255 (UINT8)")
    if arr.min() < 0 or arr.max() > 255:
        raise BadRequest(f"input {INPUT_NAME} 'data' values must be in 0..255 (UINT8)")
    return arr.astype(np.uint8).reshape(shape)


def encode_infer_response(
    model_name: str, embeddings: np.ndarray, *, binary: bool, request_id: str | None = None, model_version: str = "1"
) -> tuple[bytes, dict[str, str]]:
    """Encode FP32 [N, 512] embeddings as a v2 response; returns (body, headers)."""
    out: dict = {"name": OUTPUT_NAME, "datatype": "FP32", "shape": list(embeddings.shape)}
    header: dict = {"model_name": model_name, "model_version": model_version, "outputs": [out]}
    if request_id is not None:
        header["id"] = request_id
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if binary:
        raw = emb.tobytes()
        out["parameters"] = {"binary_data_size": len(raw)}
        head = json.dumps(header, separators=(",", ":")).encode()
        return head + raw, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    out["data"] = emb.ravel().tolist()
    return json.dumps(header, separators=(",", ":")).encode(), {"Content-Type": "application/json"}


# ---- client side -------------------------------------------------------------------------------


def build_infer_request(
    images: np.ndarray, *, binary: bool = True, request_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """Build a ready-to-send v2 request body and headers for a uint8 [N,224,224,3] batch."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    spec: dict = {"name": INPUT_NAME, "datatype": "UINT8", "shape": list(images.shape)}
    header: dict = {"inputs": [spec]}
    if request_id is not None:
        header["id"] = request_id
    if binary:
        raw = images.tobytes()
        spec["parameters"] = {"binary_data_size": len(raw)}
        header["outputs"] = [{"name": OUTPUT_NAME, "parameters": {"binary_data": True}}]
        head = json.dumps(header, separators=(",", ":")).encode()
        return head + raw, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    spec["data"] = images.ravel().tolist()
    header["outputs"] = [{"name": OUTPUT_NAME}]
    return json.dumps(header, separators=(",", ":")).encode(), {"Content-Type": "application/json"}


def get_json(url: str, *, token: str | None = None, timeout_s: float = 10.0) -> Any:
    """GET a v2 JSON endpoint (metadata, config, statistics); urllib errors propagate to the caller."""
    import urllib.request

    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def parse_infer_response(body: bytes, header_length: str | None) -> np.ndarray:
    """Decode a v2 response (JSON or binary) into FP32 [N, 512] embeddings.

    A client's view: a server's error document, or a response without the embeddings, raises
    ``ErrorReply`` with what the server said.
    """
    try:
        json_len = int(header_length) if header_length else None
        header = json.loads(body[:json_len] if json_len is not None else body)
        if isinstance(header, dict) and "error" in header:
            raise ErrorReply(f"the server answered: {header['error']}")
        out = next(o for o in header["outputs"] if o["name"] == OUTPUT_NAME)
        shape = tuple(out["shape"])
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if json_len is None:
                raise ErrorReply(f"binary output without the {HEADER_LENGTH} header")
            return np.frombuffer(body, dtype=np.float32, count=size // 4, offset=json_len).reshape(shape)
        return np.asarray(out["data"], dtype=np.float32).reshape(shape)
    except (ValueError, KeyError, TypeError, StopIteration) as e:  # json's errors are ValueErrors
        raise ErrorReply(f"malformed inference response ({type(e).__name__}: {e}); first bytes: {bytes(body[:120])!r}") from None

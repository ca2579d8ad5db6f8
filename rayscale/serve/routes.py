"""The Open Inference Protocol's HTTP routes, the same whichever server carries them.

``admit(replica, head)`` decides from the request head alone (before any body byte is read):
the route, the method, the API token, the body size and the replica's queue. ``handle(replica,
head, body)`` answers an admitted request. The replica's own server (the default ingress) and
Serve's HTTP proxy path (``--ingress proxy``) both call these two functions.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Protocol

import numpy as np

from rayscale import protocol
from rayscale.config import MODEL_NAME
from rayscale.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    NotImplementedByServer,
    PayloadTooLarge,
    ProtocolError,
)
from rayscale.serve.http_server import HttpResponse, RequestHead, error_response
from rayscale.serve.model_config import MODEL_VERSION

__all__ = ["MODEL_VERSION", "Backend", "admit", "handle"]

_UNSUPPORTED_PREFIXES = ("/v2/repository", "/v2/systemsharedmemory", "/v2/cudasharedmemory", "/v2/trace", "/v2/logging")
_JSON = {"Content-Type": "application/json"}


class Backend(Protocol):
    """What the routes need from a replica (``rayscale.serve.replica.OpenClipEncoder``)."""

    max_batch_size: int
    body_limit_bytes: int

    def check_token(self, token: str | None) -> None: ...
    def check_capacity(self) -> None: ...
    async def infer_request(self, images: np.ndarray, *, started_ns: int) -> np.ndarray: ...
    async def is_ready(self) -> bool: ...
    def model_metadata(self) -> dict[str, Any]: ...
    def server_metadata(self) -> dict[str, Any]: ...
    async def model_config(self) -> dict[str, Any]: ...
    async def model_statistics(self) -> dict[str, Any]: ...


def _route(path: str) -> tuple[str, str]:
    """(kind, action) for a path: kind is 'health', 'server', 'stats', 'model' or raises NotFound/501."""
    path = path.rstrip("/") or "/"
    if path.startswith(_UNSUPPORTED_PREFIXES):
        raise NotImplementedByServer(f"{path} is not supported by rayscale")
    if path in ("/v2/health/live", "/v2/health/ready"):
        return "health", path.rsplit("/", 1)[1]
    if path == "/v2":
        return "server", ""
    if path == "/v2/models/stats":
        return "model", "stats"
    if not path.startswith("/v2/models/"):
        raise NotFound(f"no route {path}: see /v2 for the Open Inference Protocol endpoints")
    rest = path[len("/v2/models/") :].split("/")
    name, rest = rest[0], rest[1:]
    if name != MODEL_NAME:
        raise NotFound(f"unknown model {name!r}: this server serves {MODEL_NAME!r}")
    if len(rest) >= 2 and rest[0] == "versions":
        if rest[1] != MODEL_VERSION:
            raise NotFound(f"unknown version {rest[1]!r} of {MODEL_NAME}: the only version is {MODEL_VERSION}")
        rest = rest[2:]
    action = "/".join(rest)
    if action not in ("", "ready", "config", "stats", "infer"):
        raise NotFound(f"no route {path}")
    return "model", action


def _require(method: str, allowed: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"method {method} not allowed here: use {allowed}")


def _bearer(head: RequestHead) -> str | None:
    scheme, _, token = head.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def admit(replica: Backend, head: RequestHead) -> HttpResponse | None:
    """None to go on and read the body, or the answer to send at once."""
    try:
        path = head.path.rstrip("/") or "/"
        if path.startswith(_UNSUPPORTED_PREFIXES):
            raise NotImplementedByServer(f"{path} is not supported by rayscale")
        if not path.startswith("/v2/health"):
            replica.check_token(_bearer(head))
        kind, action = _route(path)
        _require(head.method, "POST" if action == "infer" else "GET")
        if action == "infer":
            if head.content_length > replica.body_limit_bytes:
                raise PayloadTooLarge(
                    f"request body of {head.content_length} bytes exceeds the limit of {replica.body_limit_bytes} bytes"
                )
            replica.check_capacity()
    except ProtocolError as e:
        return error_response(e, close=isinstance(e, PayloadTooLarge))
    return None


async def handle(replica: Backend, head: RequestHead, body: memoryview | bytes, *, started_ns: int) -> HttpResponse:
    """Answer an admitted request (``admit`` returned None for its head)."""
    kind, action = _route(head.path)
    if kind == "health":
        if action == "live":
            return _json({"live": True})
        if not await replica.is_ready():
            return HttpResponse(503, protocol.encode_error("server is draining: send new requests elsewhere"), dict(_JSON))
        return _json({"ready": True})
    if kind == "server":
        return _json(replica.server_metadata())
    if action == "":
        return _json(replica.model_metadata())
    if action == "ready":
        if not await replica.is_ready():
            return HttpResponse(503, protocol.encode_error(f"{MODEL_NAME} is draining: send new requests elsewhere"), dict(_JSON))
        return _json({"name": MODEL_NAME, "ready": True})
    if action == "config":
        return _json(await replica.model_config())
    if action == "stats":
        return _json(await replica.model_statistics())
    encoding = head.headers.get("content-encoding")
    if encoding:
        body = decompress(bytes(body), encoding, replica.body_limit_bytes)
    req = protocol.parse_infer_request(
        body, head.headers.get(protocol.HEADER_LENGTH.lower()), max_batch_size=replica.max_batch_size
    )
    out = await replica.infer_request(req.images, started_ns=started_ns)
    payload, headers = protocol.encode_infer_response(MODEL_NAME, out, binary=req.binary_output, request_id=req.request_id)
    return HttpResponse(200, payload, headers)


def _json(obj: Any) -> HttpResponse:
    return HttpResponse(200, json.dumps(obj).encode(), dict(_JSON))


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    enc = encoding.strip().lower()
    if enc in ("identity", ""):
        return body
    if enc not in ("gzip", "deflate"):
        raise BadRequest(f"unsupported Content-Encoding {encoding!r}: use gzip, deflate or none")
    wbits = 16 + zlib.MAX_WBITS if enc == "gzip" else zlib.MAX_WBITS
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise BadRequest(f"body is not valid {enc} data: {e}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
    return out

"""The Ray Serve application: one deployment whose replicas each own one engine on one GPU.

Each replica is its own HTTP ingress (no extra hop between the proxy and the model) and speaks
the Open Inference Protocol. The hot path, top to bottom:

    request -> read body (size-limited) -> protocol.parse_infer_request (zero-copy view)
            -> ImageBatcher.submit (batch by image count, across callers)
            -> Engine.encode_parts on a worker thread (one copy into the batch buffer, one run)
            -> protocol.encode_infer_response -> response

In-cluster clients call ``handle.infer.remote(images)`` with a uint8 array (or an ObjectRef
to one) and get the embeddings back, through the same batcher.

``build_app(args)`` is the application builder that `serve run`, `rayscale up`, the config in
``deployments/`` and KubeRay's ``serveConfigV2`` all use; ``args`` are ``ServeConfig`` fields.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from typing import Any

import numpy as np

from rayscale import protocol
from rayscale.config import EMBED_DIM, IMAGE_SIZE, INPUT_NAME, MODEL_NAME, OUTPUT_NAME, ServeConfig
from rayscale.errors import (
    BadRequest,
    ConfigError,
    MethodNotAllowed,
    NotFound,
    NotImplementedByServer,
    Overloaded,
    PayloadTooLarge,
    ProtocolError,
    Unauthorized,
)

__all__ = [
    "DEPLOYMENT_NAME",
    "PROXY_CALLBACK",
    "PROXY_CALLBACK_ENV",
    "OpenClipEncoder",
    "ProtocolErrorMiddleware",
    "build_app",
    "deployment_options",
    "proxy_env_vars",
    "proxy_middlewares",
]

log = logging.getLogger("rayscale.serve")

DEPLOYMENT_NAME = "OpenClipEncoder"
MODEL_VERSION = "1"
_UNSUPPORTED_PREFIXES = ("/v2/repository", "/v2/systemsharedmemory", "/v2/cudasharedmemory", "/v2/trace", "/v2/logging")
# Ray Serve imports this in its HTTP proxy when the variable is set in the proxy's environment.
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "rayscale.serve.app:proxy_middlewares"
# Test hook: a file naming replica ids whose health check fails (Serve then replaces them).
FAIL_HEALTH_ENV = "RAYSCALE_FAIL_HEALTH_CHECK_FILE"


class OpenClipEncoder:
    """One replica: an engine on its GPU, a batcher, and the v2 HTTP routes."""

    def __init__(self, config: dict[str, Any]):
        from rayscale.engine import Engine, NullEngine
        from rayscale.export import load_model_info
        from rayscale.serve.batcher import ImageBatcher
        from rayscale.serve.stats import ReplicaStats, get_or_create_collector

        self.cfg = ServeConfig(**config)
        self.info = load_model_info(self.cfg.model_dir)
        engine_cls = NullEngine if self.cfg.provider == "null" else Engine
        self.engine = engine_cls(
            self.cfg.model_dir,
            provider=self.cfg.provider,
            max_batch_size=self.cfg.max_batch_size,
            intra_op_threads=self.cfg.intra_op_threads,
        )
        # Batches run on the batcher's worker threads, each with its own buffers: the set the
        # warm-up allocated on this thread would never be used again.
        self.engine.release_buffers()
        self.batcher = ImageBatcher(
            self.engine.encode_parts,
            max_batch_images=self.cfg.max_batch_size,
            batch_wait_s=self.cfg.batch_wait_ms / 1000.0,
            batches_in_flight=self.cfg.batches_in_flight,
            max_queued_requests=self.cfg.max_queued_requests,
            on_batch=self._on_batch,
        )
        self.replica_id = _replica_id()
        self.stats = ReplicaStats()
        self.collector = get_or_create_collector(self.cfg.app_name)
        self.in_flight = 0
        self._flushed_ns = 0
        self.draining = False
        self._token = self.cfg.api_token.encode() if self.cfg.api_token else None
        self._metadata = _model_metadata(self.info)
        self.collector.register.remote(self.replica_id, self.describe())

    # ---- Python path (DeploymentHandle) --------------------------------------------------------

    async def infer(self, images: np.ndarray) -> np.ndarray:
        """Embeddings for a uint8 [N, 224, 224, 3] batch (N ≤ max_batch_size), or an ObjectRef to one."""
        import ray

        if isinstance(images, ray.ObjectRef):
            images = await images
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise BadRequest(f"infer takes a uint8 array of shape [N, 224, 224, 3], got {getattr(images, 'shape', type(images))}")
        if not 1 <= images.shape[0] <= self.cfg.max_batch_size:
            raise BadRequest(f"batch size {images.shape[0]} is outside 1..{self.cfg.max_batch_size}")
        t0 = time.perf_counter_ns()
        self.in_flight += 1
        try:
            out, _, _ = await self.batcher.submit(images)
            return out
        except Overloaded:
            self._fail(503, images.shape[0], t0)
            raise
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._flush()

    def describe(self) -> dict[str, Any]:
        import ray

        ctx = ray.get_runtime_context()
        return {
            "replica": self.replica_id,
            "actor_name": ctx.get_actor_name(),
            "actor_namespace": _SERVE_NAMESPACE,
            "config": self.cfg.to_dict(),
            "auth": self._token is not None,
            "node": ray.get_runtime_context().get_node_id(),
            "hostname": os.uname().nodename,
            "pid": os.getpid(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "provider": self.engine.provider,
            "model_sha256": self.info.sha256,
            "precision": self.info.precision,
        }

    def __del__(self) -> None:
        # Serve calls this on graceful shutdown (scale-down, redeploy, `rayscale down`). Never let a
        # late garbage collection start or join a Ray cluster (an actor call would auto-init Ray).
        import ray

        try:
            self.batcher.close()
            if ray.is_initialized():
                self.collector.forget_replica.remote(self.replica_id)
        except Exception:
            pass

    def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy and replaces it."""
        task = self.batcher._loop_task
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            raise RuntimeError(f"batching loop died: {task.exception()!r}")
        marked = os.environ.get(FAIL_HEALTH_ENV)
        if marked and os.path.isfile(marked):
            with open(marked) as f:
                if self.replica_id in f.read().split():
                    raise RuntimeError(f"replica {self.replica_id} is marked unhealthy in {marked}")

    # ---- HTTP path -----------------------------------------------------------------------------

    async def __call__(self, request) -> Any:
        from starlette.responses import Response

        t0 = time.perf_counter_ns()
        try:
            body, status, headers = await self._route(request, t0)
        except asyncio.CancelledError:  # the client went away (or the proxy timed out): nobody to answer
            if request.url.path.endswith("/infer"):
                self._fail(499, 0, t0)
            raise
        except Exception as e:  # every answer is the protocol's JSON error form, never a bare 500
            if not isinstance(e, ProtocolError):
                log.exception("request %s failed", request.url.path)
                e = ProtocolError(f"internal error: {type(e).__name__}: {e}")
            body, status, headers = protocol.encode_error(str(e)), e.status_code, {"Content-Type": "application/json"}
            if isinstance(e, Overloaded):
                headers["Retry-After"] = "1"
            if request.url.path.endswith("/infer"):
                self._fail(status, 0, t0)
        headers["X-Rayscale-Replica"] = self.replica_id
        return Response(content=body, status_code=status, headers=headers)

    async def _route(self, request, t0: int) -> tuple[bytes, int, dict[str, str]]:
        path = request.url.path.rstrip("/") or "/"
        method = request.method
        if path.startswith(_UNSUPPORTED_PREFIXES):
            raise NotImplementedByServer(f"{path} is not supported by rayscale")
        if self._token is not None and not path.startswith("/v2/health"):
            self._authorize(request)
        if path == "/v2/health/live":
            return self._json({"live": True}, method)
        if path == "/v2/health/ready":
            _require(method, "GET")
            if await self._is_draining():
                return protocol.encode_error("server is draining: send new requests elsewhere"), 503, {"Content-Type": "application/json"}
            return self._json({"ready": True}, method)
        if path == "/v2":
            return self._json({"name": "rayscale", "version": _version(), "extensions": _EXTENSIONS}, method)
        if path == "/v2/models/stats":
            return self._json(await self._stats(), method)
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
        if action == "":
            return self._json(self._metadata, method)
        if action == "ready":
            _require(method, "GET")
            if await self._is_draining():
                return protocol.encode_error(f"{MODEL_NAME} is draining: send new requests elsewhere"), 503, {"Content-Type": "application/json"}
            return self._json({"name": MODEL_NAME, "ready": True}, method)
        if action == "config":
            return self._json(await self._triton_config(), method)
        if action == "stats":
            return self._json(await self._stats(), method)
        if action == "infer":
            _require(method, "POST")
            return await self._infer_http(request, t0)
        raise NotFound(f"no route {path}")

    def _authorize(self, request) -> None:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token or b""):
            raise Unauthorized("missing or wrong API token: send 'Authorization: Bearer <token>'")

    def _json(self, obj: Any, method: str) -> tuple[bytes, int, dict[str, str]]:
        import json

        _require(method, "GET")
        return json.dumps(obj).encode(), 200, {"Content-Type": "application/json"}

    async def _read_body(self, request) -> bytes:
        limit = self.cfg.body_limit_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
            except ValueError:
                raise BadRequest(f"Content-Length must be an integer, got {declared!r}") from None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        encoding = request.headers.get("content-encoding")
        if encoding:
            body = _decompress(body, encoding, limit)
        return body

    async def _infer_http(self, request, t0: int) -> tuple[bytes, int, dict[str, str]]:
        body = await self._read_body(request)
        req = protocol.parse_infer_request(
            body, request.headers.get(protocol.HEADER_LENGTH.lower()), max_batch_size=self.cfg.max_batch_size
        )
        remaining_s = self.cfg.request_timeout_s - (time.perf_counter_ns() - t0) / 1e9
        self.in_flight += 1
        try:
            async with asyncio.timeout(max(remaining_s, 0.0)):  # cancels the queued request, so it costs no compute
                out, _, _ = await self.batcher.submit(req.images)
        except TimeoutError:
            raise ProtocolError(
                f"inference did not finish within request_timeout_s={self.cfg.request_timeout_s:g} s: the server is "
                "overloaded; retry later or send smaller batches",
                status_code=504,
            ) from None
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:  # so the collector's in-flight count returns to zero when idle
                self._flush()
        return _ok(*protocol.encode_infer_response(MODEL_NAME, out, binary=req.binary_output, request_id=req.request_id))

    # ---- statistics ----------------------------------------------------------------------------

    def _on_batch(self, timing, batch, started_ns: int) -> None:
        now = time.perf_counter_ns()
        self.stats.record_batch(
            images=timing.images,
            request_images=[p.n for p in batch],
            queue_ns=[started_ns - p.enqueued_ns for p in batch],
            total_ns=[now - p.enqueued_ns for p in batch],
            input_ns=timing.input_ns,
            infer_ns=timing.infer_ns,
            output_ns=timing.output_ns,
        )
        self._flush()

    def _fail(self, code: int, images: int, t0: int) -> None:
        self.stats.record_failure(code=code, images=images, duration_ns=time.perf_counter_ns() - t0)
        self._flush()

    def _flush(self) -> None:
        """Send this replica's statistics delta to the collector: at most every ``_FLUSH_PERIOD_NS``
        under load (an actor call per batch is measurable work on the replica's event loop), and
        always when the replica goes idle, so totals are exact once requests have finished."""
        now = time.perf_counter_ns()
        if self.in_flight and now - self._flushed_ns < _FLUSH_PERIOD_NS:
            return
        self._flushed_ns = now
        self.collector.record.remote(self.replica_id, self.stats.take(), self.in_flight)

    async def _is_draining(self) -> bool:
        if not self.draining:  # `rayscale down` marks the whole app draining in the collector
            self.draining = bool(await self.collector.is_draining.remote())
        return self.draining

    async def _stats(self) -> dict[str, Any]:
        snap = await self.collector.snapshot.remote()
        return {"model_stats": snap["model_stats"]}

    async def _triton_config(self) -> dict[str, Any]:
        replicas = await self.collector.replicas.remote()
        return triton_model_config(self.cfg, replicas)


_FLUSH_PERIOD_NS = 100_000_000
_SERVE_NAMESPACE = "serve"  # where Ray Serve's controller creates replica actors
_EXTENSIONS = ["binary_tensor_data", "statistics", "model_configuration"]


def _ok(body: bytes, headers: dict[str, str]) -> tuple[bytes, int, dict[str, str]]:
    return body, 200, headers


def _require(method: str, allowed: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"method {method} not allowed here: use {allowed}")


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    import zlib

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


def _replica_id() -> str:
    try:
        from ray import serve

        ctx = serve.get_replica_context()
        rid = ctx.replica_id
        return getattr(rid, "unique_id", None) or str(rid)
    except Exception:
        return f"pid-{os.getpid()}"


def _version() -> str:
    from rayscale import __version__

    return __version__


def _model_metadata(info) -> dict[str, Any]:
    return {
        "name": MODEL_NAME,
        "versions": [MODEL_VERSION],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": INPUT_NAME, "datatype": "UINT8", "shape": [-1, IMAGE_SIZE, IMAGE_SIZE, 3]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, EMBED_DIM]}],
        "parameters": {"precision": info.precision, "sha256": info.sha256, "weights": info.weights},
    }


def triton_model_config(cfg: ServeConfig, replicas: list[dict[str, Any]]) -> dict[str, Any]:
    """The model configuration in Triton's JSON form (what perf_analyzer reads)."""
    kind = "KIND_GPU" if cfg.gpus_per_replica > 0 else "KIND_CPU"
    gpus = sorted({int(g) for r in replicas for g in r.get("gpu_ids", []) if str(g).isdigit()})
    # Triton's form names GPU indices only, and every node has a GPU 0: the GPUs in all (what a
    # client records as the server's size) and each replica's share go in parameters.
    gpus_in_all = len({(r.get("node"), str(g)) for r in replicas for g in r.get("gpu_ids", [])})
    return {
        "name": MODEL_NAME,
        "platform": "onnxruntime_onnx",
        "backend": "rayscale",
        "max_batch_size": cfg.max_batch_size,
        "input": [{"name": INPUT_NAME, "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC", "dims": [IMAGE_SIZE, IMAGE_SIZE, 3]}],
        "output": [{"name": OUTPUT_NAME, "data_type": "TYPE_FP32", "dims": [EMBED_DIM]}],
        "dynamic_batching": {
            "max_queue_delay_microseconds": int(cfg.batch_wait_ms * 1000),
            "preferred_batch_size": [cfg.max_batch_size],
        },
        "instance_group": [{"name": DEPLOYMENT_NAME, "kind": kind, "count": max(len(replicas), 1), "gpus": gpus}],
        "version_policy": {"latest": {"num_versions": 1}},
        "parameters": {
            "rayscale_gpus": {"string_value": str(gpus_in_all)},
            "gpus_per_replica": {"string_value": f"{cfg.gpus_per_replica:g}"},
        },
    }


def deployment_options(cfg: ServeConfig) -> dict[str, Any]:
    return {
        "name": DEPLOYMENT_NAME,
        "num_replicas": cfg.replicas,
        "ray_actor_options": {"num_gpus": cfg.gpus_per_replica, "num_cpus": cfg.cpus_per_replica}
        | ({"runtime_env": {"env_vars": HAPROXY_ENV}} if cfg.ingress == "haproxy" else {}),
        "max_ongoing_requests": cfg.max_ongoing_requests,
        # The replica's batcher enforces max_queued_requests with the protocol's 503; Serve's own limit
        # (whose rejections the proxy middleware rewrites) only guards against a runaway queue in the router,
        # which also holds requests for a moment while it picks a replica.
        "max_queued_requests": _serve_queue_limit(cfg),
        "graceful_shutdown_timeout_s": max(cfg.request_timeout_s, 5.0),
        "graceful_shutdown_wait_loop_s": 0.5,
        "health_check_period_s": 5.0,
        "health_check_timeout_s": 30.0,
        # A log line per request costs the replica CPU on the hot path; errors are still logged.
        "logging_config": {"enable_access_log": False, "log_level": "WARNING"},
    }


def _serve_queue_limit(cfg: ServeConfig) -> int:
    if cfg.max_queued_requests < 0:
        return -1
    return max(4 * cfg.max_queued_requests * cfg.replicas, 1024)


def build_app(args: dict[str, Any] | None = None):
    """Application builder: ``serve run rayscale.serve.app:build_app model_dir=... replicas=2``."""
    from ray import serve

    args = dict(args or {})
    known = set(ServeConfig.__dataclass_fields__)
    unknown = sorted(set(args) - known)
    if unknown:
        raise ConfigError(f"unknown application argument(s) {', '.join(unknown)}: valid ones are {', '.join(sorted(known))}")
    for key, field_ in ServeConfig.__dataclass_fields__.items():  # config files and CLIs give strings
        if key in args and isinstance(args[key], str) and field_.type in ("int", "float"):
            try:
                args[key] = int(args[key]) if field_.type == "int" else float(args[key])
            except ValueError:
                raise ConfigError(f"application argument {key} must be a number, got {args[key]!r}") from None
    cfg = ServeConfig(**args)
    deployment = serve.deployment(OpenClipEncoder, **deployment_options(cfg))
    return deployment.bind(cfg.to_dict() | {"api_token": cfg.api_token})


# ---- Ray Serve's proxy -------------------------------------------------------------------------


class ProtocolErrorMiddleware:
    """Gives the errors Ray Serve's HTTP proxy writes itself the protocol's JSON form.

    The proxy answers some requests without the replica's help, in plain text that tritonclient
    cannot parse: 503 when Serve's own queue is full (``max_queued_requests``) or no replica is
    available, 408 when a proxy timeout expires, 404 for a path outside every route, and an empty
    500 when the replica died mid-request. This ASGI middleware runs in the proxy (Serve imports
    ``PROXY_CALLBACK`` from ``PROXY_CALLBACK_ENV``) and rewrites each into ``{"error": ...}``,
    keeping the status and ``Retry-After``; a request left unanswered becomes a retryable 503.
    Serve's own ``/-/`` routes are left alone.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") != "http" or scope.get("path", "").startswith("/-/"):
            await self.app(scope, receive, send)
            return
        started = False
        held: dict | None = None  # the start of a plain-text error, rewritten once its body is complete
        chunks: list[bytes] = []

        async def send_json_errors(message) -> None:
            nonlocal started, held
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 400 and not _is_json(message.get("headers") or []):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    text = b"".join(chunks).decode(errors="replace").strip()
                    await _send_json_error(send, held["status"], text, held.get("headers") or [])
                return
            await send(message)

        try:
            await self.app(scope, receive, send_json_errors)
        except Exception as e:
            if started:
                raise
            log.warning("Serve's proxy failed a request: %r", e)
            await _send_json_error(send, 500, f"proxy error: {type(e).__name__}: {e}", [])
            return
        if not started:  # the proxy gave up on the replica (it died) without writing an answer
            await _send_json_error(
                send, 503, "the replica handling this request failed before answering (Serve replaces it): retry", []
            )


def proxy_middlewares() -> list:
    """What Serve's proxy imports through ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``."""
    from starlette.middleware import Middleware

    return [Middleware(ProtocolErrorMiddleware)]


def proxy_env_vars() -> dict[str, str]:
    """Environment for Serve's controller (and so its proxies) that installs the middleware."""
    return {PROXY_CALLBACK_ENV: PROXY_CALLBACK}


HAPROXY_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # Replicas drain 30 s by default before stopping; HAProxy hears of a removal from the controller
    # within a fraction of a second, so 5 s keeps scale-down safe and `rayscale down` quick.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
}


def serve_env_vars(ingress: str) -> dict[str, str]:
    """Environment for Serve's processes: the JSON-error middleware, and HAProxy mode when asked for.

    With ``haproxy``, each replica serves HTTP on its own port and HAProxy routes to them, so
    requests skip Serve's Python proxy and its pull-based body transfer (one actor call back to the
    proxy per body chunk). Measured on an H100 with the real model: 2.1-2.4x the images/s at 32
    images per request and 10x the requests/s at 1 (benchmarks/results/h100-2026-11-25-study).
    Not the default: Ray 2.60's HAProxy config binds its statistics page (8404) and Prometheus
    endpoint (9101) on every interface, which rayscale cannot configure (their fixed ports also
    allow one such cluster per machine).
    """
    return proxy_env_vars() | (HAPROXY_ENV if ingress == "haproxy" else {})


def _is_json(headers: list) -> bool:
    for key, value in headers:
        if bytes(key).lower() == b"content-type":
            return bytes(value).lower().startswith(b"application/json")
    return False


_PROXY_DEFAULT_MESSAGES = {
    404: "no such route on this server: see /v2 for the Open Inference Protocol endpoints",
    408: "request timed out in Ray Serve's proxy: retry, or raise the timeout",
    503: "server overloaded or no replica available: retry later",
}


async def _send_json_error(send, status: int, text: str, headers: list) -> None:
    import json

    message = text or _PROXY_DEFAULT_MESSAGES.get(status, f"HTTP {status}")
    body = json.dumps({"error": message}).encode()
    kept = [(bytes(k), bytes(v)) for k, v in headers if bytes(k).lower() not in (b"content-type", b"content-length")]
    if status in (503, 429) and not any(k.lower() == b"retry-after" for k, _ in kept):
        kept.append((b"retry-after", b"1"))
    kept += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": kept})
    await send({"type": "http.response.body", "body": body})

"""One replica process: an engine on its GPU (or a share of one), a batcher, and its servers.

The hot path, top to bottom:

    request -> admit (from the head alone: route, token, size, queue)
            -> body received straight into one buffer -> protocol.parse_infer_request (zero-copy view)
            -> ImageBatcher.submit (batch by image count, across callers)
            -> Engine.encode_parts on a worker thread (one copy into the batch buffer, one run)
            -> protocol.encode_infer_response -> response

With the default ingress (``direct``) the replica serves HTTP (and gRPC) on its own ports and the
ingress load balancer routes to them, so a body moves once, in one piece, from the client to the
process that runs it. Serve's HTTP proxy (``--ingress proxy``) reaches the same routes through
``__call__``. In-cluster clients call ``handle.infer.remote(images)``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from typing import Any

import numpy as np

from rayscale.config import IMAGE_SIZE, LOCAL_HOST, LOOPBACK_HOSTS, ServeConfig
from rayscale.errors import BadRequest, Overloaded, PayloadTooLarge, ProtocolError, Unauthorized
from rayscale.serve import registry, routes
from rayscale.serve.http_server import HttpResponse, RequestHead, error_response, start_http_server
from rayscale.serve.ingress import INGRESS_TOKEN_HEADER
from rayscale.serve.model_config import model_metadata, triton_model_config
from rayscale.serve.registry import ReplicaRecord

__all__ = ["FAIL_HEALTH_ENV", "RECONFIGURABLE", "OpenClipEncoder"]

log = logging.getLogger("rayscale.serve")

# Test hook: a file naming replica ids whose health check fails (Serve then replaces them).
FAIL_HEALTH_ENV = "RAYSCALE_FAIL_HEALTH_CHECK_FILE"
_FLUSH_PERIOD_NS = 100_000_000
_DEREGISTER_S = 1.0  # the ingresses poll replica records every 0.25 s and health-check them every 0.5 s
_WATCH_S = 0.25  # how often a replica reads the app's draining flag
_REPAIR_EVERY = 8  # and, every this many reads (2 s), checks that its statistics and ingress actors exist
_SERVE_NAMESPACE = "serve"  # where Ray Serve's controller creates replica actors
_EXTENSIONS = ["binary_tensor_data", "statistics", "model_configuration"]
# ServeConfig fields a running replica changes in place: the deployment's user_config, which Serve
# hands to ``reconfigure`` at start and on every redeploy that changes only it (no new process).
RECONFIGURABLE = ("batch_wait_ms", "batches_in_flight", "max_queued_requests")


class OpenClipEncoder:
    """One replica: an engine, a batcher, the protocol's routes and (ingress ``direct``) its own servers."""

    def __init__(self, cfg: ServeConfig):
        import ray

        from rayscale.engine import NullEngine
        from rayscale.engine_options import create_engine
        from rayscale.export import load_model_info
        from rayscale.serve.batcher import ImageBatcher
        from rayscale.serve.stats import ReplicaStats, get_or_create_collector

        self.cfg = cfg
        self.max_batch_size = cfg.max_batch_size
        self.body_limit_bytes = cfg.body_limit_bytes
        self.info = load_model_info(cfg.model_dir)
        if cfg.provider == "null":
            self.engine = NullEngine(cfg.model_dir, max_batch_size=cfg.max_batch_size)
        else:
            self.engine = create_engine(
                cfg.model_dir,
                options=cfg.engine,
                provider=cfg.provider,
                max_batch_size=cfg.max_batch_size,
                intra_op_threads=cfg.intra_op_threads,
            )
        # Batches run on the batcher's worker threads, each with its own buffers: the set the
        # warm-up allocated on this thread would never be used again.
        self.engine.release_buffers()
        self.batcher = ImageBatcher(
            self.engine.encode_parts,
            max_batch_size=cfg.max_batch_size,
            batch_wait_ms=cfg.batch_wait_ms,
            batches_in_flight=cfg.batches_in_flight,
            max_queued_requests=cfg.max_queued_requests,
            on_batch=self._on_batch,
        )
        self.replica_id = _replica_id()
        self.stats = ReplicaStats()
        self.collector = get_or_create_collector(cfg.app_name)
        self.node = ray.get_runtime_context().get_node_id()
        self.in_flight = 0
        self.admitted = 0  # requests admitted whose body is still arriving (not yet queued)
        self._flushed_ns = 0
        # Counted from here, after the model's load and warm-up: replica CPU time is what serving costs.
        self._flushed_cpu_s = time.process_time()
        self.draining = False
        self._token = cfg.api_token.encode() if cfg.api_token else None
        self._metadata = model_metadata(self.info)
        self.host: str | None = None
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self._servers: list[Any] = []
        self._starting: asyncio.Task | None = None
        loop = asyncio.get_running_loop()  # Serve runs the constructor on the replica's event loop
        if cfg.ingress == "direct":
            # The servers start there, and the replica registers (so the ingresses route to it) once
            # their ports are known.
            self._starting = loop.create_task(self._start_servers())
        else:
            registry.put_replica(cfg.app_name, self.describe())
        self._watching = loop.create_task(self._watch_control_plane())
        self._constructed = True

    async def _start_servers(self) -> None:
        """The replica's own HTTP and gRPC servers, which the ingress load balancer routes to."""
        secret = await asyncio.to_thread(registry.ingress_secret, self.cfg.app_name)
        self._ingress_token = secret.encode()
        self.host = _bind_host()
        server, self.http_port = await start_http_server(
            self._admit_direct,
            self._handle_direct,
            self._abandon_direct,
            host=self.host,
            port=0,
            body_limit=self.body_limit_bytes,
        )
        self._servers.append(server)
        if not self.cfg.grpc_port:  # the ingress serves no gRPC
            self._register_with_ingress()
            return
        try:
            from rayscale.serve.grpc_service import start_grpc_server
        except ImportError:  # tritonclient[grpc] missing: HTTP only
            log.warning("gRPC not served: install tritonclient[grpc]")
            self._register_with_ingress()
            return
        grpc_server, self.grpc_port = await start_grpc_server(
            self, host=self.host, port=0, max_message_bytes=self.body_limit_bytes, ingress_token=secret
        )
        self._servers.append(grpc_server)
        self._register_with_ingress()

    def _register_with_ingress(self) -> None:
        registry.put_replica(self.cfg.app_name, self.describe())
        # Every node that hosts replicas runs its own ingress: the first replica on a node starts it
        # (also when deployed without `rayscale up`: serve run, KubeRay).
        self._ensure_node_ingress()

    def _ensure_node_ingress(self) -> None:
        from rayscale.serve.ingress import ensure_node_ingress, get_node_ingress, ingress_config

        if get_node_ingress(self.cfg.app_name, self.node) is None:
            ensure_node_ingress(ingress_config(self.cfg), self.node, wait=False)

    async def _watch_control_plane(self) -> None:
        """Keep this process's copy of the app's draining flag (readiness answers from it, so a probe
        never waits on another process), and put back what a crash took away: the statistics actor,
        killed for good, is made anew; so is this node's ingress actor."""
        import ray

        from rayscale.serve.stats import NAMESPACE as STATS_NAMESPACE
        from rayscale.serve.stats import collector_name, get_or_create_collector

        def lookups() -> None:
            try:
                ray.get_actor(collector_name(self.cfg.app_name), namespace=STATS_NAMESPACE)
            except ValueError:
                self.collector = get_or_create_collector(self.cfg.app_name)
            if self.cfg.ingress == "direct" and self.http_port and not self.draining:
                self._ensure_node_ingress()

        ticks = 0
        while not self._shutdown_started:
            try:
                if not self.draining:  # `rayscale down` marks the app draining; it never turns back
                    self.draining = await asyncio.to_thread(registry.is_draining, self.cfg.app_name)
                if ticks % _REPAIR_EVERY == 0:
                    await asyncio.to_thread(lookups)
            except Exception as e:  # the GCS restarting, say: keep the last known state and try again
                log.warning("replica %s: control-plane check failed: %s", self.replica_id, e)
            ticks += 1
            await asyncio.sleep(_WATCH_S)

    # ---- what every transport calls (rayscale.serve.routes.Backend, grpc_service.InferenceBackend) --

    def check_token(self, token: str | None) -> None:
        if self._token is None:
            return
        if token is None or not hmac.compare_digest(token.encode(), self._token):
            raise Unauthorized("missing or wrong API token: send 'Authorization: Bearer <token>'")

    def check_capacity(self) -> None:
        """Refuse at once when the queue is full: before a body is read, so overload answers quickly."""
        limit = self.cfg.max_queued_requests
        waiting = self.batcher.queued_requests + self.admitted
        if limit >= 0 and waiting >= limit:
            self._fail(503, 0, time.perf_counter_ns())
            raise Overloaded(f"server overloaded: {waiting} requests already queued (max_queued_requests={limit}); retry later")

    async def infer_request(self, images: np.ndarray, *, started_ns: int) -> np.ndarray:
        """Embeddings for one protocol request, within ``request_timeout_s`` of its arrival."""
        remaining_s = self.cfg.request_timeout_s - (time.perf_counter_ns() - started_ns) / 1e9
        self.in_flight += 1
        try:
            async with asyncio.timeout(max(remaining_s, 0.0)):  # cancels the queued request, so it costs no compute
                out, _, _ = await self.batcher.submit(images)
            return out
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

    async def infer(self, images: np.ndarray) -> np.ndarray:
        """The handle path: embeddings for a uint8 [N, 224, 224, 3] batch, or an ObjectRef to one."""
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

    async def is_ready(self) -> bool:
        return not self.draining  # kept current by _watch_control_plane

    def model_metadata(self) -> dict[str, Any]:
        return self._metadata

    def server_metadata(self) -> dict[str, Any]:
        from rayscale import __version__

        return {"name": "rayscale", "version": __version__, "extensions": _EXTENSIONS}

    async def model_config(self) -> dict[str, Any]:
        return triton_model_config(self.cfg, await asyncio.to_thread(registry.replica_records, self.cfg.app_name))

    async def model_statistics(self) -> dict[str, Any]:
        from rayscale.serve.stats import statistics_body

        return statistics_body(await self.collector.snapshot.remote())

    # ---- the replica's own HTTP server (ingress "direct") --------------------------------------

    def _admit_direct(self, head: RequestHead) -> HttpResponse | None:
        token = head.headers.get(INGRESS_TOKEN_HEADER, "")
        if not hmac.compare_digest(token.encode(), self._ingress_token):
            return error_response(Unauthorized("this port takes requests from rayscale's ingress only"), close=True)
        refused = routes.admit(self, head)
        if refused is None and _is_infer(head.path):
            self.admitted += 1  # a reservation in the queue until the body is in
            head.admitted = True
        return refused

    async def _handle_direct(self, head: RequestHead, body: memoryview) -> HttpResponse:
        return await self._answer(head, body, time.perf_counter_ns())

    def _abandon_direct(self, head: RequestHead) -> None:
        if head.admitted:
            head.admitted = False
            self.admitted -= 1
        self._fail(499, 0, time.perf_counter_ns())

    async def _answer(self, head: RequestHead, body: memoryview | bytes, t0: int) -> HttpResponse:
        infer = _is_infer(head.path)
        if head.admitted:
            head.admitted = False
            self.admitted -= 1
        try:
            response = await routes.handle(self, head, body, started_ns=t0)
        except asyncio.CancelledError:  # the client went away: nobody to answer
            if infer:
                self._fail(499, 0, t0)
            raise
        except ProtocolError as e:
            response = error_response(e)
            if infer:
                self._fail(e.status_code, 0, t0)
        except Exception as e:  # every answer is the protocol's JSON error form, never a bare 500
            log.exception("request %s failed", head.path)
            response = error_response(ProtocolError(f"internal error: {type(e).__name__}: {e}"))
            if infer:
                self._fail(500, 0, t0)
        response.headers["X-Rayscale-Replica"] = self.replica_id
        return response

    # ---- Serve's HTTP proxy path (ingress "proxy" and "haproxy") -------------------------------

    async def __call__(self, request) -> Any:
        from starlette.responses import Response

        t0 = time.perf_counter_ns()
        head = RequestHead(
            method=request.method, path=request.url.path, headers={k.lower(): v for k, v in request.headers.items()}
        )
        declared = head.headers.get("content-length", "0")
        head.content_length = int(declared) if declared.isdigit() else 0
        refused = routes.admit(self, head)
        body = b""
        if refused is None:
            infer = _is_infer(head.path)
            self.admitted += infer
            try:
                body = await self._read_body(request) if head.method == "POST" else b""
            except ProtocolError as e:
                refused = error_response(e)
            except asyncio.CancelledError:
                if infer:
                    self._fail(499, 0, t0)
                raise
            finally:
                self.admitted -= infer
        if refused is not None:
            if _is_infer(head.path) and refused.status != 503:  # check_capacity counted its 503
                self._fail(refused.status, 0, t0)
            response = refused
        else:
            response = await self._answer(head, body, t0)
        response.headers["X-Rayscale-Replica"] = self.replica_id
        return Response(content=response.body, status_code=response.status, headers=response.headers)

    async def _read_body(self, request) -> bytes:
        limit = self.body_limit_bytes
        declared = request.headers.get("content-length")
        if declared is not None and not declared.isdigit():
            raise BadRequest(f"Content-Length must be an integer, got {declared!r}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # ---- lifecycle ------------------------------------------------------------------------------

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve's lightweight update: new batching settings for this running process (on its event loop)."""
        from dataclasses import replace

        unknown = sorted(set(user_config) - set(RECONFIGURABLE))
        if unknown:
            raise ValueError(f"user_config may set {', '.join(RECONFIGURABLE)}, not {', '.join(unknown)}")
        changed = {k: v for k, v in user_config.items() if getattr(self.cfg, k) != v}
        if not changed:
            return
        self.cfg = replace(self.cfg, **changed)  # checked as any ServeConfig is
        self.batcher.reconfigure(
            batch_wait_ms=self.cfg.batch_wait_ms,
            batches_in_flight=self.cfg.batches_in_flight,
            max_queued_requests=self.cfg.max_queued_requests,
        )
        if self.http_port is not None or self.cfg.ingress != "direct":  # registered: what it reports changes too
            await asyncio.to_thread(registry.put_replica, self.cfg.app_name, self.describe())

    def describe(self) -> ReplicaRecord:
        import ray

        ctx = ray.get_runtime_context()
        return ReplicaRecord(
            replica=self.replica_id,
            node=self.node,
            pid=os.getpid(),
            actor_name=ctx.get_actor_name(),
            actor_namespace=_SERVE_NAMESPACE,
            node_ip=ray.util.get_node_ip_address(),
            hostname=os.uname().nodename,
            gpu_ids=[str(g) for g in ray.get_gpu_ids()],
            provider=self.engine.provider,
            backend=self.engine.backend,
            model_sha256=self.info.sha256,
            precision=self.info.precision,
            auth=self._token is not None,
            host=self.host,
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            config=self.cfg.to_dict(),
        )

    def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy and replaces it."""
        error = self.batcher.loop_error()
        if error is not None:
            raise RuntimeError(f"batching loop died: {error!r}")
        if self._starting is not None and self._starting.done() and not self._starting.cancelled() and self._starting.exception():
            raise RuntimeError(f"the replica's servers did not start: {self._starting.exception()!r}")
        marked = os.environ.get(FAIL_HEALTH_ENV)
        if marked and os.path.isfile(marked):
            with open(marked) as f:
                if self.replica_id in f.read().split():
                    raise RuntimeError(f"replica {self.replica_id} is marked unhealthy in {marked}")

    _constructed = False
    _shutdown_started = False

    def __del__(self):
        """Serve calls this on graceful shutdown (scale-down, redeploy, `rayscale down`) and awaits
        the coroutine it returns; see `shutdown`. A garbage collection after that gets None, so no
        coroutine is left unawaited; so does one of a replica whose __init__ failed.
        """
        if self._shutdown_started or not self._constructed:
            return None
        return self.shutdown()

    async def shutdown(self) -> None:
        """Leave the load balancer, drain, close the servers and the batcher; runs once.

        Requests that came through the replica's own servers are unknown to Serve, so the replica
        drains them itself: it leaves the load balancer (deregistered, readiness 503), waits for
        the requests it has, then closes its servers. Never lets a late garbage collection start or
        join a Ray cluster (an actor call would auto-init Ray).
        """
        if self._shutdown_started:
            return
        self._shutdown_started = True
        self._watching.cancel()
        import ray

        try:
            self.draining = True
            if ray.is_initialized():
                await asyncio.to_thread(registry.forget_replica, self.cfg.app_name, self.replica_id)
                self.collector.forget_replica.remote(self.replica_id)
            if self._servers:
                await asyncio.sleep(_DEREGISTER_S)
                deadline = time.monotonic() + self.cfg.request_timeout_s
                while (self.in_flight or self.admitted) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                for server in self._servers:
                    if isinstance(server, asyncio.AbstractServer):
                        server.close()
                    else:
                        await server.stop(0.5)
            self.batcher.close()
        except Exception:
            pass

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
        cpu_s = time.process_time()  # this process, every thread, user + system
        self.stats.replica_cpu_s, self._flushed_cpu_s = cpu_s - self._flushed_cpu_s, cpu_s
        self.collector.record.remote(self.replica_id, self.stats.take(), self.in_flight)


def _is_infer(path: str) -> bool:
    return path.rstrip("/").endswith("/infer")


def _bind_host() -> str:
    """Loopback on a one-node cluster; the node's address where the load balancer may sit elsewhere.

    Beyond loopback a replica's servers answer only requests that carry the ingress token.
    """
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    node_ip = ray.util.get_node_ip_address()
    if len(alive) <= 1 or node_ip in LOOPBACK_HOSTS:
        return LOCAL_HOST
    return node_ip


def _replica_id() -> str:
    try:
        from ray import serve

        rid = serve.get_replica_context().replica_id
        return getattr(rid, "unique_id", None) or str(rid)
    except Exception:
        return f"pid-{os.getpid()}"

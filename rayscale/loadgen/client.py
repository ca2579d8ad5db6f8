"""One load-generating client: an async Ray actor with its own connection pool (or handle).

Every request's outcome is data: a latency sample, or an error counted by kind
(``http_<status>``, ``timeout``, ``connection``, ``bad_response``, ``client_overflow``,
``app_<Exception>`` for handle calls, ``grpc_<status code>`` over gRPC). ``take()`` hands over a
``ClientTake`` of what completed since the last take; requests still in flight are counted as
such, so over a point, sent = ok + failed + incomplete.

The payload is built once per point (a ready request body; in handle mode an ObjectRef put
into the object store once by the driver), never per request.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from rayscale.errors import ErrorReply
from rayscale.loadgen.stats import ClientTake
from rayscale.loadgen.target_spec import TargetSpec

if TYPE_CHECKING:
    import aiohttp

    from rayscale.loadgen.grpc_client import GrpcSender

__all__ = ["LoadClient"]

LATE_THRESHOLD_S = 0.002
MAX_OUTSTANDING_OPEN_LOOP = 8192
MAX_ERROR_EVENTS = 20000


class LoadClient:
    def __init__(self, target: TargetSpec):
        self.target = target
        self.session: aiohttp.ClientSession | None = None  # kind "http", once prepared
        self.handle: Any = None  # a DeploymentHandle when kind is "handle"
        self.grpc: GrpcSender | None = None  # kind "grpc"
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._reset_counters()
        self._inflight = 0
        self._incomplete = 0
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter()

    def _reset_counters(self) -> None:
        self._lat: list[float] = []
        self._errors: dict[str, int] = {}
        self._error_events: list[tuple[float, str]] = []
        self._ok = 0
        self._failed = 0
        self._late = 0
        self._sent = 0

    # ---- set-up --------------------------------------------------------------------------------

    async def prepare(self, images_per_request: int, seed: int = 0, images_ref: Any = None) -> dict[str, Any]:
        """Build the payload once and send one request to check the target answers correctly."""
        from rayscale.config import EMBED_DIM, IMAGE_SHAPE

        self.images_per_request = images_per_request
        self.expected_output_bytes = images_per_request * EMBED_DIM * 4
        if self.target.kind == "handle":
            from ray import serve

            from rayscale.serve.app import DEPLOYMENT_NAME

            self.handle = serve.get_deployment_handle(DEPLOYMENT_NAME, self.target.app_name)
            self.images_ref = images_ref
            out = await self.handle.infer.remote(self.images_ref)
            if out.shape != (images_per_request, EMBED_DIM):
                raise ErrorReply(f"handle returned shape {out.shape}, expected {(images_per_request, EMBED_DIM)}")
            return {"ok": True}
        if self.target.kind == "grpc":
            from rayscale.loadgen.grpc_client import GrpcSender

            self.grpc = self.grpc or GrpcSender(self.target)
            return await self.grpc.prepare(images_per_request, seed)

        import aiohttp

        from rayscale import protocol

        images = np.random.default_rng(seed).integers(0, 256, size=(images_per_request, *IMAGE_SHAPE), dtype=np.uint8)
        self.body, self.headers = protocol.build_infer_request(images, binary=self.target.binary)
        if self.target.token:
            self.headers["Authorization"] = f"Bearer {self.target.token}"
        self.url = f"{self.target.server_url().rstrip('/')}/v2/models/{self.target.model}/infer"
        if self.session is not None:
            await self.session.close()
        connector = aiohttp.TCPConnector(limit=0, force_close=False, enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(total=self.target.timeout_s)
        # No Accept-Encoding: aiohttp offers gzip/deflate by default, and Triton then compresses every
        # response in its output path (measured on an H100: +100 ms per 32-image request, 3-4x lower
        # throughput than perf_analyzer, which asks for no compression either).
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, skip_auto_headers=("User-Agent", "Accept-Encoding")
        )
        async with self.session.post(self.url, data=self.body, headers=self.headers) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise ErrorReply(f"target answered HTTP {resp.status}: {data[:300].decode(errors='replace')}")
            emb = protocol.parse_infer_response(data, resp.headers.get(protocol.HEADER_LENGTH))
            if emb.shape != (images_per_request, EMBED_DIM):
                raise ErrorReply(f"target returned embeddings of shape {emb.shape}, expected {(images_per_request, EMBED_DIM)}")
        return {"ok": True, "request_bytes": len(self.body)}

    # ---- one request ---------------------------------------------------------------------------

    async def _send(self, intended: float | None = None) -> None:
        start = time.perf_counter()
        t0 = intended if intended is not None else start
        self._inflight += 1
        self._sent += 1
        kind = None
        try:
            if self.handle is not None:
                kind = await self._send_handle()
            elif self.grpc is not None:
                kind = await self.grpc.send()
            else:
                kind = await self._send_http()
        except asyncio.CancelledError:
            self._inflight -= 1
            self._incomplete += 1
            raise
        except TimeoutError:
            kind = "timeout"
        except Exception as e:  # aiohttp connection errors and the like
            kind = _classify(e)
        end = time.perf_counter()
        self._inflight -= 1
        if kind is None:
            self._ok += 1
            self._lat.append(end - t0)
        else:
            self._failed += 1
            self._errors[kind] = self._errors.get(kind, 0) + 1
            if len(self._error_events) < MAX_ERROR_EVENTS:
                self._error_events.append((time.time(), kind))

    async def _send_http(self) -> str | None:
        from rayscale.protocol import HEADER_LENGTH

        assert self.session is not None, "prepare() opens the session"
        async with self.session.post(self.url, data=self.body, headers=self.headers) as resp:
            data = await resp.read()
            if resp.status != 200:
                return f"http_{resp.status}"
            if self.target.binary:
                hl = resp.headers.get(HEADER_LENGTH)
                if hl is None or len(data) - int(hl) != self.expected_output_bytes:
                    return "bad_response"
            elif not data:
                return "bad_response"
        return None

    async def _send_handle(self) -> str | None:
        try:
            out = await self.handle.infer.remote(self.images_ref)
        except Exception as e:
            return "app_" + type(e).__name__
        if out.shape[0] != self.images_per_request:
            return "bad_response"
        return None

    # ---- load shapes ---------------------------------------------------------------------------

    async def start_closed(self, concurrency: int) -> None:
        """``concurrency`` slots, each sending its next request when the last one returns."""
        self._stopping = False

        async def slot() -> None:
            while not self._stopping:
                await self._send()

        self._tasks = [asyncio.get_running_loop().create_task(slot()) for _ in range(concurrency)]

    async def start_open(self, rate_rps: float, arrival: str, seed: int = 0) -> None:
        """Send on a schedule, independent of responses; latency counts from the intended time."""
        from rayscale.loadgen.schedule import iter_arrivals

        self._stopping = False
        loop = asyncio.get_running_loop()
        outstanding: set[asyncio.Task] = set()

        async def scheduler() -> None:
            start = time.perf_counter() + 0.01
            for offset in iter_arrivals(rate_rps, arrival, seed=seed):
                if self._stopping:
                    return
                intended = start + offset
                delay = intended - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if time.perf_counter() - intended > LATE_THRESHOLD_S:
                    self._late += 1
                if len(outstanding) >= MAX_OUTSTANDING_OPEN_LOOP:
                    self._sent += 1
                    self._failed += 1
                    self._errors["client_overflow"] = self._errors.get("client_overflow", 0) + 1
                    continue
                task = loop.create_task(self._send(intended))
                outstanding.add(task)
                task.add_done_callback(outstanding.discard)

        self._outstanding = outstanding
        self._tasks = [loop.create_task(scheduler())]

    # ---- reporting -----------------------------------------------------------------------------

    def take(self) -> ClientTake:
        """What completed since the last take (latencies in seconds, errors by kind)."""
        cpu, wall = time.process_time(), time.perf_counter()
        out = ClientTake(
            latencies_s=np.asarray(self._lat, dtype=np.float64),
            ok=self._ok,
            failed=self._failed,
            errors=dict(self._errors),
            error_events=list(self._error_events),
            late=self._late,
            sent=self._sent,
            cpu_pct=100.0 * (cpu - self._cpu0) / max(wall - self._wall0, 1e-9),
            cpu_s=cpu - self._cpu0,
        )
        self._cpu0, self._wall0 = cpu, wall
        self._reset_counters()
        return out

    async def stop(self, drain_timeout_s: float = 30.0) -> ClientTake:
        """Stop sending, let in-flight requests finish (up to the timeout), then take the rest."""
        self._stopping = True
        tasks = list(self._tasks) + list(getattr(self, "_outstanding", ()))
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=drain_timeout_s)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        self._tasks = []
        final = self.take()
        final.incomplete = self._inflight + self._incomplete
        self._inflight = 0
        self._incomplete = 0
        return final

    async def close(self) -> None:
        if self.grpc is not None:
            await self.grpc.close()
        if self.session is not None:
            await self.session.close()
            self.session = None


def _failure_kinds() -> tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...]:
    """Foreign errors by type, first match wins (aiohttp's timeouts are also OSErrors)."""
    import aiohttp

    return (
        ((TimeoutError, aiohttp.ServerTimeoutError), "timeout"),
        ((aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError, OSError), "connection"),
        (ErrorReply, "bad_response"),
    )


def _classify(e: Exception) -> str:
    """A failed request's kind in results files: timeout, connection, bad_response or client_<type>."""
    for types, kind in _failure_kinds():
        if isinstance(e, types):
            return kind
    return "client_" + type(e).__name__

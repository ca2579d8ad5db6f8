"""Where request bodies land: a pool of reused buffers, bounded in bytes, that the HTTP server
receives into and gives back once a request is answered or its client is gone, and a batcher
that keeps a request's images until its batch is done with them.

The HTTP server here is the replica's own (``start_http_server``) on loopback, with the
protocol's routes over a real ImageBatcher and NullEngine; no Ray cluster is needed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import numpy as np
import pytest

from rayscale import protocol
from rayscale.config import IMAGE_BYTES, MODEL_NAME
from rayscale.engine import NullEngine, random_images
from rayscale.errors import Overloaded
from rayscale.serve import routes
from rayscale.serve.batcher import ImageBatcher
from rayscale.serve.bodies import ALIGN_BYTES, BodyPool, keep_freed_memory, size_class
from rayscale.serve.http_server import error_response, start_http_server

pytestmark = pytest.mark.timeout(120)

INFER = f"/v2/models/{MODEL_NAME}/infer"


def test_size_classes_leave_room_to_align_and_waste_at_most_a_quarter():
    for n in (1, 1000, IMAGE_BYTES, 32 * IMAGE_BYTES + 200, 256 * IMAGE_BYTES + 300, 10**9):
        c = size_class(n)
        assert c >= n + ALIGN_BYTES - 1 and c <= 1.25 * max(n + ALIGN_BYTES, 64 << 10)
    assert size_class(32 * IMAGE_BYTES + 180) == size_class(32 * IMAGE_BYTES + 250)  # same-sized requests share buffers


def test_a_pool_reuses_buffers_aligns_the_tensor_and_refuses_past_its_limit():
    pool = BodyPool(3 * size_class(IMAGE_BYTES + 100))
    first = pool.acquire(IMAGE_BYTES + 100, aligned_at=100)
    tensor = np.frombuffer(first.view, dtype=np.uint8, offset=100)
    assert len(first.view) == IMAGE_BYTES + 100 and tensor.ctypes.data % ALIGN_BYTES == 0
    memory = first._buffer
    first.release()
    first.release()  # a second release is harmless
    again = pool.acquire(IMAGE_BYTES + 37, aligned_at=37)
    assert again._buffer is memory and np.frombuffer(again.view, np.uint8, offset=37).ctypes.data % ALIGN_BYTES == 0
    others = [pool.acquire(IMAGE_BYTES) for _ in range(2)]
    assert pool.acquire(IMAGE_BYTES) is None  # a fourth body would pass the limit
    assert pool.in_use_bytes == pool.held_bytes == 3 * size_class(IMAGE_BYTES + 100)
    for body in (again, *others):
        body.release()
    assert pool.in_use_bytes == 0
    big = pool.acquire(2 * IMAGE_BYTES)  # free buffers of another size make room for it
    assert big is not None and pool.held_bytes <= pool.limit_bytes
    big.release()
    pool.clear()
    assert pool.held_bytes == 0


def test_malloc_keeps_freed_memory_where_it_is_glibc():
    import platform

    assert keep_freed_memory() == (platform.libc_ver()[0] == "glibc")


# ---- the HTTP server receives into the pool --------------------------------------------------


class _Served:
    """start_http_server on its own loop in a thread, admitting infer requests whose body fits the pool."""

    def __init__(self, pool: BodyPool, engine=None):
        self.pool = pool
        self.max_batch_size = 8
        self.body_limit_bytes = 8 * IMAGE_BYTES + (1 << 20)
        self.admitted_bodies: list = []
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.batcher = None
        self.engine = engine or NullEngine(max_batch_size=8)
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> int:
        self.batcher = ImageBatcher(self.engine.encode_parts, max_batch_size=8, batch_wait_ms=0, batches_in_flight=1)
        _, port = await start_http_server(self._admit, self._handle, lambda head: None, host="127.0.0.1",
                                          body_limit=self.body_limit_bytes)  # fmt: skip
        return port

    # what the routes need of a replica
    def check_token(self, token): pass
    def check_capacity(self): pass

    async def infer_request(self, images, *, started_ns):
        out, _, _ = await self.batcher.submit(images)
        return out

    def _admit(self, head):
        refused = routes.admit(self, head)
        if refused is None and head.content_length:
            head.body = self.pool.acquire(head.content_length)
            if head.body is None:
                return error_response(Overloaded("bodies over the limit"))
            self.admitted_bodies.append(head.body._buffer)
        return refused

    async def _handle(self, head, body):
        return await routes.handle(self, head, body, started_ns=time.perf_counter_ns())

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


def _head(n: int, length: int | None = None, **extra: str) -> tuple[bytes, bytes]:
    body, headers = protocol.build_infer_request(random_images(n, seed=n))
    headers = {**headers, **extra, "Content-Length": str(length if length is not None else len(body))}
    return (f"POST {INFER} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode(), body


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(rest) < int(headers["content-length"]):
        rest += sock.recv(65536)
    return int(lines[0].split()[1]), headers, rest


def _wait_for(predicate, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_bodies_land_in_reused_buffers_and_go_back_when_answered_or_abandoned():
    pool = BodyPool(4 * size_class(2 * IMAGE_BYTES + 200))
    s = _Served(pool)
    with s.connect() as sock:
        for _ in range(3):  # keep-alive: each request's body lands in the same buffer
            head, body = _head(2)
            sock.sendall(head + body)
            status, headers, data = _response(sock)
            assert status == 200 and protocol.parse_infer_response(data, headers.get("inference-header-content-length")).shape == (2, 512)
    assert len(s.admitted_bodies) == 3 and len({id(b) for b in s.admitted_bodies}) == 1
    _wait_for(lambda: pool.in_use_bytes == 0, "an answered request's body went back to the pool")
    with s.connect() as sock:  # a client that leaves halfway through its body
        head, body = _head(2)
        sock.sendall(head + body[: len(body) // 2])
        _wait_for(lambda: pool.in_use_bytes > 0, "the half-sent body holds a buffer")
    _wait_for(lambda: pool.in_use_bytes == 0, "a body whose client left went back to the pool")


def test_past_the_byte_limit_a_request_gets_a_quick_json_503_from_its_head():
    limit = 2 * size_class(8 * IMAGE_BYTES + 200)
    pool = BodyPool(limit)
    s = _Served(pool)
    head, body = _head(8)
    held = [s.connect() for _ in range(2)]
    for sock in held:  # two bodies on their way hold the whole limit
        sock.sendall(head)
    _wait_for(lambda: pool.in_use_bytes == limit, "two admitted bodies hold their buffers")
    with s.connect() as sock:
        started = time.perf_counter()
        sock.sendall(head)  # the head alone: the answer cannot wait for the body
        status, headers, data = _response(sock)
        assert time.perf_counter() - started < 2.0
        assert status == 503 and int(headers["retry-after"]) >= 0 and "over the limit" in json.loads(data)["error"]
    for sock in held:
        sock.sendall(body)
        assert _response(sock)[0] == 200
        sock.close()
    _wait_for(lambda: pool.in_use_bytes == 0, "the bodies went back")


class _GatedEngine(NullEngine):
    def __init__(self) -> None:
        super().__init__(max_batch_size=8)
        self.gate = threading.Event()
        self.running = threading.Event()

    def encode_parts(self, parts):
        self.running.set()
        self.gate.wait(30)
        return super().encode_parts(parts)


def test_a_cancelled_request_keeps_its_images_until_its_batch_is_done():
    engine = _GatedEngine()

    async def scenario() -> None:
        batcher = ImageBatcher(engine.encode_parts, max_batch_size=8, batch_wait_ms=0, batches_in_flight=1)
        task = asyncio.get_running_loop().create_task(batcher.submit(random_images(2)))
        await asyncio.get_running_loop().run_in_executor(None, engine.running.wait, 10)
        task.cancel()  # the client went away while its batch reads its images
        await asyncio.sleep(0.2)
        assert not task.done(), "submit returned while its batch could still read the images"
        engine.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        batcher.close()

    asyncio.run(scenario())

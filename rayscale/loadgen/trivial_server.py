"""A trivial Open Inference Protocol server: answers at once with a ready response, no model.

It measures the load generator itself (how many requests/s one client actor can drive, the
client-ceiling benchmark) and exercises its failure handling: it can stall for a while or
fail a fraction of requests on purpose. It speaks the same protocol as rayscale and Triton for
the one model, so the client code path is exactly the one used against real servers.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from rayscale import protocol
from rayscale.config import EMBED_DIM, IMAGE_BYTES, MODEL_NAME

__all__ = ["TrivialServer"]

_SHAPE = re.compile(rb'"shape"\s*:\s*\[\s*(\d+)')


@dataclass
class _Behaviour:
    stall_until: float = 0.0  # monotonic time until which every request waits
    fail_every: int = 0  # answer HTTP 500 to every Nth request (0: never)
    delay_s: float = 0.0  # fixed service time per request
    count: int = 0
    responses: dict = field(default_factory=dict)
    last_headers: dict = field(default_factory=dict)  # the latest infer request's headers


class TrivialServer:
    """Runs an aiohttp server on its own thread; ``url`` is ready once the constructor returns."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, delay_s: float = 0.0, fail_every: int = 0):
        from aiohttp import web

        self.behaviour = _Behaviour(delay_s=delay_s, fail_every=fail_every)
        self._web = web
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._host, self._port = host, port
        self._thread = threading.Thread(target=self._run, daemon=True, name="trivial-server")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("trivial server did not start")

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    def stall(self, seconds: float) -> None:
        """Every request arriving in the next ``seconds`` waits until they are over."""
        self.behaviour.stall_until = time.monotonic() + seconds

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> TrivialServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- server ----------------------------------------------------------------------------------

    def _response_for(self, n: int, binary: bool) -> tuple[bytes, dict[str, str]]:
        key = (n, binary)
        if key not in self.behaviour.responses:
            self.behaviour.responses[key] = protocol.encode_infer_response(
                MODEL_NAME, np.zeros((n, EMBED_DIM), dtype=np.float32), binary=binary
            )
        return self.behaviour.responses[key]

    async def _infer(self, request):
        web = self._web
        b = self.behaviour
        b.count += 1
        b.last_headers = dict(request.headers)
        body = await request.read()
        hl = request.headers.get(protocol.HEADER_LENGTH)
        # Read the batch size from the JSON header only: the server must stay trivial (a JSON-tensor
        # body is megabytes of numbers; parsing it would measure this server, not the client).
        if hl:
            n = int(json.loads(body[: int(hl)])["inputs"][0]["shape"][0])
        else:
            match = _SHAPE.search(body, 0, 4096)
            n = int(match.group(1)) if match else 1
        binary = hl is not None
        if b.delay_s:
            await asyncio.sleep(b.delay_s)
        wait = b.stall_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if b.fail_every and b.count % b.fail_every == 0:
            return web.Response(status=500, body=protocol.encode_error("deliberate failure"), content_type="application/json")
        data, headers = self._response_for(n, binary)
        return web.Response(body=data, headers=headers)

    def _json_handler(self, obj):
        async def handler(request):
            return self._web.json_response(obj)

        return handler

    def _run(self) -> None:
        web = self._web
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=IMAGE_BYTES * 300 * 5)
        app.router.add_post(f"/v2/models/{MODEL_NAME}/infer", self._infer)
        for path, body in (
            ("/v2", {"name": "trivial", "version": "0", "extensions": []}),
            (f"/v2/models/{MODEL_NAME}", {"name": MODEL_NAME, "versions": ["1"]}),
            ("/v2/health/ready", {"ready": True}),
        ):
            app.router.add_get(path, self._json_handler(body))
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, self._host, self._port)
        self._loop.run_until_complete(site.start())
        self._port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(runner.cleanup())

"""A load that records every request it sends: run inside one node's namespace by the multi-node tests.

    python tests/netns_load.py URL DURATION_S CONCURRENCY OUT.json

Each of CONCURRENCY loops sends one 1-image request at a time to URL's infer route for DURATION_S;
OUT.json gets one record per request: when it started and ended (wall clock), its HTTP status (0
when no answer came: refused, reset, timed out) and the replica that answered.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp

from rayscale import protocol
from rayscale.config import MODEL_NAME
from rayscale.engine import random_images


async def main(url: str, duration_s: float, concurrency: int, out: str) -> None:
    body, headers = protocol.build_infer_request(random_images(1, seed=0))
    infer = f"{url.rstrip('/')}/v2/models/{MODEL_NAME}/infer"
    records: list[dict] = []
    stop_at = time.time() + duration_s
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:

        async def loop() -> None:
            while time.time() < stop_at:
                started = time.time()
                record = {"start": started, "status": 0, "replica": None, "error": None}
                try:
                    async with session.post(infer, data=body, headers=headers) as resp:
                        await resp.read()
                        record.update(status=resp.status, replica=resp.headers.get("X-Rayscale-Replica"))
                except (TimeoutError, aiohttp.ClientError, OSError) as e:
                    record["error"] = type(e).__name__
                    await asyncio.sleep(0.05)  # a refused connection returns at once: do not spin
                record["end"] = time.time()
                records.append(record)

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    with open(out, "w") as f:
        json.dump(records, f)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))

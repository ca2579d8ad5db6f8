"""Batch requests across callers by image count, and keep the GPU busy.

``ImageBatcher.submit(images)`` queues one request (any number of images). A single loop forms
batches of up to ``max_batch_size`` images:

1. it waits for a free execution slot (``batches_in_flight`` of them), so requests keep
   accumulating while the previous batch runs — the next batch forms while the GPU works;
2. then it waits up to ``batch_wait_ms`` after the oldest queued request for the batch to fill;
3. it takes whole requests in arrival order while they fit, and runs the batch on a worker
   thread (onnxruntime releases the GIL), off the event loop.

A request larger than the remaining room starts the next batch; one larger than
``max_batch_size`` is rejected earlier by the protocol layer. ``max_queued_requests`` bounds
the queue: past it ``submit`` raises ``Overloaded`` at once (a quick 503, not a timeout).
A cancelled request (client gone) is dropped from the queue before it costs compute.
``reconfigure`` changes the batch wait, the batches in flight and the queue bound while it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from rayscale.errors import Overloaded

__all__ = ["BatchTiming", "ImageBatcher"]


@dataclass
class BatchTiming:
    """Where one batch's time went (ns), as Triton splits it."""

    images: int
    requests: int
    input_ns: int  # gathering request arrays into the batch buffer
    infer_ns: int  # engine run, including host<->device copies
    output_ns: int  # splitting the output per request


@dataclass
class _Pending:
    images: np.ndarray
    future: asyncio.Future
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)

    @property
    def n(self) -> int:
        return int(self.images.shape[0])


BatchCallback = Callable[[BatchTiming, list[_Pending], int], None]


class ImageBatcher:
    def __init__(
        self,
        run_batch: Callable[[list[np.ndarray]], tuple[list[np.ndarray], int, int]],  # (outputs, input_ns, infer_ns)
        *,
        max_batch_size: int,
        batch_wait_ms: float,
        batches_in_flight: int = 4,
        max_queued_requests: int = -1,
        on_batch: BatchCallback | None = None,
    ):
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.batch_wait_ms = batch_wait_ms
        self.max_queued_requests = max_queued_requests
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._queued_images = 0
        self._wakeup = asyncio.Event()
        self.batches_in_flight = batches_in_flight
        self._slot_freed = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=batches_in_flight, thread_name_prefix="rayscale-infer")
        self._loop_task: asyncio.Task | None = None
        self.running_batches = 0

    @property
    def queued_requests(self) -> int:
        return len(self._queue)

    @property
    def queued_images(self) -> int:
        return self._queued_images

    async def submit(self, images: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Embeddings for one request's images, with its queue time and batch run time in ns."""
        if self.max_queued_requests >= 0 and len(self._queue) >= self.max_queued_requests:
            raise Overloaded(
                f"server overloaded: {len(self._queue)} requests already queued (max_queued_requests="
                f"{self.max_queued_requests}); retry later"
            )
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop())
        pending = _Pending(images, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._queued_images += pending.n
        self._wakeup.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            # The caller went away: if still queued, never run it.
            if not pending.future.done():
                pending.future.cancel()
            raise

    def reconfigure(self, *, batch_wait_ms: float, batches_in_flight: int, max_queued_requests: int) -> None:
        """New settings for the batches formed from now on; batches already running finish as they are."""
        self.batch_wait_ms = batch_wait_ms
        self.max_queued_requests = max_queued_requests
        if batches_in_flight != self.batches_in_flight:
            old, self._executor = (
                self._executor,
                ThreadPoolExecutor(max_workers=batches_in_flight, thread_name_prefix="rayscale-infer"),
            )
            old.shutdown(wait=False)  # its running batches finish on their threads
            self.batches_in_flight = batches_in_flight
            self._slot_freed.set()

    def loop_error(self) -> BaseException | None:
        """The exception that ended the batching loop, if it died (None while it runs)."""
        task = self._loop_task
        if task is not None and task.done() and not task.cancelled():
            return task.exception()
        return None

    def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- the batching loop ---------------------------------------------------------------------

    async def _batch_loop(self) -> None:
        while True:
            await self._wait_for_requests()
            await self._wait_for_slot()
            await self._wait_to_fill()
            batch = self._take_batch()
            if not batch:
                continue
            self.running_batches += 1
            asyncio.get_running_loop().create_task(self._execute(batch))

    async def _wait_for_slot(self) -> None:
        while self.running_batches >= self.batches_in_flight:
            self._slot_freed.clear()
            await self._slot_freed.wait()

    async def _wait_for_requests(self) -> None:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _wait_to_fill(self) -> None:
        if self.batch_wait_ms <= 0:
            return
        while self._queue and self._queued_images < self.max_batch_size:
            deadline_ns = self._queue[0].enqueued_ns + int(self.batch_wait_ms * 1e6)
            remaining = (deadline_ns - time.perf_counter_ns()) / 1e9
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        total = 0
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # cancelled while queued
                self._queue.popleft()
                self._queued_images -= head.n
                continue
            if batch and total + head.n > self.max_batch_size:
                break
            self._queue.popleft()
            self._queued_images -= head.n
            batch.append(head)
            total += head.n
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        started_ns = time.perf_counter_ns()
        try:
            outputs, timing = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run_sync, [p.images for p in batch]
            )
        except Exception as e:  # the engine failed: every request of the batch gets the error
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        finally:
            self.running_batches -= 1
            self._slot_freed.set()
        if len(outputs) != len(batch):  # every request must get an answer, never wait forever for one
            error = RuntimeError(f"the engine returned {len(outputs)} outputs for a batch of {len(batch)} requests")
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(error)
            return
        for p, out in zip(batch, outputs, strict=True):
            if not p.future.done():
                p.future.set_result((out, started_ns - p.enqueued_ns, timing.input_ns + timing.infer_ns + timing.output_ns))
        if self._on_batch is not None:
            self._on_batch(timing, batch, started_ns)

    def _run_sync(self, parts: list[np.ndarray]) -> tuple[list[np.ndarray], BatchTiming]:
        t0 = time.perf_counter_ns()
        outputs, input_ns, infer_ns = self._run_batch(parts)
        t1 = time.perf_counter_ns()
        output_ns = max(0, (t1 - t0) - input_ns - infer_ns)
        n = sum(int(p.shape[0]) for p in parts)
        return outputs, BatchTiming(images=n, requests=len(parts), input_ns=input_ns, infer_ns=infer_ns, output_ns=output_ns)

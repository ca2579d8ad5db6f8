"""Where request bodies land: reusable host buffers, page-locked on a GPU, bounded in bytes per process.

A body of this model's requests is one large uint8 tensor (4.8 MB at 32 images, 38.5 MB at 256).
A fresh buffer per request costs more than receiving into it: the allocator maps new pages, the
buffer is zero-filled (every page faults, and the kernel zeroes it too), and it is unmapped again
when the request ends, all on the event loop's thread. So bodies land in buffers that are kept:

- each buffer is allocated once (uninitialised) and reused by later requests of its size class;
- on a GPU each is page-locked when it is made (``cudaHostRegister``), so a batch copies a
  request's images from it straight to the GPU by DMA, without first gathering them into a
  staging buffer (``rayscale.engine``), and a request that is a whole batch is one DMA;
- a body is placed so that its tensor, after the JSON header, starts on a 4 KiB boundary;
- at most ``limit_bytes`` are held by bodies at once: ``acquire`` answers None past it, and the
  replica answers that request 503 with Retry-After from its head, before reading its body.
  Buffers no request holds count too, and are freed, least recently used first, to make room.

A body must not be released while anything still reads it: the HTTP server releases it once its
request is answered, and the batcher does not let a request go before its batch is done with it.

A gRPC body lands in memory grpcio allocates itself (and copies into a ``bytes``), a few MB at a
time. glibc's malloc hands such blocks back to the kernel when they are freed, so the next request
faults every page in again and the kernel zeroes it: measured on a 2-core machine, that was more
than half of a gRPC request's CPU. ``keep_freed_memory`` has malloc keep them for reuse instead.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from rayscale.cudart import CudaRuntime, page_locked_empty

__all__ = ["ALIGN_BYTES", "Body", "BodyPool", "keep_freed_memory", "size_class"]

log = logging.getLogger(__name__)

ALIGN_BYTES = 4096
_SMALLEST_CLASS = 64 << 10
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit
_KEEP_FREE_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Have this process's malloc (glibc) keep freed memory for reuse instead of returning it to the
    kernel: blocks up to 32 MiB come from its heaps rather than fresh mappings, and up to 1 GiB of
    free heap is kept. The process's memory stays at its high-water mark. Returns whether it applied."""
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_FREE_BYTES) == 1 and ok
    except (OSError, AttributeError):  # not glibc
        ok = False
    if not ok:
        log.info("malloc keeps its own policy for freed memory (mallopt unavailable)")
    return ok


def size_class(nbytes: int) -> int:
    """The capacity of the buffer a body of ``nbytes`` gets: room to align it, rounded up to a quarter-power
    of two (at most 25% more than asked), so that requests of about the same size share buffers."""
    need = max(nbytes + ALIGN_BYTES - 1, _SMALLEST_CLASS)
    power = 1 << (need.bit_length() - 1)
    quarter = power // 4
    return power + quarter * math.ceil((need - power) / quarter)


@dataclass(eq=False)
class _Buffer:
    memory: np.ndarray
    page_locked: bool

    @property
    def capacity(self) -> int:
        return int(self.memory.nbytes)


@dataclass(eq=False)
class Body:
    """One request's body: ``view`` is exactly its bytes, in a pooled buffer until ``release``."""

    view: memoryview
    page_locked: bool
    _buffer: _Buffer
    _pool: "BodyPool"
    _released: bool = field(default=False, repr=False)

    @property
    def nbytes(self) -> int:
        return len(self.view)

    def release(self) -> None:
        """Give the buffer back for the next request; a second call does nothing."""
        if not self._released:
            self._released = True
            self._pool._give_back(self._buffer)


class BodyPool:
    """Reusable body buffers of one process, at most ``limit_bytes`` of them in all (module docstring)."""

    def __init__(self, limit_bytes: int, runtime: CudaRuntime | None = None):
        if limit_bytes < 1:
            raise ValueError(f"limit_bytes must be ≥ 1, got {limit_bytes}")
        self.limit_bytes = limit_bytes
        self._runtime = runtime
        self._lock = threading.Lock()
        self._free: OrderedDict[_Buffer, None] = OrderedDict()  # least recently released first
        self._free_by_class: dict[int, list[_Buffer]] = {}
        self.in_use_bytes = 0  # capacity of the buffers bodies hold now
        self.held_bytes = 0  # capacity of every buffer kept, in use or free

    def acquire(self, nbytes: int, *, aligned_at: int = 0) -> Body | None:
        """A body of ``nbytes`` whose byte ``aligned_at`` sits on a 4 KiB boundary, or None when holding it
        would pass ``limit_bytes`` (refuse the request: try again later)."""
        capacity = size_class(nbytes)
        with self._lock:
            if self.in_use_bytes + capacity > self.limit_bytes:
                return None
            reuse = self._free_by_class.get(capacity)
            buffer = reuse.pop() if reuse else None
            if buffer is not None:
                del self._free[buffer]
            else:
                self._make_room(capacity)
                self.held_bytes += capacity
            self.in_use_bytes += capacity
        if buffer is None:
            try:
                buffer = _Buffer(*page_locked_empty(capacity, self._runtime))
            except BaseException:
                with self._lock:
                    self.held_bytes -= capacity
                    self.in_use_bytes -= capacity
                raise
        start = -(buffer.memory.ctypes.data + aligned_at) % ALIGN_BYTES
        view = memoryview(buffer.memory)[start : start + nbytes]
        return Body(view=view, page_locked=buffer.page_locked, _buffer=buffer, _pool=self)

    def clear(self) -> None:
        """Free every buffer no body holds."""
        with self._lock:
            self._make_room(self.limit_bytes)

    def _make_room(self, capacity: int) -> None:
        while self._free and self.held_bytes + capacity > self.limit_bytes:
            buffer, _ = self._free.popitem(last=False)
            self._free_by_class[buffer.capacity].remove(buffer)
            self.held_bytes -= buffer.capacity

    def _give_back(self, buffer: _Buffer) -> None:
        with self._lock:
            self.in_use_bytes -= buffer.capacity
            self._free[buffer] = None
            self._free_by_class.setdefault(buffer.capacity, []).append(buffer)

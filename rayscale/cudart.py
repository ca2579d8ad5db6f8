"""The few CUDA runtime calls the engine needs for page-locked host staging, through ctypes.

Copying a batch from ordinary (pageable) host memory to the GPU is slow: the driver stages it
through its own pinned buffer at a fraction of the bus speed, and the copy is synchronous.
Registering the engine's staging buffers with ``cudaHostRegister`` lets the copy run as DMA at
bus speed on the calling thread's own non-blocking stream, and a ctypes call releases the GIL
while it waits, so a replica's event loop and its other batch keep running.

The library is the CUDA runtime onnxruntime itself loaded (read from ``/proc/self/maps``), so no
second CUDA installation is involved. Everything here is optional: when the runtime cannot be
found or a call fails, ``CudaRuntime.load`` returns None and the engine keeps its pageable path.
"""

from __future__ import annotations

import ctypes
import logging
import weakref

import numpy as np

__all__ = ["CudaRuntime", "page_locked_zeros"]

log = logging.getLogger(__name__)

_H2D = 1  # cudaMemcpyHostToDevice
_HOST_REGISTER_PORTABLE = 1
_STREAM_NON_BLOCKING = 1
_LIB_NAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so")


def _loaded_cudart() -> str | None:
    """Path of the libcudart this process already mapped (onnxruntime's CUDA provider loads it)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(" ", 1)[-1].strip()
                if "/libcudart.so" in path:
                    return path
    except OSError:
        pass
    return None


class CudaRuntime:
    """ctypes wrappers for cudaHostRegister, non-blocking streams and cudaMemcpyAsync."""

    def __init__(self, lib: ctypes.CDLL, path: str):
        self.path = path
        self._lib = lib
        c = ctypes
        lib.cudaGetErrorString.restype = c.c_char_p
        lib.cudaGetErrorString.argtypes = [c.c_int]
        for name, args in {
            "cudaSetDevice": [c.c_int],
            "cudaHostRegister": [c.c_void_p, c.c_size_t, c.c_uint],
            "cudaHostUnregister": [c.c_void_p],
            "cudaStreamCreateWithFlags": [c.POINTER(c.c_void_p), c.c_uint],
            "cudaMemcpyAsync": [c.c_void_p, c.c_void_p, c.c_size_t, c.c_int, c.c_void_p],
            "cudaStreamSynchronize": [c.c_void_p],
        }.items():
            fn = getattr(lib, name)
            fn.restype = c.c_int
            fn.argtypes = args

    @classmethod
    def load(cls) -> CudaRuntime | None:
        path = _loaded_cudart()
        candidates = [path] if path else list(_LIB_NAMES)
        for name in candidates:
            try:
                return cls(ctypes.CDLL(name), name)
            except (OSError, AttributeError):
                continue
        return None

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            msg = self._lib.cudaGetErrorString(rc)
            raise RuntimeError(f"{what} failed: CUDA error {rc} ({msg.decode() if msg else 'unknown'})")

    def set_device(self, device_id: int) -> None:
        self._check(self._lib.cudaSetDevice(device_id), f"cudaSetDevice({device_id})")

    def register(self, array: np.ndarray) -> None:
        """Page-lock ``array``'s memory until it is garbage-collected."""
        ptr = array.ctypes.data
        self._check(self._lib.cudaHostRegister(ptr, array.nbytes, _HOST_REGISTER_PORTABLE), "cudaHostRegister")
        weakref.finalize(array, self._lib.cudaHostUnregister, ptr)

    def stream(self) -> int:
        handle = ctypes.c_void_p()
        self._check(self._lib.cudaStreamCreateWithFlags(ctypes.byref(handle), _STREAM_NON_BLOCKING), "cudaStreamCreateWithFlags")
        return int(handle.value or 0)

    def copy_async(self, device_ptr: int, host: np.ndarray, nbytes: int, stream: int) -> None:
        """Queue a copy of the first ``nbytes`` of ``host`` to ``device_ptr``; keep ``host`` alive until synchronised."""
        self._check(self._lib.cudaMemcpyAsync(device_ptr, host.ctypes.data, nbytes, _H2D, stream), "cudaMemcpyAsync")

    def synchronize(self, stream: int) -> None:
        self._check(self._lib.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def copy_to_device(self, device_ptr: int, host: np.ndarray, nbytes: int, stream: int) -> None:
        """Copy the first ``nbytes`` of ``host`` to ``device_ptr`` and wait for it (the GIL is released)."""
        self.copy_async(device_ptr, host, nbytes, stream)
        self.synchronize(stream)


def page_locked_zeros(shape: tuple[int, ...], dtype, runtime: CudaRuntime | None) -> tuple[np.ndarray, bool]:
    """A zeroed array, page-locked when ``runtime`` allows (else ordinary); and whether it is."""
    array = np.zeros(shape, dtype=dtype)
    if runtime is None:
        return array, False
    try:
        runtime.register(array)
    except RuntimeError as e:
        log.warning("host staging stays pageable (slower host->GPU copies): %s", e)
        return array, False
    return array, True

"""GPU readings from NVML, and samplers that take them on a thread or on every GPU node of a Ray cluster.

``read_gpus`` returns one dict per GPU (utilisation, memory, power, clock, temperature); on a
machine without an NVIDIA driver it returns an empty list, never an exception. ``GpuSampler``
takes readings on a background thread; ``start_gpu_samplers`` / ``collect_gpu_samples`` run one
per GPU node of a Ray cluster; ``summarize_gpu_samples`` reduces them to ``GpuSummary`` rows.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

from rayscale.metrics.nodes import alive_nodes, pinned_to
from rayscale.results import GpuSummary

__all__ = ["GpuSampler", "GpuSamplers", "collect_gpu_samples", "read_gpus", "start_gpu_samplers", "summarize_gpu_samples"]

log = logging.getLogger(__name__)

_nvml_lock = threading.Lock()
_nvml_ok: bool | None = None  # None: not tried yet; False: no driver or library on this machine


def _nvml():
    """The pynvml module once NVML is initialised, or None (logged once) where there is none."""
    global _nvml_ok
    with _nvml_lock:
        if _nvml_ok is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                _nvml_ok = True
            except Exception as e:  # no library, no driver, no device: a CPU machine
                _nvml_ok = False
                log.info("no NVIDIA GPU metrics on this machine (NVML unavailable: %s)", type(e).__name__)
        if not _nvml_ok:
            return None
        import pynvml

        return pynvml


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _reading(fn, *args, scale: float = 1.0):
    """One NVML field; None where the GPU does not report it (e.g. power on some boards)."""
    try:
        value = fn(*args)
    except Exception:
        return None
    return value * scale if scale != 1.0 else value


def read_gpus() -> list[dict[str, Any]]:
    """One dict per GPU on this machine; ``[]`` without an NVIDIA driver. Never raises.

    Keys: index, uuid, name, util_pct, mem_used_bytes, mem_total_bytes, power_w, sm_clock_mhz,
    temp_c. A field the board does not report is None.
    """
    nv = _nvml()
    if nv is None:
        return []
    try:
        count = nv.nvmlDeviceGetCount()
    except Exception as e:
        log.warning("NVML could not count GPUs: %s", e)
        return []
    gpus = []
    for i in range(count):
        try:
            h = nv.nvmlDeviceGetHandleByIndex(i)
        except Exception:
            continue
        mem = _reading(nv.nvmlDeviceGetMemoryInfo, h)
        util = _reading(nv.nvmlDeviceGetUtilizationRates, h)
        gpus.append(
            {
                "index": i,
                "uuid": _text(_reading(nv.nvmlDeviceGetUUID, h) or ""),
                "name": _text(_reading(nv.nvmlDeviceGetName, h) or ""),
                "util_pct": float(util.gpu) if util is not None else None,
                "mem_used_bytes": int(mem.used) if mem is not None else None,
                "mem_total_bytes": int(mem.total) if mem is not None else None,
                "power_w": _reading(nv.nvmlDeviceGetPowerUsage, h, scale=1e-3),  # milliwatts
                "sm_clock_mhz": _reading(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM),
                "temp_c": _reading(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU),
            }
        )
    return gpus


class GpuSampler:
    """Samples ``read_gpus()`` every ``interval_s`` on a background thread.

    Each sample is a read_gpus() dict plus ``t`` (unix seconds) and ``node`` (hostname)::

        with GpuSampler(0.5) as sampler:
            run_load()
        samples = sampler.samples
    """

    def __init__(self, interval_s: float = 0.5):
        if not interval_s > 0:
            from rayscale.errors import ConfigError

            raise ConfigError(f"GPU sampling interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self.node = socket.gethostname()
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> GpuSampler:
        if self._thread is not None:
            return self
        self.samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rayscale-gpu-sampler", daemon=True)
        self._thread.start()
        return self

    def _sample_once(self) -> None:
        t = time.time()
        for g in read_gpus():
            g["t"] = t
            g["node"] = self.node
            self.samples.append(g)

    def _run(self) -> None:
        while True:
            self._sample_once()
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> list[dict[str, Any]]:
        """Stops sampling and returns every sample taken since start()."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        return list(self.samples)

    def __enter__(self) -> GpuSampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _GpuSamplerActor:
    """A GpuSampler living on one Ray node (see start_gpu_samplers)."""

    def __init__(self, interval_s: float):
        self.sampler = GpuSampler(interval_s)

    def start(self) -> str:
        self.sampler.start()
        return self.sampler.node

    def stop(self) -> list[dict[str, Any]]:
        return self.sampler.stop()


class GpuSamplers:
    """One sampling actor per GPU node, made once and sampling again for each measurement: a
    sweep's points each cost two actor calls, not an actor start (0.5-1 s).

        samplers = GpuSamplers(0.5)
        samplers.start(); run_load(); samples = samplers.collect()   # per point
        samplers.close()                                            # once
    """

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.handles: list[Any] | None = None  # made at the first start()

    def start(self) -> None:
        """Sample from now on (samples of an earlier measurement are dropped)."""
        import ray

        if self.handles is None:
            self.handles = start_gpu_samplers(self.interval_s)
            return
        ray.get([h.start.remote() for h in self.handles])

    def collect(self, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Stop sampling; every sample since start(), ordered by time. The actors stay for the next start()."""
        return collect_gpu_samples(self.handles or [], kill=False, timeout_s=timeout_s)

    def close(self) -> None:
        import ray

        for h in self.handles or []:
            ray.kill(h)
        self.handles = None


def start_gpu_samplers(interval_s: float = 0.5) -> list[Any]:
    """One sampling actor per alive Ray node that has GPUs, already started.

    The actors take no CPU, so they fit next to replicas that use every core. Nodes without a
    ``GPU`` resource get none; on a CPU-only cluster the list is empty.
    """
    import ray

    actor_cls = ray.remote(num_cpus=0)(_GpuSamplerActor)
    handles = [
        actor_cls.options(scheduling_strategy=pinned_to(n["NodeID"])).remote(interval_s)
        for n in alive_nodes()
        if n.get("Resources", {}).get("GPU", 0) > 0
    ]
    ray.get([h.start.remote() for h in handles])
    return handles


def collect_gpu_samples(handles: Iterable[Any], *, kill: bool = True, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Stops the sampling actors and returns all their samples, ordered by time."""
    import ray

    handles = list(handles)
    per_node = ray.get([h.stop.remote() for h in handles], timeout=timeout_s)
    if kill:
        for h in handles:
            ray.kill(h)
    samples = [s for node_samples in per_node for s in node_samples]
    samples.sort(key=lambda s: (s["t"], s.get("node", ""), s["index"]))
    return samples


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize_gpu_samples(samples: Iterable[dict[str, Any]]) -> list[GpuSummary]:
    """One GpuSummary per (node, GPU index): mean/max utilisation, peak memory, mean power."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for s in samples:
        groups.setdefault((s.get("node", ""), int(s["index"])), []).append(s)
    out = []
    for (node, index), group in sorted(groups.items()):
        util = [s["util_pct"] for s in group if s.get("util_pct") is not None]
        power = [s["power_w"] for s in group if s.get("power_w") is not None]
        mem_used = [s["mem_used_bytes"] for s in group if s.get("mem_used_bytes") is not None]
        mem_total = [s["mem_total_bytes"] for s in group if s.get("mem_total_bytes") is not None]
        out.append(
            GpuSummary(
                index=index,
                name=group[-1].get("name", ""),
                node=node,
                util_mean_pct=_mean(util),
                util_max_pct=max(util, default=0.0),
                mem_used_max_bytes=int(max(mem_used, default=0)),
                mem_total_bytes=int(max(mem_total, default=0)),
                power_mean_w=_mean(power),
                samples=len(group),
            )
        )
    return out

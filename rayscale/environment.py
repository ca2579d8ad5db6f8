"""What a results file records about where it was measured: hardware, driver, versions, commit."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["collect_environment", "gpu_inventory", "now_iso", "package_versions"]

_PACKAGES = (
    "rayscale",
    "ray",
    "onnxruntime-gpu",
    "onnxruntime",
    "numpy",
    "torch",
    "open_clip_torch",
    "onnx",
    "tritonclient",
    "nvidia-pytriton",
    "nvidia-ml-py",
    "aiohttp",
)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_inventory() -> dict[str, Any]:
    """GPUs visible through NVML; an empty list (and the reason) where there is no NVIDIA driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:  # no driver, no library: a CPU machine
        return {"driver": None, "gpus": [], "note": f"NVML unavailable: {type(e).__name__}"}
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            gpus.append(
                {
                    "index": i,
                    "name": _str(pynvml.nvmlDeviceGetName(h)),
                    "uuid": _str(pynvml.nvmlDeviceGetUUID(h)),
                    "memory_total_bytes": int(mem.total),
                }
            )
        return {"driver": _str(driver), "gpus": gpus}
    finally:
        pynvml.nvmlShutdown()


def _str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions(packages: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Installed versions of ``packages``; ones not installed are left out."""
    out = {}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _versions() -> dict[str, str]:
    return {"python": platform.python_version()} | package_versions(_PACKAGES)


def collect_environment(command: list[str] | str | None = None) -> dict[str, Any]:
    if command is None:
        command = sys.argv
    cmd = command if isinstance(command, str) else " ".join(command)
    gpus = gpu_inventory()
    return {
        "command": cmd,
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": {"model": _cpu_model(), "logical_cores": os.cpu_count()},
        "memory_bytes": _mem_total(),
        "gpu_driver": gpus.get("driver"),
        "gpus": gpus.get("gpus", []),
        "versions": _versions(),
        "git_commit": _git_commit(),
        "collected_at": now_iso(),
    }


def _mem_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None

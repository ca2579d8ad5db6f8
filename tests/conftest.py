"""Shared fixtures: a real exported model (random weights), free ports, a local Ray cluster."""

from __future__ import annotations

import hashlib
import os

# A test never joins whatever Ray cluster happens to run on the machine by accident (Ray's auto-init
# would, on any actor call made without ray.init): each test starts its own.
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
import shutil
import socket
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _export_fingerprint() -> str:
    src = (ROOT / "rayscale" / "export.py").read_bytes()
    return hashlib.sha256(src).hexdigest()[:16]


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """An fp32 ViT-B/32 export with random weights, cached across runs by the export code's hash."""
    cache = Path(os.environ.get("RAYSCALE_TEST_CACHE", Path.home() / ".cache" / "rayscale-tests"))
    target = cache / f"model-fp32-{_export_fingerprint()}"
    if not (target / "model.json").is_file():
        from rayscale.export import ExportConfig, export_model

        tmp = cache / f".tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_model(ExportConfig(out_dir=str(tmp), precision="fp32"))
        tmp.replace(target) if not target.exists() else shutil.rmtree(tmp)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


# Ray 2.60 gives a new node's raylet a fixed 30 s to register with the GCS, and the GCS a fixed time to
# write its port file; on a 2-core machine that is also starting a Triton server or tearing down the
# last test's cluster either can miss its window.
RAY_STARTUP_TIMEOUTS = ("timed out during startup", "Timed out waiting for file")
RAY_START_ATTEMPTS = 3


def start_local_ray(**kwargs) -> None:
    """Start and join a fresh local Ray cluster, retrying only Ray's own node-startup timeout."""
    import ray

    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            ray.init(address="local", include_dashboard=False, **kwargs)
            return
        except Exception as e:  # Ray raises a bare Exception for this one
            if not any(t in str(e) for t in RAY_STARTUP_TIMEOUTS) or attempt == RAY_START_ATTEMPTS:
                raise
            ray.shutdown()
            warnings.warn(f"local Ray cluster missed its startup window (attempt {attempt}); starting it again", stacklevel=2)


# ViT-B/32 costs over 4.4 GFLOP per image: 10 ms of one core per image would take 440 GFLOP/s, more
# than a CPU core delivers, so a server running the model on the CPU spends more than this per 1000 images.
MIN_CPU_S_PER_1000_IMAGES_ON_CPU = 10.0

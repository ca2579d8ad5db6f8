"""Start, stop and inspect the bundled Triton server serving the Python-backend model.

``triton_up`` writes the model repository into a state dir, launches ``tritonserver`` in its own
process session (so ``triton_down`` can stop it and every backend stub it started), waits until
``GET /v2/models/openclip_vit_b32/ready`` answers 200, and records a state file with the pid,
ports, settings and what runs ("python backend + onnxruntime in the stub, K instances per GPU").
Started with ``model_control="explicit"`` (loopback only), ``triton_reload`` gives the running
server new batching settings by rewriting the model config and reloading the model through
Triton's repository API: the server process stays, only the model's instances start again.
Triton's statistics API (``/v2/models/openclip_vit_b32/stats``) and Prometheus metrics stay on,
so the load generator can read server-side queue and compute times.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rayscale.config import (
    BATCH_WAIT_MS,
    DEFAULT_MODEL_DIR,
    LOCAL_HOST,
    MODEL_NAME,
    check,
    client_host,
    is_loopback,
)
from rayscale.engine_options import EngineOptions
from rayscale.environment import gpu_inventory, now_iso
from rayscale.errors import ConfigError, ServerError
from rayscale.export import load_model_info
from rayscale.results import write_json_atomic
from rayscale.triton.install import TritonInstall, default_cache_dir, ensure_triton
from rayscale.triton.repository import DEFAULT_INSTANCES_PER_GPU, ModelBatching, write_python_backend_repo

__all__ = [
    "STATE_FILE",
    "TritonConfig",
    "TritonServer",
    "TritonStatus",
    "default_state_dir",
    "local_server_pid",
    "triton_down",
    "triton_reload",
    "triton_status",
    "triton_up",
]

log = logging.getLogger(__name__)

STATE_FILE = "triton-state.json"


def default_state_dir() -> Path:
    return default_cache_dir()


@dataclass
class TritonConfig:
    """How the local Triton baseline runs. Batch limits default to rayscale's own (ServeConfig)."""

    gpus: int = 1
    instances_per_gpu: int = DEFAULT_INSTANCES_PER_GPU  # on the CPU: instances in all
    max_batch_size: int = 256  # images, as in ServeConfig
    batch_wait_ms: float = BATCH_WAIT_MS  # as ServeConfig's; the model config's max_queue_delay_microseconds
    preferred_batch_sizes: list[int] = field(default_factory=list)
    http_port: int = 8100
    grpc_port: int = 0  # 0: http_port + 1
    metrics_port: int = 0  # 0: http_port + 2
    host: str = LOCAL_HOST
    model_dir: str = str(DEFAULT_MODEL_DIR)
    repo_dir: str | None = None  # None: <state dir>/triton-repo
    provider: str = "auto"  # auto | cuda | cpu
    # none: the model loads at start and stays | explicit: Triton's repository API may reload it
    # (triton_reload); that API also loads and unloads models, so only on a loopback host
    model_control: str = "none"
    intra_op_threads: int = 0  # 0: onnxruntime's default on CPU, 1 on CUDA
    shm_default_mb: int = 64  # Python-backend shared memory per instance; one full batch is ~38 MiB
    engine: EngineOptions = field(default_factory=EngineOptions)  # as rayscale's engine runs, for a like-for-like baseline
    ready_timeout_s: float = 600.0
    stop_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        check(self.gpus >= 1, f"gpus must be ≥ 1, got {self.gpus} (to serve on the CPU keep gpus 1 and pass provider 'cpu')")
        self.batching()  # its own checks: instances, batch size, batch wait, preferred sizes
        self.engine = EngineOptions.from_value(self.engine)
        check(
            self.engine.backend == "onnxruntime",
            f"Triton's model runs onnxruntime: backend={self.engine.backend} is rayscale's alone",
        )
        check(self.provider in ("auto", "cuda", "cpu"), f"provider must be auto, cuda or cpu, got {self.provider!r}")
        check(self.model_control in ("none", "explicit"), f"model_control must be none or explicit, got {self.model_control!r}")
        check(
            self.model_control == "none" or is_loopback(self.host),
            f"model_control 'explicit' opens Triton's repository API (load and unload models): keep host on loopback, "
            f"not {self.host}",
        )
        check(
            1 <= self.http_port <= 65533,
            f"http_port must be in 1..65533 (gRPC and metrics use the next two), got {self.http_port}",
        )
        for name in ("grpc_port", "metrics_port"):
            value = getattr(self, name)
            check(0 <= value <= 65535, f"{name} must be in 0..65535 (0: derived from http_port), got {value}")
        check(self.intra_op_threads >= 0, f"intra_op_threads must be ≥ 0, got {self.intra_op_threads}")
        check(1 <= self.shm_default_mb <= 4096, f"shm_default_mb must be in 1..4096, got {self.shm_default_mb}")
        check(self.ready_timeout_s > 0, f"ready_timeout_s must be > 0, got {self.ready_timeout_s}")
        if not self.grpc_port:
            self.grpc_port = self.http_port + 1
        if not self.metrics_port:
            self.metrics_port = self.http_port + 2
        ports = [self.http_port, self.grpc_port, self.metrics_port]
        check(len(set(ports)) == 3, f"http, grpc and metrics ports must differ, got {ports}")

    def batching(self) -> ModelBatching:
        return ModelBatching(self.instances_per_gpu, self.max_batch_size, self.batch_wait_ms, tuple(self.preferred_batch_sizes))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TritonServer:
    """A running server as the state file records it."""

    pid: int
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    provider: str  # resolved: cuda | cpu
    gpus: int
    instances: int  # model instances in all
    description: str  # which Triton path runs, for results files
    triton_version: str
    repo_dir: str
    log_path: str
    state_dir: str
    command: list[str]
    config: dict[str, Any]
    install: dict[str, Any]
    started_at: str
    startup_s: float

    @property
    def client_host(self) -> str:
        return client_host(self.host)

    @property
    def url(self) -> str:
        """Base URL of the KServe v2 HTTP endpoint."""
        return f"http://{self.client_host}:{self.http_port}"

    @property
    def http_address(self) -> str:
        """host:port, the form tritonclient.http.InferenceServerClient takes."""
        return f"{self.client_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.client_host}:{self.metrics_port}/metrics"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TritonStatus:
    running: bool  # the recorded process is alive
    ready: bool  # the model answers ready
    server: TritonServer | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "ready": self.ready,
            "message": self.message,
            "server": self.server.to_dict() if self.server else None,
        }


# ---- processes -----------------------------------------------------------------------------------

_children: dict[int, subprocess.Popen] = {}  # servers this process started, reaped on stop


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, session id) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[3])


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        return False
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _is_tritonserver(pid: int) -> bool:
    """Guards against a recycled pid: the recorded process must still be a tritonserver."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return False
    return Path(argv0).name == "tritonserver"


def _flag_values(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """Values of ``--flag value`` and ``--flag=value`` in a command line."""
    values = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in flags:
            values.append(value if eq else (argv[i + 1] if i + 1 < len(argv) else ""))
    return values


def local_server_pid(port: int) -> int | None:
    """The pid of a tritonserver on this machine serving HTTP or gRPC on ``port`` (as ``triton_up``
    starts it, with its ports on the command line); None when none does."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not _is_tritonserver(int(entry)):
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if str(port) in _flag_values(argv, ("--http-port", "--grpc-port")) and _alive(int(entry)):
            return int(entry)
    return None


def _session_members(sid: int) -> list[int]:
    """Live processes in session ``sid`` (the server and the backend stubs it started)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat and stat[1] == sid and stat[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


def _stop_session(pid: int, timeout_s: float) -> None:
    """SIGTERM the server's process group, wait, SIGKILL what is left; reap our own child."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            child = _children.get(pid)
            if child is not None:
                child.poll()
            if not _session_members(pid):
                break
            time.sleep(0.1)
        if not _session_members(pid):
            break
    child = _children.pop(pid, None)
    if child is not None:
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    left = _session_members(pid)
    if left:
        raise ServerError(f"Triton processes {left} survived SIGKILL: stop them by pid (kill -9 {' '.join(map(str, left))})")


# ---- HTTP ----------------------------------------------------------------------------------------


def _get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def _model_ready(base_url: str) -> bool:
    return _get(f"{base_url}/v2/models/{MODEL_NAME}/ready")[0] == 200


def _triton_version(base_url: str) -> str:
    import json

    status, body = _get(f"{base_url}/v2")
    try:
        return str(json.loads(body).get("version", "unknown")) if status == 200 else "unknown"
    except ValueError:
        return "unknown"


# ---- checks --------------------------------------------------------------------------------------


def _visible_gpus() -> int:
    count = len(gpu_inventory().get("gpus", []))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [v for v in visible.split(",") if v.strip()]
        if not entries or entries[0].strip().startswith("-"):
            return 0
        count = min(count, len(entries))
    return count


def _resolve_provider(config: TritonConfig) -> str:
    if config.provider == "cpu":
        return "cpu"
    visible = _visible_gpus()
    if visible == 0:
        if config.provider == "cuda":
            raise ConfigError(
                "provider 'cuda' was asked for but no NVIDIA GPU is visible: check the driver, or pass --provider cpu"
            )
        log.warning("no NVIDIA GPU visible: Triton serves on the CPU (KIND_CPU instances)")
        return "cpu"
    check(config.gpus <= visible, f"gpus ({config.gpus}) must be ≤ the GPUs visible here ({visible})")
    return "cuda"


def _check_ports(config: TritonConfig) -> None:
    bind_host = config.host if config.host not in ("localhost",) else LOCAL_HOST
    for name, port in (("http", config.http_port), ("grpc", config.grpc_port), ("metrics", config.metrics_port)):
        family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((bind_host, port))
            except OSError as e:
                raise ServerError(
                    f"{name} port {port} on {config.host} is not free ({e.strerror}): pass another --port "
                    "(Triton uses port, port+1 and port+2)"
                ) from None


def _check_shm(instances: int, shm_default_mb: int) -> None:
    try:
        free_mb = shutil.disk_usage("/dev/shm").free // (1 << 20)
    except OSError:
        return
    need_mb = instances * shm_default_mb
    if need_mb > free_mb:
        raise ConfigError(
            f"/dev/shm has {free_mb} MiB free but {instances} Python-backend instances need {need_mb} MiB "
            f"({shm_default_mb} MiB each): enlarge /dev/shm (docker run --shm-size=4g), or lower "
            "--instances-per-gpu or shm_default_mb"
        )


def _log_tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [ln for ln in text if ln.startswith("E") and "]" in ln]
    if errors:  # Triton's own error lines say why a model failed to load
        return "\n".join(errors[-lines:])
    keep = [ln for ln in text if ln.strip() and not ln.startswith(("+-", "| "))]
    return "\n".join(keep[-lines:]) or "(empty log)"


# ---- state ---------------------------------------------------------------------------------------


def _state_path(state_dir: str | os.PathLike | None) -> Path:
    return Path(state_dir or default_state_dir()) / STATE_FILE


def _read_state(state_dir: str | os.PathLike | None) -> TritonServer | None:
    import json

    path = _state_path(state_dir)
    if not path.is_file():
        return None
    try:
        return TritonServer(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        raise ServerError(f"{path} is not a rayscale Triton state file: delete it and run `rayscale triton up` again") from None


# ---- public --------------------------------------------------------------------------------------


def triton_up(
    config: TritonConfig,
    *,
    state_dir: str | os.PathLike | None = None,
    install: TritonInstall | None = None,
) -> TritonServer:
    """Write the Python-backend repository, start tritonserver, wait until the model is ready."""
    state_root = Path(state_dir or default_state_dir())
    existing = _read_state(state_root)
    if existing is not None and _alive(existing.pid) and _is_tritonserver(existing.pid):
        raise ServerError(f"Triton is already running (pid {existing.pid}, {existing.url}): run `rayscale triton down` first")
    load_model_info(config.model_dir)
    provider = _resolve_provider(config)
    if not is_loopback(config.host):
        log.warning("Triton binds %s: it accepts requests from other hosts, without authentication", config.host)
    instances = config.instances_per_gpu * (config.gpus if provider == "cuda" else 1)
    _check_shm(instances, config.shm_default_mb)
    _check_ports(config)
    install = install or ensure_triton()
    if provider == "cuda":
        install.check_cuda()

    state_root.mkdir(parents=True, exist_ok=True)
    repo = Path(config.repo_dir) if config.repo_dir else state_root / "triton-repo"
    write_python_backend_repo(
        config.model_dir,
        repo,
        config.batching(),
        gpus=config.gpus,
        provider=provider,
        intra_op_threads=config.intra_op_threads,
        engine_options=config.engine,
    )
    shm_bytes = config.shm_default_mb << 20
    command = [
        install.tritonserver_bin,
        "--model-repository", str(repo.resolve()),
        "--backend-directory", install.backends_dir,
        "--http-address", config.host, "--http-port", str(config.http_port),
        "--grpc-address", config.host, "--grpc-port", str(config.grpc_port),
        "--metrics-address", config.host, "--metrics-port", str(config.metrics_port),
        "--allow-metrics", "true",
        "--allow-gpu-metrics", "true" if provider == "cuda" else "false",
        "--model-control-mode", config.model_control,
        *(["--load-model", MODEL_NAME] if config.model_control == "explicit" else []),
        "--strict-readiness", "true",
        "--exit-timeout-secs", str(max(1, int(config.stop_timeout_s) - 5)),
        "--log-verbose", "0",
        "--backend-config", f"python,shm-default-byte-size={shm_bytes}",
        "--backend-config", f"python,shm-growth-byte-size={shm_bytes}",
        # Distinct shared-memory names, so two servers on one host never share a region.
        "--backend-config", f"python,shm-region-prefix-name=rayscale_{config.http_port}_",
    ]  # fmt: skip
    log_path = state_root / "triton.log"
    t0 = time.perf_counter()
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=install.env(), start_new_session=True, cwd=state_root,
        )  # fmt: skip
    _children[proc.pid] = proc
    base_url = f"http://{client_host(config.host)}:{config.http_port}"
    deadline = time.monotonic() + config.ready_timeout_s
    while not _model_ready(base_url):
        if proc.poll() is not None:
            _stop_session(proc.pid, 5)
            raise ServerError(
                f"Triton exited during startup (status {proc.returncode}); full log: {log_path}\n{_log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            _stop_session(proc.pid, 10)
            raise ServerError(
                f"Triton's model was not ready after {config.ready_timeout_s:.0f} s (raise ready_timeout_s on slow "
                f"hosts); full log: {log_path}\n{_log_tail(log_path)}"
            )
        time.sleep(0.25)
    server = TritonServer(
        pid=proc.pid,
        host=config.host,
        http_port=config.http_port,
        grpc_port=config.grpc_port,
        metrics_port=config.metrics_port,
        provider=provider,
        gpus=config.gpus if provider == "cuda" else 0,
        instances=instances,
        description=_description(config, provider),
        triton_version=_triton_version(base_url),
        repo_dir=str(repo.resolve()),
        log_path=str(log_path.resolve()),
        state_dir=str(state_root.resolve()),
        command=command,
        config=config.to_dict(),
        install=install.to_dict(),
        started_at=now_iso(),
        startup_s=round(time.perf_counter() - t0, 2),
    )
    write_json_atomic(_state_path(state_root), server.to_dict())
    return server


def _description(config: TritonConfig, provider: str) -> str:
    per = "per GPU" if provider == "cuda" else "on the CPU"
    where = f" on {config.gpus} GPU{'s' if config.gpus > 1 else ''}" if provider == "cuda" else ""
    return (
        f"python backend + onnxruntime in the stub, {config.instances_per_gpu} "
        f"instance{'s' if config.instances_per_gpu > 1 else ''} {per}{where}"
    )


def _post(url: str, body: dict[str, Any], timeout_s: float) -> tuple[int, bytes]:
    import json

    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        return 0, str(getattr(e, "reason", e)).encode()


def _loaded_batching(base_url: str) -> dict[str, Any] | None:
    """What the loaded model batches with, as Triton reports its config."""
    import json

    status, body = _get(f"{base_url}/v2/models/{MODEL_NAME}/config")
    if status != 200:
        return None
    config = json.loads(body)
    batching = config.get("dynamic_batching") or {}
    return {
        "instances": sum(int(g.get("count", 1)) for g in config.get("instance_group") or []),
        "max_batch_size": int(config.get("max_batch_size", 0)),
        "queue_delay_us": int(batching.get("max_queue_delay_microseconds", 0)),
        "preferred_batch_sizes": sorted(int(s) for s in batching.get("preferred_batch_size") or []),
    }


def triton_reload(
    batching: ModelBatching, *, state_dir: str | os.PathLike | None = None, timeout_s: float = 600.0
) -> TritonServer:
    """Give the running server (started with ``model_control="explicit"``) new batching settings by
    reloading its model; returns the server as the state file now records it.

    Triton keeps serving the old instances until the new ones are ready, then swaps. A reload that
    fails, or a model that reports other settings afterwards, is a ServerError.
    """
    from dataclasses import replace

    from rayscale.config import queue_delay_us

    server = _read_state(state_dir)
    if server is None or not (_alive(server.pid) and _is_tritonserver(server.pid)):
        raise ServerError("no running Triton server to reload: run `rayscale triton up` first")
    config = TritonConfig(**server.config)
    if config.model_control != "explicit":
        raise ConfigError("this Triton server was started without explicit model control: restart it to change its batching")
    config = replace(
        config,
        instances_per_gpu=batching.instances_per_gpu,
        max_batch_size=batching.max_batch_size,
        batch_wait_ms=batching.batch_wait_ms,
        preferred_batch_sizes=list(batching.preferred_batch_sizes),
    )
    instances = config.instances_per_gpu * (config.gpus if server.provider == "cuda" else 1)
    _check_shm(instances, config.shm_default_mb)
    write_python_backend_repo(
        config.model_dir,
        server.repo_dir,
        config.batching(),
        gpus=config.gpus,
        provider=server.provider,
        intra_op_threads=config.intra_op_threads,
    )
    t0 = time.perf_counter()
    status, body = _post(f"{server.url}/v2/repository/models/{MODEL_NAME}/load", {}, timeout_s)
    if status != 200:
        raise ServerError(
            f"Triton could not reload the model with {batching}: HTTP {status} "
            f"{body.decode(errors='replace')[:300]}; full log: {server.log_path}"
        )
    expected = {
        "instances": instances,
        "max_batch_size": config.max_batch_size,
        "queue_delay_us": queue_delay_us(config.batch_wait_ms),
        # Triton prefers max_batch_size where the config names no size
        "preferred_batch_sizes": sorted(config.preferred_batch_sizes) or [config.max_batch_size],
    }
    loaded = _loaded_batching(server.url)
    if loaded != expected or not _model_ready(server.url):
        raise ServerError(f"Triton reloaded the model but serves {loaded}, not {expected}: full log: {server.log_path}")
    server = replace(
        server,
        instances=instances,
        description=_description(config, server.provider),
        config=config.to_dict(),
        startup_s=round(time.perf_counter() - t0, 2),
    )
    write_json_atomic(_state_path(server.state_dir), server.to_dict())
    return server


def triton_down(*, state_dir: str | os.PathLike | None = None, timeout_s: float | None = None) -> TritonServer | None:
    """Stop the recorded server and every process it started; returns what was stopped (None: nothing ran)."""
    server = _read_state(state_dir)
    if server is None:
        return None
    if _alive(server.pid) and _is_tritonserver(server.pid):
        wait_s = timeout_s if timeout_s is not None else float(server.config.get("stop_timeout_s", 30.0))
        _stop_session(server.pid, wait_s)
    elif _session_members(server.pid):  # stubs outlived their server
        _stop_session(server.pid, 5)
    _state_path(state_dir).unlink(missing_ok=True)
    return server


def triton_status(*, state_dir: str | os.PathLike | None = None) -> TritonStatus:
    """Whether the recorded server runs and its model answers ready."""
    server = _read_state(state_dir)
    if server is None:
        return TritonStatus(False, False, None, "no Triton server recorded: run `rayscale triton up`")
    if not (_alive(server.pid) and _is_tritonserver(server.pid)):
        return TritonStatus(False, False, server, f"Triton (pid {server.pid}) is not running: run `rayscale triton up`")
    ready = _model_ready(server.url)
    message = f"{server.description} at {server.url}" + ("" if ready else " (model not ready)")
    return TritonStatus(True, ready, server, message)

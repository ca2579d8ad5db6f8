"""`rayscale up / down / status`: start or join a Ray cluster, deploy the app, tear it down.

A cluster that ``up`` starts itself is local-only: its head binds 127.0.0.1 and the dashboard
(with Ray's job API) listens on 127.0.0.1. A state file records what ``up`` started so that
``down`` stops exactly that and nothing else.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rayscale.config import LOCAL_HOST, MODEL_NAME, ServeConfig, client_host, is_loopback
from rayscale.errors import ConfigError, ModelNotFoundError, ServerError
from rayscale.files import write_text_atomic
from rayscale.serve import registry
from rayscale.serve.ingress import IngressState
from rayscale.serve.registry import IngressRecord, ReplicaRecord

__all__ = [
    "ClusterRecord",
    "DownResult",
    "StatusResult",
    "UpResult",
    "connect",
    "down",
    "read_state",
    "status",
    "up",
    "wait_for_replicas",
]

log = logging.getLogger(__name__)


def state_dir() -> Path:
    return Path(os.environ.get("RAYSCALE_STATE_DIR", Path.home() / ".cache" / "rayscale"))


def _state_file() -> Path:
    return state_dir() / "cluster.json"


@dataclass
class ClusterRecord:
    """What `rayscale up` records of the local cluster it started (cluster.json in the state dir)."""

    address: str
    session_dir: str | None = None
    started_by_rayscale: bool = True
    started_at: float = 0.0


def read_state() -> ClusterRecord | None:
    """The cluster `rayscale up` started, or None when it recorded none (or the record is unreadable)."""
    try:
        data = json.loads(_state_file().read_text())
        return ClusterRecord(**{k: data[k] for k in ("address", "session_dir", "started_by_rayscale", "started_at") if k in data})
    except (OSError, json.JSONDecodeError, TypeError, KeyError):
        return None


def _write_state(record: ClusterRecord) -> None:
    write_text_atomic(_state_file(), json.dumps(asdict(record), indent=2))


@dataclass
class DownResult:
    app_deleted: bool = False
    cluster_stopped: bool = False


@dataclass
class UpResult:
    app_name: str
    url: str
    replicas: int
    gpus_per_replica: float
    model_dir: str
    model_sha256: str
    precision: str
    ray_address: str
    started_cluster: bool
    replica_info: list[ReplicaRecord] = field(default_factory=list)
    exporters: int = 0
    warnings: list[str] = field(default_factory=list)
    ingress: str = "direct"
    processes_per_replica: int = 1
    grpc_target: str | None = None  # host:port of the gRPC endpoint, when served
    ingresses: list[IngressRecord] = field(default_factory=list)  # ingress "direct": one per serving node

    def endpoints(self) -> dict[str, str]:
        base = self.url.rstrip("/")
        return {
            "infer": f"{base}/v2/models/{MODEL_NAME}/infer",
            "metadata": f"{base}/v2/models/{MODEL_NAME}",
            "ready": f"{base}/v2/health/ready",
            "stats": f"{base}/v2/models/{MODEL_NAME}/stats",
        }


@dataclass
class StatusResult:
    running: bool
    app_name: str
    app_status: str = "NOT_STARTED"
    message: str = ""
    replicas: list[ReplicaRecord] = field(default_factory=list)
    replica_states: dict[str, int] = field(default_factory=dict)
    ray_address: str | None = None
    model: dict[str, Any] | None = None
    ingress: str | None = None
    url: str | None = None  # the HTTP endpoint clients use
    grpc_target: str | None = None  # host:port of the gRPC endpoint, when served
    processes_per_replica: int | None = None
    ingresses: list[IngressState] = field(default_factory=list)  # ingress "direct": each node's

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Ray keeps every one of a node's servers on loopback (GCS, raylet, object manager, workers, the
# dashboard agent, the runtime-env agent and the Prometheus endpoints of the metrics agent, the
# dashboard and the autoscaler) only when its node IP stays 127.0.0.1. On Linux `ray start` turns
# --node-ip-address=127.0.0.1 into the machine's address, and those servers then bind it or every
# interface; this switch, the one Ray itself uses on single-machine platforms, keeps 127.0.0.1.
_LOOPBACK_NODE_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@contextmanager
def _loopback_node_ip() -> Iterator[None]:
    """Let this process join a loopback-only cluster: Ray would otherwise resolve 127.0.0.1 to the
    machine's address (which that cluster does not listen on). Ray reads the switch once at import,
    so its constant is set too; both are restored afterwards, once the driver knows its node."""
    from ray._private import ray_constants

    saved_env = {k: os.environ.get(k) for k in _LOOPBACK_NODE_ENV}
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(_LOOPBACK_NODE_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _free_loopback_ports(count: int) -> list[int]:
    """Distinct ports free on 127.0.0.1 now (other Ray clusters may run on this machine)."""
    import socket

    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((LOCAL_HOST, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


# Ray's own words when its raylet misses the fixed window it is given to register (a busy machine).
_RAY_STARTUP_TIMEOUT = "timed out during startup"
_START_ATTEMPTS = 2


def _start_local_cluster(num_gpus: int | None, num_cpus: int | None) -> str:
    """Start a one-machine Ray cluster whose every server listens on 127.0.0.1 alone.

    Ray's gRPC servers refuse callers without the cluster token, but its Prometheus endpoints and
    agents speak plain HTTP: on loopback, only this machine reaches them. A start that fails leaves
    none of its processes behind; one that missed Ray's startup window is tried once more.
    """
    ray_bin = shutil.which("ray")
    if ray_bin is None:
        raise ServerError("the `ray` command is not on PATH: install rayscale's dependencies (pip install rayscale)")
    from rayscale.processes import stop_processes
    from rayscale.serve.proxy import proxy_env_vars

    # Serve's proxy answers its own errors in the protocol's JSON form; every process of the
    # cluster inherits the loopback switch from here.
    env = dict(os.environ, **proxy_env_vars(), **_LOOPBACK_NODE_ENV)
    output = ""
    for attempt in range(1, _START_ATTEMPTS + 1):
        gcs_port, metrics_export_port, agent_http_port, agent_grpc_port, runtime_env_port = _free_loopback_ports(5)
        cmd = [
            ray_bin,
            "start",
            "--head",
            f"--port={gcs_port}",
            f"--node-ip-address={LOCAL_HOST}",
            f"--dashboard-host={LOCAL_HOST}",
            # Agent ports chosen here: the raylet then does not wait for the agents to report theirs,
            # a wait of 15 s that a busy machine overruns (the raylet aborts), and two clusters on one
            # machine never contend for Ray's fixed defaults.
            f"--metrics-export-port={metrics_export_port}",
            f"--dashboard-agent-listen-port={agent_http_port}",
            f"--dashboard-agent-grpc-port={agent_grpc_port}",
            f"--runtime-env-agent-port={runtime_env_port}",
            "--disable-usage-stats",
        ]
        if num_gpus is not None:
            cmd.append(f"--num-gpus={num_gpus}")
        if num_cpus is not None:
            cmd.append(f"--num-cpus={num_cpus}")
        temp_dir = os.environ.get("RAYSCALE_RAY_TEMP_DIR")
        if temp_dir:
            cmd.append(f"--temp-dir={temp_dir}")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
        if proc.returncode == 0:
            return f"{LOCAL_HOST}:{gcs_port}"
        # What the failed start left running (its GCS, dashboard, agents) would load the machine further.
        marks = (f"{LOCAL_HOST}:{gcs_port}", f"--gcs_server_port={gcs_port}")
        stop_processes(functools.partial(_pids_naming, marks), term_grace_s=5.0, kill_grace_s=5.0)
        output = (proc.stderr or "") + (proc.stdout or "")
        if attempt == _START_ATTEMPTS or _RAY_STARTUP_TIMEOUT not in output:
            break
        log.warning("the local Ray cluster missed Ray's startup window (a busy machine): starting it again")
    tail = output.strip().splitlines()[-5:]
    raise ServerError("could not start a local Ray cluster: " + " | ".join(tail))


def _pids_naming(marks: tuple[str, ...]) -> list[int]:
    return sorted({pid for mark in marks for pid in _cluster_pids(mark)})


def _gcs_reachable(address: str, timeout_s: float = 2.0) -> bool:
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or LOCAL_HOST, int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def _use_token_auth() -> None:
    """Clusters rayscale starts keep Ray's token authentication on (driver and cluster alike)."""
    if "RAY_AUTH_MODE" in os.environ:  # the user's explicit choice wins
        return
    from ray._private.authentication import authentication_token_setup as auth

    if not auth._get_default_token_path().is_file():
        auth.generate_and_save_token()
    auth._enable_token_auth()  # sets RAY_AUTH_MODE=token for this process and re-reads Ray's config


def _session_dir() -> str | None:
    try:
        import ray

        return ray._private.worker.global_worker.node.get_session_dir_path()
    except Exception:
        return None


def _cluster_pids(session_dir: str) -> list[int]:
    """Processes of one local cluster: those naming its session directory, and their descendants."""
    parents: dict[int, int] = {}
    matched: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        pid = int(proc.name)
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parents[pid] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if session_dir in cmdline:
            matched.add(pid)
    grew = True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in matched and pid not in matched}
        grew = bool(children)
        matched |= children
    matched.discard(os.getpid())
    return sorted(matched)


def _stop_local_cluster(record: ClusterRecord) -> None:
    """Stop the processes of the cluster ``up`` started, and only those (others may share the host)."""
    from rayscale.processes import stop_processes

    session_dir = record.session_dir
    if session_dir:
        stop_processes(lambda: _cluster_pids(session_dir), term_grace_s=15.0, kill_grace_s=15.0)


def connect(
    address: str | None = None, *, start: bool = False, num_gpus: int | None = None, num_cpus: int | None = None
) -> tuple[str, bool]:
    """Connect this process to Ray. Returns (address, whether a cluster was started here)."""
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address, False
    started = False
    own_local_cluster = False  # the loopback-only cluster `up` started (see _start_local_cluster)
    record = read_state()
    if address is None and record is not None:
        if _gcs_reachable(record.address):
            address = record.address
            own_local_cluster = record.started_by_rayscale
            _use_token_auth()
        else:  # the cluster `up` started is gone (reboot, `ray stop`): forget it
            _state_file().unlink(missing_ok=True)
    if address is None and start:
        _use_token_auth()
        address = _start_local_cluster(num_gpus, num_cpus)
        started = own_local_cluster = True
    if address is None:
        address = os.environ.get("RAY_ADDRESS")
    if address is None:
        # Never guess ("auto" can pick another user's cluster, or hang on a dead one).
        raise ServerError("no Ray cluster started by rayscale is running: run `rayscale up`, or pass --address")
    try:
        with _loopback_node_ip() if own_local_cluster else nullcontext():
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, namespace="rayscale")
    except ConnectionError:
        raise ServerError(
            f"no Ray cluster at {address}: run `rayscale up` first, or pass --address of a running cluster"
        ) from None
    gcs = ray.get_runtime_context().gcs_address
    if started:
        _write_state(ClusterRecord(address=address, session_dir=_session_dir(), started_at=time.time()))
    return gcs, started


def _ensure_model(cfg: ServeConfig, *, gpu_present: bool) -> Any:
    from rayscale.export import ExportConfig, export_model, load_model_info

    try:
        return load_model_info(cfg.model_dir)
    except ModelNotFoundError as missing:
        try:
            import open_clip  # noqa: F401
            import torch  # noqa: F401
        except ImportError:
            raise missing from None
        precision = "fp16" if gpu_present else "fp32"
        log.warning("no model at %s: exporting ViT-B/32 (%s) first", cfg.model_dir, precision)
        return export_model(ExportConfig(out_dir=cfg.model_dir, precision=precision))


def _fit_cluster(cfg: ServeConfig) -> ServeConfig:
    """``cfg`` with its layout decided for this cluster, or a ConfigError naming what is short (unless
    the app already runs: its processes hold resources its redeployment will free)."""
    import ray
    from ray import serve

    from rayscale.serve.placement import cluster_nodes, fit_layout, shortfall

    cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    need = cfg.replicas * cfg.gpus_per_replica
    if need > cluster_gpus + 1e-9:
        raise ConfigError(
            f"{cfg.replicas} replicas × {cfg.gpus_per_replica:g} GPU need {need:g} GPUs but the cluster has "
            f"{cluster_gpus:g}: use fewer --replicas, or --gpus-per-replica 0 to run on CPU"
        )
    cfg = fit_layout(cfg, cluster_nodes(free=False))
    if cfg.app_name in serve.status().applications:
        return cfg
    short = shortfall(cfg, cluster_nodes(free=True), cfg.serve_replicas)
    if short is not None:
        raise ConfigError(short)
    return cfg


# How long replica processes may wait for Ray to place them before `up` says what is short.
PLACEMENT_TIMEOUT_S = 45.0


def wait_for_replicas(
    app_name: str, replicas: int, timeout_s: float = 600.0, *, routed: bool = False, exact: bool = False
) -> list[ReplicaRecord]:
    """Block until the app is RUNNING with ``replicas`` running replica processes that registered
    (and, with ``routed``, until every node's ingress routes to that many healthy ones; with
    ``exact``, no more than that: processes of a scale-down have left). Processes that Ray cannot
    place are an error within ``PLACEMENT_TIMEOUT_S``, naming what each node lacks."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    last = ""
    progress = (-1, time.monotonic())  # (processes running, since when)
    while time.monotonic() < deadline:
        st = serve.status().applications.get(app_name)
        if st is not None:
            last = f"{st.status}: {st.message}"
            if str(st.status).endswith("DEPLOY_FAILED"):
                raise ServerError(f"deployment of {app_name} failed: {st.message}")
            deps = list(st.deployments.values())
            running = sum(d.replica_states.get("RUNNING", 0) for d in deps)
            if running != progress[0]:
                progress = (running, time.monotonic())
            elif running < replicas and time.monotonic() - progress[1] > PLACEMENT_TIMEOUT_S:
                _raise_if_unplaceable(app_name, replicas - running)
            if str(st.status).endswith("RUNNING") and running == replicas:
                records = registry.replica_records(app_name, live_only=True)
                enough = len(records) == replicas if exact else len(records) >= replicas
                if enough and (not routed or _routed(app_name, records, exact=exact)):
                    return records
        time.sleep(0.25)
    raise ServerError(f"app {app_name} did not reach {replicas} running replicas in {timeout_s:.0f} s (last: {last})")


def _raise_if_unplaceable(app_name: str, pending: int) -> None:
    from rayscale.serve.placement import cluster_nodes, shortfall

    records = registry.replica_records(app_name)
    if not records:
        return
    cfg = ServeConfig(**{k: v for k, v in records[0].config.items() if k in ServeConfig.__dataclass_fields__})
    short = shortfall(cfg, cluster_nodes(free=True), pending)
    if short is not None:
        raise ServerError(short)


def _routed(app_name: str, records: list[ReplicaRecord], *, exact: bool) -> bool:
    """Every node that hosts replicas has its ingress, and every ingress routes to each replica process
    (its own node's directly, the others' for spill-over) and finds it healthy."""
    from rayscale.serve.ingress import ingress_states

    states = ingress_states(app_name)
    if not {r.node for r in records} <= {s.node for s in states}:
        return False
    want = len(records)
    return all((s.servers_up == want) if exact else (s.servers_up >= want) for s in states)


def up(
    cfg: ServeConfig,
    *,
    address: str | None = None,
    exporter: bool = True,
    exporter_port: int = 9400,
    num_gpus: int | None = None,
    timeout_s: float = 600.0,
    version: str | None = None,
) -> UpResult:
    """Start (or join) Ray, deploy the app with ``cfg``, wait until every replica is ready and routed.

    ``version`` pins the deployment's version, so that ``scaling.reconfigure`` can later change its
    ``RECONFIGURABLE`` settings without new processes (None: a fresh version, as Serve gives one)."""
    import ray
    from ray import serve

    from rayscale.serve.app import app_for
    from rayscale.serve.proxy import serve_env_vars
    from rayscale.serve.stats import kill_collector

    warnings: list[str] = []
    if not is_loopback(cfg.host):
        if not cfg.api_token:
            raise ConfigError(
                f"host {cfg.host} exposes the server to other machines: also pass --api-token (or set "
                f"RAYSCALE_API_TOKEN), or keep the default host {LOCAL_HOST}"
            )
        msg = f"serving on {cfg.host}: reachable from other machines (API token required)"
        warnings.append(msg)
        log.warning(msg)
    if cfg.ingress == "haproxy":  # a cluster started below inherits it (Serve reads it at process start)
        os.environ.update(serve_env_vars(cfg.ingress))
    gcs, started = connect(address, start=True, num_gpus=num_gpus)
    cfg = _fit_cluster(cfg)
    info = _ensure_model(cfg, gpu_present=float(ray.cluster_resources().get("GPU", 0)) > 0)
    cfg.model_dir = str(Path(cfg.model_dir).resolve())
    kill_collector(cfg.app_name)  # fresh statistics for a fresh deployment
    ingresses: list[IngressRecord] = []
    if cfg.ingress == "direct":
        # Serve's HTTP proxy is not needed: rayscale's ingress on each serving node takes the ports.
        serve.start(proxy_location="Disabled", http_options={"host": cfg.host, "port": cfg.port})
        from rayscale.serve.ingress import ensure_node_ingress, ingress_config, stop_ingresses

        stop_ingresses(cfg.app_name)
        registry.clear(cfg.app_name)  # a fresh secret, not draining, no stale records
        # This node's too, with or without replicas: the URL `up` prints works where it ran.
        ensure_node_ingress(ingress_config(cfg))
    else:
        registry.clear(cfg.app_name)
        # The proxy inherits the controller's environment, which installs rayscale's JSON error form there.
        serve.start(
            http_options={"host": cfg.host, "port": cfg.port},
            controller_options={"runtime_env": {"env_vars": serve_env_vars(cfg.ingress)}},
        )
    try:
        serve.run(app_for(cfg, version=version), name=cfg.app_name, route_prefix=cfg.route_prefix, blocking=False)
    except Exception as e:  # Serve wraps replica constructor failures
        raise ServerError(f"deploying {cfg.app_name} failed: {str(e).strip().splitlines()[-1]}") from None
    try:
        replica_info = wait_for_replicas(cfg.app_name, cfg.serve_replicas, timeout_s, routed=cfg.ingress == "direct")
    except ServerError:
        serve.delete(cfg.app_name, _blocking=False)  # nothing half up is left waiting for resources
        raise
    if cfg.ingress == "direct":
        ingresses = registry.ingress_records(cfg.app_name)
    exporters = 0
    if exporter:
        try:
            from rayscale.metrics import start_node_exporters

            exporters = len(start_node_exporters(host=client_host(cfg.host), port=exporter_port, app_name=cfg.app_name))
        except Exception as e:  # metrics must never block serving
            warnings.append(f"metrics exporter not started: {e}")
    host = client_host(cfg.host)
    url, grpc_target = f"http://{host}:{cfg.port}", f"{host}:{cfg.grpc_port}" if cfg.grpc_port else None
    here = _ingress_here(ingresses)
    if here is not None:  # where this node's ingress listens (127.0.0.2 for a second node on one machine)
        url, grpc_target = here.url, here.grpc_target
    return UpResult(
        app_name=cfg.app_name,
        url=url,
        replicas=cfg.replicas,
        gpus_per_replica=cfg.gpus_per_replica,
        model_dir=cfg.model_dir,
        model_sha256=info.sha256,
        precision=info.precision,
        ray_address=gcs,
        started_cluster=started,
        replica_info=replica_info,
        exporters=exporters,
        warnings=warnings,
        ingress=cfg.ingress,
        processes_per_replica=cfg.processes_per_replica,
        grpc_target=grpc_target if cfg.ingress == "direct" else None,
        ingresses=ingresses,
    )


def _ingress_here(ingresses: list[IngressRecord]) -> IngressRecord | None:
    """The ingress a client on this machine aims at: its own node's, else the head's (a driver that is
    not on a Ray node of its own, as with several nodes on one machine)."""
    import ray

    if not ingresses:
        return None
    by_node = {r.node: r for r in ingresses}
    here = by_node.get(ray.get_runtime_context().get_node_id())
    if here is not None:
        return here
    from rayscale.metrics.nodes import alive_nodes, head_node_ids

    return next((by_node[h] for h in head_node_ids(alive_nodes()) if h in by_node), None)


def status(app_name: str = "rayscale", *, address: str | None = None) -> StatusResult:
    from ray import serve

    try:
        gcs, _ = connect(address)
    except ServerError:
        return StatusResult(running=False, app_name=app_name, message="no Ray cluster running")
    apps = serve.status().applications
    st = apps.get(app_name)
    if st is None:
        return StatusResult(running=False, app_name=app_name, ray_address=gcs, message=f"no app named {app_name}")
    states: dict[str, int] = {}
    for d in st.deployments.values():
        for k, v in d.replica_states.items():
            states[k] = states.get(k, 0) + v
    replicas = registry.replica_records(app_name, live_only=True)
    message = st.message
    model = None
    endpoints: dict[str, Any] = {}
    if replicas:
        model = {"name": MODEL_NAME, "sha256": replicas[0].model_sha256, "precision": replicas[0].precision}
        served = replicas[0].config
        host = client_host(served.get("host", LOCAL_HOST))
        ingress = served.get("ingress", "proxy")
        endpoints = {
            "ingress": ingress,
            "url": f"http://{host}:{served.get('port', 8000)}",
            "grpc_target": f"{host}:{served['grpc_port']}" if ingress == "direct" and served.get("grpc_port") else None,
            "processes_per_replica": served.get("processes_per_replica") or 1,
        }
        if ingress == "direct":
            from rayscale.serve.ingress import ingress_states

            here = _ingress_here(registry.ingress_records(app_name))
            if here is not None:
                endpoints["url"], endpoints["grpc_target"] = here.url, here.grpc_target
            try:
                endpoints["ingresses"] = ingress_states(app_name)
            except ServerError as e:  # an ingress that cannot start: say so
                message = f"{message}; {e}".lstrip("; ")
    return StatusResult(
        running=str(st.status).endswith("RUNNING"),
        app_name=app_name,
        app_status=str(st.status).split(".")[-1],
        message=message,
        replicas=replicas,
        replica_states=states,
        ray_address=gcs,
        model=model,
        **endpoints,
    )


def down(
    app_name: str = "rayscale", *, address: str | None = None, stop_cluster: bool = True, drain_s: float = 0.0
) -> DownResult:
    """Drain and delete the app, then stop the cluster ``up`` started.

    Readiness (``/v2/health/ready``) turns 503 first; after ``drain_s`` (time for load balancers
    to notice) the app is deleted, and Serve lets in-flight requests finish before stopping a replica.
    """
    import ray
    from ray import serve

    from rayscale.serve.ingress import drain_ingresses, stop_ingresses
    from rayscale.serve.stats import kill_collector

    record = read_state()
    result = DownResult()
    try:
        connect(address)
    except ServerError:
        _state_file().unlink(missing_ok=True)
        return result
    if app_name in serve.status().applications:
        # Readiness off at every ingress at once (a client polling it never sees it turn back on),
        # then in every replica process within 0.25 s (those the ingresses route to and direct clients).
        drain_ingresses(app_name)
        registry.set_draining(app_name)
        time.sleep(drain_s)
        serve.delete(app_name, _blocking=True)
        result.app_deleted = True
    stop_ingresses(app_name)  # after the replicas: they drained the requests the ingresses gave them
    kill_collector(app_name)
    registry.clear(app_name)
    try:
        from rayscale.metrics import stop_node_exporters

        stop_node_exporters()
    except Exception:
        pass
    if not serve.status().applications:
        serve.shutdown()
    ray.shutdown()
    if stop_cluster and record is not None and record.started_by_rayscale and address is None:
        _stop_local_cluster(record)
        result.cluster_stopped = True
        _state_file().unlink(missing_ok=True)
    return result

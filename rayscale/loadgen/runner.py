"""The sweep: replica counts (outer, the server setting) × images per request × concurrency or rate.

For every point:

1. clients start the load (closed loop: N slots; open loop: a schedule) and run a warm-up
   whose samples are discarded;
2. consecutive windows of ``window_s`` are measured until the last three agree within
   ``stability`` on throughput and p95 (perf_analyzer's rule: max/min ≤ 1 + stability), or ``max_windows`` /
   ``duration_s`` is reached (then the point is flagged ``unstable``);
3. the point's figures come from the last three windows: latencies pooled from every client
   (exact percentiles), server-side queue/compute split from the statistics endpoint (deltas
   over the same span), GPU samples, client CPU;
4. clients stop and drain; sent = ok + failed + incomplete over the whole point.

The results file is rewritten atomically after every point, so an interrupted sweep leaves a
valid file marked ``incomplete``; ``resume`` skips the points a file already holds.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
import urllib.error
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rayscale.config import DEFAULT_MODEL_DIR, MODEL_NAME
from rayscale.environment import collect_environment, now_iso
from rayscale.errors import ConfigError, RayscaleError, ServerError
from rayscale.loadgen import grpc_client
from rayscale.loadgen.client import LoadClient, TargetSpec
from rayscale.protocol import get_json
from rayscale.loadgen.schedule import ARRIVALS
from rayscale.loadgen.stats import is_stable, latency_stats
from rayscale.results import BenchResult, PointResult, ServerStats, WindowStats, previous_bench_result, write_json_atomic

__all__ = ["BenchConfig", "run_bench", "server_stats_delta"]

log = logging.getLogger(__name__)

CLIENT_CPU_SATURATED_PCT = 85.0
TRANSPORTS = ("http", "grpc")
EventCallback = Callable[[dict[str, Any]], None]


@dataclass
class BenchConfig:
    url: str | None = None  # an Open Inference Protocol server (rayscale, Triton, ...); host:port for gRPC
    transport: str = "http"  # http | grpc (Triton's GRPCInferenceService)
    handle: bool = False  # call the rayscale app through a DeploymentHandle instead of HTTP
    model: str = MODEL_NAME
    app_name: str = "rayscale"
    target: str = "auto"  # label in results; auto: the server's own name from GET /v2
    replicas: list[int] | None = None  # rayscale replica counts to sweep; None: measure the server as it runs
    concurrency: list[int] | None = field(default_factory=lambda: [1, 4, 16, 64, 128])
    rates_rps: list[float] | None = None
    arrival: str = "constant"
    images_per_request: list[int] = field(default_factory=lambda: [1])
    binary: bool = True
    warmup_s: float = 5.0
    window_s: float = 5.0
    stability: float = 0.1
    max_windows: int = 10
    duration_s: float = 120.0  # cap on measured time per point
    clients: int = 0  # 0: chosen from the load and the cluster's CPUs
    client_cpus: float = 0.5
    request_timeout_s: float = 60.0
    drain_timeout_s: float = 30.0
    seed: int = 0
    api_token: str | None = None
    address: str | None = None  # Ray cluster (for handle mode, rescaling and client actors)
    model_dir: str | None = None  # model.json to record when the server cannot tell
    out: str | None = None
    csv: bool = False
    overwrite: bool = False
    resume: bool = False
    gpu_sample_interval_s: float = 0.5
    metrics_port: int | None = None
    command: str | None = None

    def __post_init__(self) -> None:
        if self.handle == (self.url is not None):
            raise ConfigError("give exactly one target: --url URL of a server, or --handle for the rayscale app in Ray")
        if self.transport not in TRANSPORTS:
            raise ConfigError(f"unknown transport {self.transport!r}: use one of {', '.join(TRANSPORTS)}")
        if self.transport == "grpc":
            if self.handle:
                raise ConfigError("--grpc and --handle are two ways to reach the app: pick one")
            if not self.binary:
                raise ConfigError("--json applies to HTTP only; gRPC sends raw tensor bytes")
            grpc_client.grpc_address(self.url)
        elif self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"--url must start with http:// or https://, got {self.url!r}")
        if (self.concurrency is None) == (self.rates_rps is None):
            raise ConfigError("give exactly one load shape: --concurrency (closed loop) or --rate (open loop)")
        for name, values in (("replicas", self.replicas), ("concurrency", self.concurrency), ("images per request", self.images_per_request)):
            if values is not None and (not values or any(v < 1 for v in values)):
                raise ConfigError(f"{name} must be a non-empty list of integers ≥ 1, got {values}")
        if self.rates_rps is not None and (not self.rates_rps or any(r <= 0 for r in self.rates_rps)):
            raise ConfigError(f"rates must be a non-empty list of numbers > 0 requests/s, got {self.rates_rps}")
        if self.arrival not in ARRIVALS:
            raise ConfigError(f"unknown arrival {self.arrival!r}: use one of {', '.join(ARRIVALS)}")
        if not 0 < self.stability < 1:
            raise ConfigError(f"stability must be in (0, 1), got {self.stability}")
        if self.window_s <= 0 or self.warmup_s < 0:
            raise ConfigError(f"window must be > 0 s and warmup ≥ 0 s, got {self.window_s} and {self.warmup_s}")
        if self.max_windows < 3:
            raise ConfigError(f"max windows must be ≥ 3 (stability needs three), got {self.max_windows}")
        if self.duration_s < 3 * self.window_s:
            raise ConfigError(f"duration ({self.duration_s:g} s) must allow three windows of {self.window_s:g} s")
        if self.clients < 0:
            raise ConfigError(f"clients must be ≥ 0 (0 = automatic), got {self.clients}")
        if self.handle and not self.binary:
            raise ConfigError("--json applies to HTTP only; handle calls pass numpy arrays")

    @property
    def mode(self) -> str:
        return "closed" if self.concurrency is not None else "open"

    @property
    def transport_label(self) -> str:
        """How requests travel, as results files record it."""
        if self.handle:
            return "handle"
        if self.transport == "grpc":
            return "grpc"
        return "http-binary" if self.binary else "http-json"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("api_token")
        return d


# ---- talking to the server -------------------------------------------------------------------


def _preflight_http(cfg: BenchConfig) -> dict[str, Any]:
    """Before any load: the server answers, is ready, and serves the model."""
    base = cfg.url.rstrip("/")
    try:
        server = get_json(f"{base}/v2", token=cfg.api_token)
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise ConfigError(f"{base} wants an API token: pass --api-token or set RAYSCALE_API_TOKEN") from None
        raise ServerError(f"{base} is not an Open Inference Protocol server (GET /v2 answered {e.code})") from None
    except (urllib.error.URLError, OSError) as e:
        raise ServerError(f"cannot reach {base} ({getattr(e, 'reason', e)}): is the server up? (`rayscale up` / `rayscale triton up`)") from None
    try:
        metadata = get_json(f"{base}/v2/models/{cfg.model}", token=cfg.api_token)
    except urllib.error.HTTPError as e:
        raise ConfigError(f"{base} does not serve model {cfg.model!r} (HTTP {e.code}): check --model") from None
    config = None
    try:
        config = get_json(f"{base}/v2/models/{cfg.model}/config", token=cfg.api_token)
    except (urllib.error.URLError, OSError, ValueError):
        pass
    return {"server": server, "metadata": metadata, "config": config}


def _fetch_stats(cfg: BenchConfig) -> dict[str, Any] | None:
    """Server-side statistics (Triton's extension), None where the server has none."""
    try:
        if cfg.handle:
            from rayscale.serve.stats import get_stats_snapshot

            snap = get_stats_snapshot(cfg.app_name)
            return {"model_stats": snap["model_stats"]} if snap else None
        if cfg.transport == "grpc":
            return grpc_client.fetch_statistics(cfg.url, cfg.model, cfg.api_token)
        return get_json(f"{cfg.url.rstrip('/')}/v2/models/{cfg.model}/stats", token=cfg.api_token)
    except Exception:  # statistics are a bonus; never fail a point for them
        return None


def _model_stats(snap: dict[str, Any] | None, model: str) -> dict[str, Any] | None:
    if not snap:
        return None
    for m in snap.get("model_stats", []):
        if m.get("name") == model:
            return m
    return None


def server_stats_delta(before: dict[str, Any] | None, after: dict[str, Any] | None, model: str = MODEL_NAME) -> ServerStats | None:
    """Queue/compute split over a span from two statistics snapshots (same form for rayscale and Triton)."""
    a, b = _model_stats(before, model), _model_stats(after, model)
    if a is None or b is None:
        return None

    def d(path: str, key: str) -> int:
        return int(b["inference_stats"][path][key]) - int(a["inference_stats"][path][key])

    requests = d("success", "count")
    images = int(b.get("inference_count", 0)) - int(a.get("inference_count", 0))
    batches = int(b.get("execution_count", 0)) - int(a.get("execution_count", 0))
    hist: dict[str, int] = {}
    before_bs = {int(x["batch_size"]): int(x["compute_infer"]["count"]) for x in a.get("batch_stats", [])}
    for x in b.get("batch_stats", []):
        n = int(x["compute_infer"]["count"]) - before_bs.get(int(x["batch_size"]), 0)
        if n > 0:
            hist[str(x["batch_size"])] = n
    per = 1e6 * max(requests, 1)
    infer = d("compute_infer", "ns")
    return ServerStats(
        requests=requests,
        images=images,
        batches=batches,
        queue_ms_per_request=d("queue", "ns") / per,
        compute_ms_per_request=(d("compute_input", "ns") + infer + d("compute_output", "ns")) / per,
        compute_infer_ms_per_request=infer / per,
        mean_batch_images=images / batches if batches else 0.0,
        batch_size_histogram=hist,
    )


# ---- Ray side: clients, rescaling ------------------------------------------------------------


def _connect_ray(cfg: BenchConfig) -> None:
    import ray

    from rayscale.serve.cluster import _read_state, connect

    if ray.is_initialized():
        return
    if not cfg.handle and cfg.address is None and not _read_state():
        # An external server and no cluster of ours: a fresh local one, never a guessed (maybe stale) one.
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False, namespace="rayscale")
        return
    try:
        connect(cfg.address)
    except ServerError:
        if cfg.handle or cfg.address:
            raise
        # An external server (e.g. Triton) and no cluster: client actors run in a local one.
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False, namespace="rayscale")


def _auto_clients(cfg: BenchConfig, load: int) -> int:
    import ray

    if cfg.clients:
        return cfg.clients
    cpus = float(ray.cluster_resources().get("CPU", 1))
    by_cpu = max(1, int(cpus // 4))
    per_client = 64 if cfg.mode == "closed" else 2000
    return max(1, min(16, by_cpu, math.ceil(load / per_client)))


def _make_clients(cfg: BenchConfig, n: int) -> list[Any]:
    import ray

    target = TargetSpec(
        kind="handle" if cfg.handle else cfg.transport,
        url=cfg.url,
        model=cfg.model,
        binary=cfg.binary,
        token=cfg.api_token,
        app_name=cfg.app_name,
        timeout_s=cfg.request_timeout_s,
    )
    actor = ray.remote(LoadClient).options(num_cpus=cfg.client_cpus, scheduling_strategy="SPREAD", max_concurrency=1)
    clients = [actor.remote(target) for _ in range(n)]
    try:
        ray.get([c.__ray_ready__.remote() for c in clients], timeout=120)
    except ray.exceptions.GetTimeoutError:
        for c in clients:
            ray.kill(c)
        free = ray.available_resources().get("CPU", 0)
        raise ConfigError(
            f"{n} client actors × {cfg.client_cpus:g} CPU could not be scheduled ({free:g} CPUs free in the cluster): "
            "lower --clients or --client-cpus"
        ) from None
    return clients


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts) if base + (1 if i < extra else 0) > 0]


def _running_app_config(cfg: BenchConfig) -> dict[str, Any] | None:
    """The running rayscale app's config, with ``replicas`` set to the replicas up now; None if none runs."""
    import ray

    from rayscale.serve.stats import NAMESPACE, collector_name

    try:
        infos = ray.get(ray.get_actor(collector_name(cfg.app_name), namespace=NAMESPACE).replicas.remote(), timeout=10)
    except ValueError:
        return None
    return dict(infos[0].get("config") or {}, replicas=len(infos)) if infos else None


def _rescale(cfg: BenchConfig, replicas: int) -> dict[str, Any]:
    """Redeploy the running app with ``replicas`` replicas and wait until all are ready."""
    import ray
    from ray import serve

    from rayscale.serve.app import build_app
    from rayscale.serve.cluster import wait_for_replicas

    current = _running_app_config(cfg)
    if current is None:
        raise ServerError(
            f"no running rayscale app {cfg.app_name!r} in this Ray cluster to rescale: start it with `rayscale up`"
        )
    if current["replicas"] == replicas:  # _running_app_config counted the replicas up now
        return current
    need = replicas * float(current.get("gpus_per_replica", 0))
    have = float(ray.cluster_resources().get("GPU", 0))
    if need > have + 1e-9:
        raise ConfigError(f"{replicas} replicas need {need:g} GPUs but the cluster has {have:g}: drop it from --replicas")
    args = dict(current, replicas=replicas)
    if cfg.api_token:
        args["api_token"] = cfg.api_token
    serve.run(build_app(args), name=cfg.app_name, route_prefix=args.get("route_prefix", "/"), blocking=False)
    wait_for_replicas(cfg.app_name, replicas)
    return args


# ---- one point -------------------------------------------------------------------------------


@dataclass
class _Totals:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    incomplete: int = 0
    late: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error_events: list[tuple[float, str]] = field(default_factory=list)

    def add(self, take: dict[str, Any]) -> None:
        self.ok += take["ok"]
        self.failed += take["failed"]
        self.late += take["late"]
        for k, v in take["errors"].items():
            self.errors[k] = self.errors.get(k, 0) + v
        self.error_events.extend(take["error_events"])


def _take_all(clients: list[Any]) -> list[dict[str, Any]]:
    import ray

    return ray.get([c.take.remote() for c in clients])


def _gpu_samplers(cfg: BenchConfig) -> list[Any]:
    try:
        from rayscale.metrics import start_gpu_samplers
    except ImportError:
        return []
    try:
        return start_gpu_samplers(cfg.gpu_sample_interval_s)
    except Exception as e:
        log.warning("GPU sampling unavailable: %s", e)
        return []


def _gpu_results(samplers: list[Any]) -> tuple[list[Any], list[dict[str, Any]]]:
    if not samplers:
        return [], []
    from rayscale.metrics import collect_gpu_samples, summarize_gpu_samples

    samples = collect_gpu_samples(samplers)
    return summarize_gpu_samples(samples), samples


def _run_point(
    cfg: BenchConfig,
    clients: list[Any],
    point: PointResult,
    load: int | float,
    emit: EventCallback,
    metrics: Any,
) -> PointResult:
    import ray

    point.started_at = now_iso()
    active = clients
    if cfg.mode == "closed":
        shares = _split(int(load), len(clients))
        active = clients[: len(shares)]
        ray.get([c.start_closed.remote(s) for c, s in zip(active, shares)])
    else:
        per = float(load) / len(clients)
        ray.get([c.start_open.remote(per, cfg.arrival, cfg.seed + i) for i, c in enumerate(clients)])
    point.clients = len(active)
    totals = _Totals()
    windows: list[WindowStats] = []
    window_takes: list[list[dict[str, Any]]] = []
    snapshots: list[dict[str, Any] | None] = []
    samplers: list[Any] = []
    t_start = time.perf_counter()
    try:
        time.sleep(cfg.warmup_s)
        # Start the GPU samplers (an actor start: ~0.5-1 s) before the warm-up's last take, so the
        # first window's requests and its duration both start at that take.
        samplers = _gpu_samplers(cfg)
        for take in _take_all(active):
            totals.add(take)
        t_last = time.perf_counter()
        measured_start = t_last
        snapshots.append(_fetch_stats(cfg))
        while True:
            time.sleep(max(0.0, cfg.window_s - (time.perf_counter() - t_last)))
            takes = _take_all(active)
            now = time.perf_counter()
            snapshots.append(_fetch_stats(cfg))
            for take in takes:
                totals.add(take)
            lat = np.concatenate([t["latencies_s"] for t in takes]) if takes else np.empty(0)
            ok = sum(t["ok"] for t in takes)
            window = WindowStats(
                start_s=round(t_last - t_start, 3),
                duration_s=now - t_last,
                requests=ok,
                images_per_s=ok * point.images_per_request / (now - t_last),
                p95_ms=latency_stats(lat).p95_ms,
                errors=sum(t["failed"] for t in takes),
            )
            windows.append(window)
            window_takes.append(takes)
            t_last = now
            stable = is_stable(windows, cfg.stability)
            emit({"event": "window", "point": point, "window": window, "index": len(windows), "stable": stable,
                  "p99_ms": latency_stats(lat).p99_ms})
            if metrics is not None:
                metrics.record_window(
                    requests_ok=ok,
                    errors={k: v for t in takes for k, v in t["errors"].items()},
                    latencies_s=lat,
                    duration_s=window.duration_s,
                    offered_rps=point.rate_rps,
                )
            if stable or len(windows) >= cfg.max_windows or now - measured_start >= cfg.duration_s:
                break
    finally:
        finals = ray.get([c.stop.remote(cfg.drain_timeout_s) for c in active])
        for f in finals:
            totals.add(f)
            totals.incomplete += f["incomplete"]
            totals.sent += f["sent_total"]
        gpus, gpu_samples = _gpu_results(samplers)
        point.gpus, point.gpu_samples = gpus, gpu_samples

    used = window_takes[-3:]
    used_windows = windows[-3:]
    lat = np.concatenate([t["latencies_s"] for takes in used for t in takes]) if used else np.empty(0)
    span = sum(w.duration_s for w in used_windows)
    ok = sum(w.requests for w in used_windows)
    point.ended_at = now_iso()
    point.windows = windows
    point.stable = is_stable(windows, cfg.stability)
    point.status = "ok" if point.stable else "unstable"
    point.measured_s = span
    point.latency = latency_stats(lat)
    point.requests_per_s = ok / span if span else 0.0
    point.images_per_s = point.requests_per_s * point.images_per_request
    point.requests_sent = totals.sent
    point.requests_ok = totals.ok
    point.requests_failed = totals.failed
    point.requests_incomplete = totals.incomplete
    point.errors = totals.errors
    point.late_sends = totals.late
    point.offered_rps = float(load) if cfg.mode == "open" else None
    point.error_timeline = _timeline(totals.error_events)
    point.client_cpu_pct = max((t["cpu_pct"] for takes in used for t in takes), default=0.0)
    point.client_cpu_saturated = point.client_cpu_pct >= CLIENT_CPU_SATURATED_PCT
    if len(snapshots) >= 2:
        point.server = server_stats_delta(snapshots[-1 - len(used_windows)], snapshots[-1], cfg.model)
    if point.requests_ok == 0:
        point.status = "failed"
        point.error = "no request succeeded: " + ", ".join(f"{k}={v}" for k, v in sorted(totals.errors.items()))
    return point


def _timeline(events: list[tuple[float, str]]) -> list[dict[str, Any]]:
    """Errors per second and kind: when a fault happened and how long it lasted."""
    buckets: dict[tuple[int, str], int] = {}
    for t, kind in events:
        key = (int(t), kind)
        buckets[key] = buckets.get(key, 0) + 1
    return [{"t": t, "kind": k, "count": n} for (t, k), n in sorted(buckets.items())]


# ---- the sweep -------------------------------------------------------------------------------


def _default_out(target: str) -> str:
    return str(Path("benchmarks") / "results" / f"bench-{target}-{time.strftime('%Y%m%d-%H%M%S')}.json")


def _model_record(cfg: BenchConfig, preflight: dict[str, Any] | None, running: dict[str, Any] | None) -> dict[str, Any]:
    """model.json of --model-dir, else of the running rayscale app's model, else of the default."""
    from rayscale.export import load_model_info

    candidates = [cfg.model_dir] if cfg.model_dir else []
    if running:
        candidates.append(running.get("model_dir"))
    candidates.append(str(DEFAULT_MODEL_DIR))
    for d in candidates:
        if not d:
            continue
        try:
            return load_model_info(d).to_dict()
        except RayscaleError:
            continue
    if preflight is not None:
        return {"name": cfg.model, "sha256": None, "note": "model.json not available to the client; pass --model-dir",
                "server_metadata": preflight["metadata"]}
    return {"name": cfg.model, "sha256": None}


def _write(result: BenchResult, path: Path, csv_too: bool) -> None:
    write_json_atomic(path, result.to_dict())
    if csv_too:
        write_csv(result, path.with_suffix(".csv"))


def write_csv(result: BenchResult, path: Path) -> Path:
    buf = io.StringIO()
    cols = ["target", "transport", "mode", "replicas", "images_per_request", "concurrency", "rate_rps", "status",
            "images_per_s", "requests_per_s", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms",
            "requests_sent", "requests_ok", "requests_failed", "requests_incomplete", "client_cpu_pct"]
    w = csv.writer(buf)
    w.writerow(cols)
    for p in result.points:
        lat = p.latency
        w.writerow([p.target, p.transport, p.mode, p.replicas, p.images_per_request, p.concurrency, p.rate_rps, p.status,
                    round(p.images_per_s, 2), round(p.requests_per_s, 2), lat.p50_ms, lat.p90_ms, lat.p95_ms, lat.p99_ms,
                    lat.p999_ms, lat.max_ms, p.requests_sent, p.requests_ok, p.requests_failed, p.requests_incomplete,
                    round(p.client_cpu_pct, 1)])
    tmp = path.with_suffix(".csv.tmp")
    tmp.write_text(buf.getvalue())
    tmp.replace(path)
    return path


def run_bench(cfg: BenchConfig, *, on_event: EventCallback | None = None) -> BenchResult:
    """Run the whole sweep; returns the result (also written to ``cfg.out``)."""
    import ray

    emit = on_event or (lambda e: None)
    if cfg.transport == "grpc":
        preflight = grpc_client.preflight(cfg.url, cfg.model, cfg.api_token)
    else:
        preflight = _preflight_http(cfg) if cfg.url else None
    target = cfg.target
    if target == "auto":
        target = "rayscale" if cfg.handle else str((preflight or {}).get("server", {}).get("name", "server")).lower()
        if target.startswith("triton"):
            target = "triton"
    out = Path(cfg.out or _default_out(target))
    previous = previous_bench_result(out, resume=cfg.resume, overwrite=cfg.overwrite)
    _connect_ray(cfg)
    # A rayscale app in this Ray cluster (whatever --target calls it) is measured at the replica
    # count it runs, or rescaled to each --replicas value; another server is measured as it runs.
    is_rayscale = cfg.handle or bool(preflight and preflight["server"].get("name") == "rayscale")
    running = _running_app_config(cfg) if is_rayscale else None
    rescalable = running is not None
    if cfg.replicas is not None and len(cfg.replicas) > 1 and not rescalable:
        raise ConfigError(
            "sweeping --replicas needs the rayscale app in a reachable Ray cluster (pass --address if it is remote); "
            "for another server, restart it at each size and pass its GPU count as a single --replicas value"
        )
    sweep = cfg.replicas or [int(running["replicas"]) if running else _served_replicas(preflight)]
    loads: list[int | float] = list(cfg.concurrency or cfg.rates_rps or [])
    result = BenchResult(
        command=cfg.command or "",
        config=cfg.to_dict(),
        environment=collect_environment(cfg.command),
        model=_model_record(cfg, preflight, running),
        serve_config=running if rescalable else ((preflight or {}).get("config")),
        started_at=now_iso(),
        status="incomplete",
    )
    done: dict[tuple, PointResult] = {}
    if previous is not None:
        done = {p.key: p for p in previous.points if p.status in ("ok", "unstable")}
    metrics = _load_metrics(cfg)
    clients: list[Any] = []
    try:
        for replicas in sweep:
            if rescalable and cfg.replicas is not None:
                emit({"event": "rescale", "replicas": replicas})
                result.serve_config = _rescale(cfg, replicas)
            for ipr in cfg.images_per_request:
                n_clients = _auto_clients(cfg, int(max(loads)))
                if len(clients) != n_clients:
                    for c in clients:
                        ray.kill(c)
                    clients = _make_clients(cfg, n_clients)
                images_ref = None
                if cfg.handle:
                    from rayscale.engine import random_images

                    images_ref = ray.put(random_images(ipr, seed=cfg.seed))
                try:
                    ray.get([c.prepare.remote(ipr, cfg.seed, images_ref) for c in clients])
                except Exception as e:
                    raise ServerError(f"the target failed a first request with {ipr} images: {_root_cause(e)}") from None
                for load in loads:
                    point = PointResult(
                        target=target,
                        transport=cfg.transport_label,
                        mode=cfg.mode,
                        replicas=replicas,
                        images_per_request=ipr,
                        concurrency=int(load) if cfg.mode == "closed" else None,
                        rate_rps=float(load) if cfg.mode == "open" else None,
                        arrival=cfg.arrival if cfg.mode == "open" else None,
                    )
                    if point.key in done:
                        result.points.append(done[point.key])
                        emit({"event": "skip", "point": point})
                        continue
                    if metrics is not None:
                        metrics.set_point(target=target, transport=cfg.transport_label, replicas=replicas,
                                          concurrency=point.concurrency, rate_rps=point.rate_rps, images_per_request=ipr)
                    emit({"event": "start", "point": point})
                    try:
                        _run_point(cfg, clients, point, load, emit, metrics)
                    except KeyboardInterrupt:
                        point.status, point.error = "incomplete", "interrupted"
                        result.points.append(point)
                        raise
                    except RayscaleError:
                        raise
                    except Exception as e:  # a dead client actor or similar: record and go on
                        point.status, point.error = "failed", _root_cause(e)
                        for c in clients:
                            ray.kill(c)
                        clients = _make_clients(cfg, n_clients)
                        ray.get([c.prepare.remote(ipr, cfg.seed, images_ref) for c in clients])
                    result.points.append(point)
                    emit({"event": "point", "point": point})
                    _write(result, out, cfg.csv)
        result.status = "complete"
    finally:
        result.ended_at = now_iso()
        if result.status != "complete":
            result.status = "incomplete"
        _write(result, out, cfg.csv)
        for c in clients:
            try:
                ray.kill(c)
            except Exception:
                pass
        if metrics is not None:
            metrics.close()
    result.config["out"] = str(out)
    return result


def _served_replicas(preflight: dict[str, Any] | None) -> int:
    """What to record as replicas for a server measured as it runs: the GPUs its model config names."""
    from rayscale.perf_analyzer import replicas_from_config

    return replicas_from_config((preflight or {}).get("config") or {})


def _load_metrics(cfg: BenchConfig) -> Any:
    if cfg.metrics_port is None:
        return None
    from rayscale.metrics import LoadMetrics

    m = LoadMetrics()
    m.serve(port=cfg.metrics_port)
    return m


def _root_cause(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:500]

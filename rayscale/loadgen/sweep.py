"""The sweep every load engine shares: settings nested from the most to the least costly to change.

    for replicas:                            with engine.deployment(replicas):
        for images per request:                  with engine.clients(images per request) as run_point:
            for concurrency or rate:                 run_point(point, load)

A load engine (rayscale's Ray actors, Triton's perf_analyzer) plugs in what it does at each
level; this module does the rest the same way for all: the results file (one per sweep, its header
recording command, environment and model), resuming it (points it holds are skipped, and a
setting whose points are all there is not even set up), rewriting it atomically after every point,
and its final status (``complete``, or ``incomplete`` when interrupted or failed).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rayscale.config import DEFAULT_MODEL_DIR
from rayscale.environment import collect_environment, now_iso
from rayscale.errors import RayscaleError
from rayscale.files import write_text_atomic
from rayscale.loadgen.config import BenchConfig
from rayscale.loadgen.events import EventCallback, PointFinished, PointSkipped, PointStarted, SweepStarted
from rayscale.loadgen.target import ServerInfo
from rayscale.results import BenchResult, PointResult, PointStatus, previous_bench_result, write_json_atomic

__all__ = ["LoadEngine", "PointRunner", "ResultsFile", "bench_result", "default_out", "model_record", "run_sweep", "write_csv"]

PointRunner = Callable[[PointResult, "int | float"], PointResult]


class LoadEngine(Protocol):
    """What a load engine brings to the sweep."""

    transport: str  # PointResult.transport of its points

    def deployment(self, replicas: int) -> contextlib.AbstractContextManager[None]:
        """The server at ``replicas`` replicas for the points inside."""

    def clients(self, images_per_request: int, *, replicas: int) -> contextlib.AbstractContextManager[PointRunner]:
        """Clients ready to send ``images_per_request`` images per request; yields the point runner.

        The runner measures a planned point at a load and returns it; a failure of the engine on
        one point is a ``failed`` point it returns, and the sweep goes on."""


# ---- the results file --------------------------------------------------------------------------


def default_out(target: str, client: str | None = None) -> Path:
    name = "-".join(["bench", target, *([client] if client else []), time.strftime("%Y%m%d-%H%M%S")])
    return Path("benchmarks") / "results" / f"{name}.json"


@dataclass
class ResultsFile:
    """Where a sweep writes, and the points a resumed file already holds."""

    path: Path
    csv: bool = False
    finished: dict[tuple, PointResult] = field(default_factory=dict)

    @classmethod
    def open(cls, cfg: BenchConfig, target: str, *, client: str | None = None) -> ResultsFile:
        """``--out`` (or a fresh default name); an existing file is resumed or refused, never overwritten silently."""
        path = Path(cfg.out) if cfg.out else default_out(target, client)
        previous = previous_bench_result(path, resume=cfg.resume, overwrite=cfg.overwrite)
        finished = {p.key: p for p in previous.points if PointStatus(p.status).finished} if previous else {}
        return cls(path=path, csv=cfg.csv, finished=finished)

    def write(self, result: BenchResult) -> None:
        write_json_atomic(self.path, result.to_dict())
        if self.csv:
            write_csv(result, self.path.with_suffix(".csv"))


def write_csv(result: BenchResult, path: Path) -> Path:
    buf = io.StringIO()
    cols = ["target", "transport", "mode", "replicas", "images_per_request", "concurrency", "rate_rps", "status",
            "images_per_s", "requests_per_s", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms",
            "requests_sent", "requests_ok", "requests_failed", "requests_incomplete", "client_cpu_pct"]  # fmt: skip
    w = csv.writer(buf)
    w.writerow(cols)
    for p in result.points:
        lat = p.latency
        w.writerow([p.target, p.transport, p.mode, p.replicas, p.images_per_request, p.concurrency, p.rate_rps, str(p.status),
                    round(p.images_per_s, 2), round(p.requests_per_s, 2), lat.p50_ms, lat.p90_ms, lat.p95_ms, lat.p99_ms,
                    lat.p999_ms, lat.max_ms, p.requests_sent, p.requests_ok, p.requests_failed, p.requests_incomplete,
                    round(p.client_cpu_pct, 1)])  # fmt: skip
    return write_text_atomic(path, buf.getvalue())


def model_record(cfg: BenchConfig, server: ServerInfo | None, *, running_model_dir: str | None = None) -> dict[str, Any]:
    """model.json of ``--model-dir`` (which must be readable when given), else of the running rayscale
    app's model, else of the default export; else what the server says of its model."""
    from rayscale.export import load_model_info

    if cfg.model_dir:
        return load_model_info(cfg.model_dir).to_dict()
    for d in (running_model_dir, str(DEFAULT_MODEL_DIR)):
        if not d:
            continue
        try:
            return load_model_info(d).to_dict()
        except RayscaleError:
            continue
    if server is None:
        return {"name": cfg.model, "sha256": None}
    params = server.metadata.get("parameters") or {}
    return {
        "name": cfg.model,
        "sha256": params.get("sha256"),
        "precision": params.get("precision"),
        "inputs": server.metadata.get("inputs"),
        "note": "model.json not available to the client; pass --model-dir",
        "server_metadata": server.metadata,
    }


def bench_result(cfg: BenchConfig, file: ResultsFile, *, model: dict[str, Any], serve_config: dict[str, Any] | None,
                 extra_config: dict[str, Any] | None = None, environment: dict[str, Any] | None = None) -> BenchResult:  # fmt: skip
    """A results file's header, before any point."""
    return BenchResult(
        command=cfg.command or "",
        config=cfg.to_dict() | (extra_config or {}) | {"out": str(file.path)},
        environment=environment if environment is not None else collect_environment(cfg.command),
        model=model,
        serve_config=serve_config,
        started_at=now_iso(),
        status="incomplete",
    )


# ---- the sweep ---------------------------------------------------------------------------------


def planned_point(cfg: BenchConfig, *, target: str, transport: str, replicas: int, images_per_request: int,
                  load: int | float) -> PointResult:  # fmt: skip
    closed = cfg.mode == "closed"
    return PointResult(
        target=target, transport=transport, mode=cfg.mode, replicas=replicas, images_per_request=images_per_request,
        concurrency=int(load) if closed else None, rate_rps=None if closed else float(load),
        arrival=None if closed else cfg.arrival,
    )  # fmt: skip


def run_sweep(cfg: BenchConfig, engine: LoadEngine, *, result: BenchResult, file: ResultsFile, target: str,
              replicas: list[int], emit: EventCallback) -> BenchResult:  # fmt: skip
    """Every point of ``cfg`` at each of ``replicas``, written to ``file`` after each; returns the result."""
    emit(SweepStarted(out=file.path, target=target))
    try:
        for n_replicas in replicas:
            plan = {
                ipr: [(load, planned_point(cfg, target=target, transport=engine.transport, replicas=n_replicas,
                                           images_per_request=ipr, load=load)) for load in cfg.loads]
                for ipr in cfg.images_per_request
            }  # fmt: skip
            with _unless_done(file, plan, functools.partial(engine.deployment, n_replicas)):
                for ipr, points in plan.items():
                    with _unless_done(
                        file, {ipr: points}, functools.partial(engine.clients, ipr, replicas=n_replicas)
                    ) as run_point:
                        for load, point in points:
                            _one_point(run_point, point, load, result=result, file=file, emit=emit)
        result.status = "complete"
    finally:
        result.ended_at = now_iso()
        if result.status != "complete":
            result.status = "incomplete"
        file.write(result)
    return result


def _unless_done(
    file: ResultsFile, plan: dict[int, list[tuple[Any, PointResult]]], setting: Callable[[], contextlib.AbstractContextManager]
) -> contextlib.AbstractContextManager:
    """The setting's context, or nothing where the file already holds every point it would measure."""
    if all(point.key in file.finished for points in plan.values() for _, point in points):
        return contextlib.nullcontext()
    return setting()


def _one_point(run_point: PointRunner | None, point: PointResult, load: int | float, *, result: BenchResult,
               file: ResultsFile, emit: EventCallback) -> None:  # fmt: skip
    if point.key in file.finished:
        result.points.append(file.finished[point.key])
        emit(PointSkipped(point))
        return
    assert run_point is not None, "a setting is skipped only where every one of its points is finished"
    emit(PointStarted(point))
    try:
        point = run_point(point, load)
    except KeyboardInterrupt:
        point.status, point.error = PointStatus.INCOMPLETE, "interrupted"
        result.points.append(point)
        raise
    result.points.append(point)
    emit(PointFinished(point))
    file.write(result)

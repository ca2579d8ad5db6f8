"""What each results file recorded about how it was measured.

``check_comparable`` compares the settings that must match for one report (model, precision,
input size, GPU type, max batch size) and names those that differ; ``describe_setup`` lists
everything recorded (hardware, versions, model, layouts, configs, commands), each value with the
files it came from, for the report's setup table.
"""

from __future__ import annotations

from typing import Any

from rayscale.errors import ResultsError
from rayscale.report.layout import layout_of
from rayscale.report.types import Mismatch
from rayscale.results import BenchResult, EngineBenchResult

__all__ = ["check_comparable", "describe_setup", "max_batch_size"]


def _short_sha(sha: Any) -> str | None:
    return str(sha)[:12] if sha else None


def _input_size(model: dict[str, Any]) -> str | None:
    for spec in model.get("inputs") or []:
        shape = spec.get("shape")
        if shape:
            return "x".join(str(d) for d in shape[1:])
    return None


def _gpu_type(environment: dict[str, Any]) -> str:
    names = sorted({str(g.get("name", "?")) for g in environment.get("gpus") or []})
    return " + ".join(names) if names else "no GPU"


def max_batch_size(result: BenchResult) -> int | None:
    """The server's max batch size as its serve config (else the bench config) recorded it; None if neither did."""
    for source in (result.serve_config or {}, result.config or {}):
        value = source.get("max_batch_size")
        if value is not None:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


def _comparable_settings(result: BenchResult | EngineBenchResult) -> dict[str, Any]:
    model = result.model or {}
    settings: dict[str, Any] = {
        "model sha256": _short_sha(model.get("sha256")),
        "precision": model.get("precision"),
        "input size": _input_size(model),
        "GPU type": _gpu_type(result.environment or {}),
    }
    if isinstance(result, BenchResult):
        settings["max batch size"] = max_batch_size(result)
    return settings


def check_comparable(
    results: list[BenchResult | EngineBenchResult], sources: list[str], *, allow_mismatch: bool
) -> list[Mismatch]:
    """The settings that differ between files (None: not recorded, not compared).

    Different settings make the comparison meaningless, so they are a ResultsError naming what
    differs and where, unless ``allow_mismatch``; then they are returned for the report to state.
    """
    by_setting: dict[str, dict[str, list[str]]] = {}
    for result, source in zip(results, sources, strict=True):
        for setting, value in _comparable_settings(result).items():
            if value is not None:
                by_setting.setdefault(setting, {}).setdefault(str(value), []).append(source)
    mismatches = [Mismatch(s, values) for s, values in by_setting.items() if len(values) > 1]
    if mismatches and not allow_mismatch:
        raise ResultsError(
            "results are not comparable: "
            + " | ".join(m.describe() for m in mismatches)
            + ": compare like with like, or pass --allow-mismatch to report them anyway"
        )
    return mismatches


def describe_setup(
    results: list[BenchResult], sources: list[str], engine: EngineBenchResult | None, engine_name: str
) -> dict[str, Any]:
    """What was measured and where, each value with the files it came from."""

    def collect(values: list[tuple[str, Any]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for source, value in values:
            if value not in (None, "", [], {}):
                out.setdefault(str(value), []).append(source)
        return out

    everything: list[tuple[str, BenchResult | EngineBenchResult]] = list(zip(sources, results, strict=True))
    if engine is not None:
        everything.append((engine_name, engine))
    env = [(s, r.environment or {}) for s, r in everything]
    model = [(s, r.model or {}) for s, r in everything]
    versions: dict[str, dict[str, list[str]]] = {}
    for source, e in env:
        for package, version in (e.get("versions") or {}).items():
            versions.setdefault(package, {}).setdefault(str(version), []).append(source)
    cpu = [(s, (e.get("cpu") or {})) for s, e in env]
    layouts: dict[str, dict[str, list[str]]] = {}
    for source, r in zip(sources, results, strict=True):
        for target, layout in sorted({(p.target, layout_of(p, r)) for p in r.points}, key=str):
            layouts.setdefault(target, {}).setdefault(layout.describe(), []).append(source)
    serve_configs: dict[str, dict[str, list[str]]] = {}
    for source, r in zip(sources, results, strict=True):
        targets = sorted({p.target for p in r.points}) or ["?"]
        if r.serve_config:
            key = " / ".join(targets)
            text = ", ".join(f"{k}={v}" for k, v in sorted(r.serve_config.items()) if not isinstance(v, (dict, list)))
            serve_configs.setdefault(key, {}).setdefault(text, []).append(source)
    return {
        "gpu_type": collect([(s, _gpu_type(e)) for s, e in env]),
        "gpu_count_on_host": collect([(s, len(e.get("gpus") or [])) for s, e in env]),
        "gpu_driver": collect([(s, e.get("gpu_driver")) for s, e in env]),
        "cpu": collect([(s, f"{c.get('model', '?')} ({c.get('logical_cores', '?')} logical cores)") for s, c in cpu]),
        "memory_gib": collect(
            [(s, f"{e['memory_bytes'] / 2**30:.0f}") for s, e in env if isinstance(e.get("memory_bytes"), (int, float))]
        ),
        "hostname": collect([(s, e.get("hostname")) for s, e in env]),
        "git_commit": collect([(s, e.get("git_commit")) for s, e in env]),
        "model_name": collect([(s, m.get("name")) for s, m in model]),
        "model_sha256": collect([(s, m.get("sha256")) for s, m in model]),
        "precision": collect([(s, m.get("precision")) for s, m in model]),
        "weights": collect([(s, m.get("weights")) for s, m in model]),
        "input": collect([(s, _input_size(m)) for s, m in model]),
        "versions": versions,
        "layout": layouts,
        "serve_config": serve_configs,
        "bench_config": {
            s: ", ".join(f"{k}={v}" for k, v in sorted((r.config or {}).items()) if not isinstance(v, (dict, list)))
            for s, r in zip(sources, results, strict=True)
        },
        "commands": {s: r.command for s, r in everything if r.command},
    }

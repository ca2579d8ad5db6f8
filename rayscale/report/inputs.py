"""Finding and loading the results files a report is built from."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from rayscale.errors import ResultsError
from rayscale.results import BenchResult, EngineBenchResult, load_results

__all__ = ["load_bench_results", "load_engine_result"]


def _expand(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*.json") if not p.name.startswith("."))
    return [path]


def load_bench_results(paths: Sequence[str | os.PathLike]) -> tuple[list[BenchResult], list[str]]:
    """Bench results from files, or from every bench file under a directory; with their names.

    A file named explicitly must be a bench result; in a directory, other JSON files (engine
    benches, earlier reports) are skipped.
    """
    if not paths:
        raise ResultsError("no results files given: pass the files written by `rayscale bench`")
    results: list[BenchResult] = []
    sources: list[str] = []
    for given in map(Path, paths):
        if not given.exists():
            raise ResultsError(f"results file not found: {given}")
        found = 0
        for path in _expand(given):
            try:
                result = load_results(path)
            except ResultsError:
                if path == given:
                    raise
                continue
            if isinstance(result, EngineBenchResult):
                if path == given:
                    raise ResultsError(f"{path} is an engine-bench result: pass it with --engine {path}")
                continue
            results.append(result)
            sources.append(str(path))
            found += 1
        if not found:
            raise ResultsError(f"no bench results under {given}: run `rayscale bench --out {given}/...` first")
    return results, sources


def load_engine_result(path: str | os.PathLike) -> EngineBenchResult:
    result = load_results(path)
    if not isinstance(result, EngineBenchResult):
        raise ResultsError(f"{path} is a bench result, not an engine bench: --engine takes a `rayscale engine-bench` file")
    return result

"""The Grafana dashboard shipped with rayscale (import it, or provision it from this folder)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["DASHBOARD_PATH", "load_dashboard", "promql_expressions"]

DASHBOARD_PATH = Path(__file__).resolve().parent / "rayscale.json"


def load_dashboard(path: str | Path = DASHBOARD_PATH) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def promql_expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every query in the dashboard, rows' nested panels included."""

    def walk(panels):
        for p in panels:
            yield from walk(p.get("panels", []))
            for t in p.get("targets", []):
                if t.get("expr"):
                    yield p.get("title", ""), t["expr"]

    yield from walk(dashboard.get("panels", []))

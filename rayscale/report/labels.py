"""How the report names what it shows: a load, a size, and each series by what sets it apart."""

from __future__ import annotations

from rayscale.report.layout import Layout

__all__ = ["format_load", "series_labels", "size_label"]


def format_load(load: float | None) -> str:
    """A concurrency or rate as people write it: 16, 250.5, or '–' when unknown."""
    if load is None:
        return "–"
    return str(int(load)) if float(load).is_integer() else f"{load:g}"


def size_label(hardware: str, units: int) -> str:
    """'2 GPU(s)', or 'CPU, 2 replica(s)' for a run without GPUs."""
    return f"CPU, {units} replica(s)" if hardware == "CPU" else f"{units} GPU(s)"


def _transport_text(transport: str, layout: Layout) -> str:
    """The transport as compared (http, grpc, handle), with JSON bodies or another client named."""
    if transport.endswith("-json"):
        return f"{layout.transport} json"
    if transport in ("handle", layout.transport) or transport.startswith(("http", "grpc")):
        return layout.transport
    return f"{layout.transport} ({transport})"  # http (perf_analyzer)


def series_labels(keys: list[tuple]) -> dict[tuple, str]:
    """Name each series by its target, transport, layout and images per request (the loop only where it varies)."""
    loop_varies = len({k[2] for k in keys}) > 1
    labels = {}
    for key in keys:
        target, transport, mode, ipr, layout = key
        via = f" via {layout.ingress}" if layout.ingress else ""
        parts = [target, _transport_text(transport, layout) + via]
        if layout.hardware == "CPU":
            parts.append("CPU")
        elif layout.processes_per_gpu is not None:
            parts.append(layout.per_gpu_text)
        if loop_varies:
            parts.append(f"{mode} loop")
        parts.append(f"{ipr} img/req")
        labels[key] = ", ".join(parts)
    return labels

"""GPU sampling, the Prometheus exporter, live load-generator metrics and processes' CPU time.

What a user watches while a benchmark runs, a module each:

* ``gpu``: NVML readings (utilisation, memory, power, clock, temperature), one dict per GPU;
  on a machine without an NVIDIA driver they are empty lists, never an exception.
  ``start_gpu_samplers`` runs one sampler per GPU node of a Ray cluster.
* ``exporter``: a Prometheus endpoint with the GPU metrics of its node and, on one node only,
  the serving statistics that every replica sends to the app's ``StatsCollector`` actor, read
  at scrape time; ``start_node_exporters`` runs one per machine of a Ray cluster.
* ``load``: what the load generator offers and achieves, per window, with the current sweep
  point as a label set;
* ``cpu``: CPU time of a process and its descendants from /proc, read at window edges for the
  host CPU each image costs.

Metric names follow Prometheus conventions: a ``rayscale_`` prefix, base units in the name
(``_seconds``, ``_bytes``, ``_hertz``), ``_total`` on counters, and no per-request or
per-replica labels.
"""

from rayscale.metrics.exporter import (
    EXPORTER_NAMESPACE,
    ExporterServer,
    build_registry,
    connect_ray,
    exporter_name,
    serve_exporter,
    start_node_exporters,
    stop_node_exporters,
)
from rayscale.metrics.gpu import (
    GpuSampler,
    GpuSamplers,
    collect_gpu_samples,
    read_gpus,
    start_gpu_samplers,
    summarize_gpu_samples,
)
from rayscale.metrics.load import BENCH_LATENCY_BOUNDS, LoadMetrics

__all__ = [
    "BENCH_LATENCY_BOUNDS",
    "EXPORTER_NAMESPACE",
    "ExporterServer",
    "GpuSampler",
    "LoadMetrics",
    "build_registry",
    "GpuSamplers",
    "collect_gpu_samples",
    "connect_ray",
    "exporter_name",
    "read_gpus",
    "serve_exporter",
    "start_gpu_samplers",
    "start_node_exporters",
    "stop_node_exporters",
    "summarize_gpu_samples",
]

"""Kubernetes manifests for a GPU cluster with the KubeRay operator, sized like a local sweep point.

``render_manifests(replicas=N)`` returns the objects ``kubectl apply -k k8s/overlays/<N>gpu``
creates (the files under ``k8s/`` are these objects with comments; tests/test_k8s.py keeps the
two equal):

* ``Namespace``, two ``PersistentVolumeClaim``s: the exported model and the benchmark results;
* a ``Job`` that exports the model once into the model volume (never into git or the image);
* a ``RayService``: a head without GPUs and ``ceil(N / replicas_per_gpu)`` one-GPU workers
  running the application builder ``rayscale.serve.app:build_app`` with ``ServeConfig`` args;
* with the default ingress (``direct``), a ``Service`` ``rayscale-ingress`` in front of every
  GPU worker pod whose own rayscale HAProxy (8000 HTTP, 8001 gRPC) answers its readiness probe;
  each routes to the replica processes on its own pod first, to other pods' only when none of its
  own is ready or all are full; with ``proxy``, KubeRay's Serve Service in front of Serve's
  proxies on the workers;
* a Triton ``Deployment`` + ``Service`` serving the same ONNX file on the same number of GPUs;
* a ``RayJob`` that sweeps concurrency against the RayService and writes a results file;
* monitoring: ``PodMonitor``/``ServiceMonitor`` objects and the Grafana dashboard ``ConfigMap``.

Every Service is ClusterIP: nothing is reachable from outside the cluster unless the user
port-forwards. The Ray dashboard and job API (8265) are never put behind a Service of ours.

One module per part: ``sizing`` (pods for a size), ``serve_config`` (the Serve application in
the pod), ``blocks`` (names, ports and small objects every manifest shares), ``exporters`` (the
node-exporter keeper that runs on the head), ``ray_head``, ``rayservice``, ``export_job``,
``triton``, ``bench_job``, ``monitoring``, then ``render`` (all objects) and ``write`` (files).
"""

from __future__ import annotations

from rayscale.k8s.bench_job import BENCH_CONCURRENCY
from rayscale.k8s.blocks import DEFAULT_IMAGE, DEFAULT_NAMESPACE, GRPC_PORT, RAY_IMAGE, RAY_VERSION
from rayscale.k8s.exporters import keep_node_exporters
from rayscale.k8s.monitoring import DASHBOARD_FILE, MONITORING_KINDS, is_monitoring, packaged_dashboard
from rayscale.k8s.rayservice import INGRESS_SERVICE_NAME, serve_url
from rayscale.k8s.render import render_manifests
from rayscale.k8s.serve_config import K8S_INGRESSES
from rayscale.k8s.sizing import gpu_workers_for, worker_cpus_for
from rayscale.k8s.triton import TRITON_IMAGE
from rayscale.k8s.write import write_manifests

__all__ = [
    "BENCH_CONCURRENCY",
    "DASHBOARD_FILE",
    "DEFAULT_IMAGE",
    "DEFAULT_NAMESPACE",
    "GRPC_PORT",
    "INGRESS_SERVICE_NAME",
    "K8S_INGRESSES",
    "MONITORING_KINDS",
    "RAY_IMAGE",
    "RAY_VERSION",
    "TRITON_IMAGE",
    "gpu_workers_for",
    "is_monitoring",
    "keep_node_exporters",
    "packaged_dashboard",
    "render_manifests",
    "serve_url",
    "worker_cpus_for",
    "write_manifests",
]

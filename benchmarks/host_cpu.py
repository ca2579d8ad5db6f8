"""Host CPU per image on this machine: what `rayscale bench` records, checked against /proc.

    python3 benchmarks/host_cpu.py --out-dir DIR [--model models/openclip_vit_b32] [--concurrency 64,256]
        [--images-per-request 32] [--transports http,grpc] [--triton-url http://127.0.0.1:8100]
    QUICK=1 python3 benchmarks/host_cpu.py --out-dir DIR      # a rehearsal on a CPU machine

Starts the app with the defaults (`rayscale up`, one replica per GPU), benches it over each transport
and, where given, a Triton already running on this machine. While each point runs it samples /proc at
every window edge on its own: the replica processes (by their process title), HAProxy, tritonserver's
tree and the whole host's busy time (/proc/stat). It prints, per point, the server and client CPU per
1000 images and the server cores per GPU that the results file records, beside the /proc figures for
the point's last windows: replica cores from the statistics and from /proc (they must agree), the
ingress's cores (HAProxy, which the results do not count yet), and the host's busy cores with what
none of them accounts for (Ray, the driver, the kernel's own threads). Writes the results files,
crosscheck.json and a report into DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rayscale.loadgen import BenchConfig, run_bench
from rayscale.loadgen.events import PointFinished, WindowMeasured
from rayscale.metrics.cpu import CLOCK_TICKS_PER_S, process_cpu, process_tree_cpu_s
from rayscale.report import build_report, write_report
from rayscale.results import PointResult, load_results

QUICK = os.environ.get("QUICK") == "1"
RS = [sys.executable, "-m", "rayscale.cli"]


@dataclass
class Sample:
    """Cumulative CPU seconds at one window edge, read from /proc alone."""

    t_s: float
    host_busy_s: float  # every core: user, nice, system, irq, softirq, steal
    replicas_s: float
    haproxy_s: float
    triton_s: float


def _pids(match) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if match(comm, cmdline):
            found.append(int(entry))
    return found


def _tree_s(pids: list[int]) -> float:
    """CPU seconds of these processes' trees, each counted once (a match whose parent matched is in its tree)."""
    stats = [s for s in map(process_cpu, pids) if s is not None]
    return sum(process_tree_cpu_s(s.pid) or 0.0 for s in stats if s.ppid not in pids)


def _host_busy_s() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS_PER_S


def sample() -> Sample:
    replicas = _pids(lambda comm, cmd: "ServeReplica" in cmd)
    haproxy = _pids(lambda comm, cmd: comm == "haproxy")
    triton = _pids(lambda comm, cmd: comm == "tritonserver")
    return Sample(time.perf_counter(), _host_busy_s(), _tree_s(replicas), _tree_s(haproxy), _tree_s(triton))


def cores(a: Sample, b: Sample) -> dict[str, float]:
    span = b.t_s - a.t_s
    return {name: (getattr(b, name) - getattr(a, name)) / span for name in ("host_busy_s", "replicas_s", "haproxy_s", "triton_s")}


def bench_with_proc(cfg: BenchConfig) -> list[tuple[PointResult, dict[str, float]]]:
    """Run the sweep, sampling /proc at every window edge; each point with its /proc cores over its
    last two windows (the edges the load generator's events follow)."""
    samples: list[Sample] = []
    measured: list[tuple[PointResult, dict[str, float]]] = []

    def on_event(event) -> None:
        if isinstance(event, WindowMeasured):
            samples.append(sample())
        elif isinstance(event, PointFinished):
            proc = cores(samples[-3], samples[-1]) if len(samples) >= 3 else {}
            measured.append((event.point, proc))
            samples.clear()

    run_bench(cfg, on_event=on_event)
    return measured


def row(label: str, point: PointResult, proc: dict[str, float], gpus: int) -> dict:
    """What the results file records for the point, beside /proc's cores over its last windows."""
    cpu = point.host_cpu
    r = {"run": label, "load": point.concurrency, "images_per_s": point.images_per_s, "status": str(point.status)}
    if cpu is not None:
        r |= {
            "server_cpu_parts": cpu.server_parts,
            "server_cpu_s_per_1000_images": cpu.server_cpu_s_per_1000_images,
            "client_cpu_s_per_1000_images": cpu.client_cpu_s_per_1000_images,
            "server_cores": cpu.server_cores,
            "server_cores_per_gpu": cpu.server_cores / gpus if cpu.server_cores is not None else None,
            "client_cores": cpu.client_cpu_s / cpu.measured_s if cpu.client_cpu_s is not None else None,
        }
    r |= {f"proc_{k.removesuffix('_s')}_cores": v for k, v in proc.items()}
    # /proc's figure for the same processes the results count (replicas, or Triton's tree)
    r["proc_server_cores"] = proc.get("replicas_s") if label.startswith("rayscale") else proc.get("triton_s")
    return r


def fmt(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--model", default="models/openclip_vit_b32")
    ap.add_argument("--concurrency", default="2" if QUICK else "64,256")
    ap.add_argument("--images-per-request", type=int, default=2 if QUICK else 32)
    ap.add_argument("--transports", default="http,grpc")
    ap.add_argument("--triton-url", default=None, help="a Triton already running on this machine, benched the same way")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--grpc-port", type=int, default=8001)
    args = ap.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    machine = subprocess.run("nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; nproc; date -u",
                             shell=True, capture_output=True, text=True).stdout  # fmt: skip
    (out / "machine.txt").write_text(machine)
    if not (Path(args.model) / "model.json").exists():
        subprocess.run([*RS, "export", "--out", args.model, "--precision", "fp32" if QUICK else "fp16"], check=True)
    gpus = 1
    up = [*RS, "up", "--model", args.model, "--no-exporter", "--port", str(args.port), "--grpc-port", str(args.grpc_port)]
    if QUICK:
        up += ["--provider", "cpu", "--num-gpus", "1", "--cpus-per-replica", "0.5", "--max-batch-size", "8"]
    window = ["--warmup", "1", "--window", "1.5"] if QUICK else ["--warmup", "3", "--window", "2.5"]
    common = dict(concurrency=[int(c) for c in args.concurrency.split(",")], images_per_request=[args.images_per_request],
                  warmup_s=float(window[1]), window_s=float(window[3]), duration_s=6.0 if QUICK else 15.0, max_windows=4 if QUICK else 6,
                  model_dir=args.model, overwrite=True, **(dict(clients=1, client_cpus=0) if QUICK else {}))  # fmt: skip
    rows = []
    subprocess.run(up, check=True)
    try:
        for transport in args.transports.split(","):
            url = f"127.0.0.1:{args.grpc_port}" if transport == "grpc" else f"http://127.0.0.1:{args.port}"
            cfg = BenchConfig(
                url=url, transport=transport, out=str(out / f"rayscale-{transport}-{args.images_per_request}img.json"), **common
            )
            rows += [row(f"rayscale {transport}", p, proc, gpus) for p, proc in bench_with_proc(cfg)]
    finally:
        subprocess.run([*RS, "down"], check=False)
        import ray

        ray.shutdown()  # that cluster is gone: a Triton bench starts a local one for its clients
    if args.triton_url:
        cfg = BenchConfig(url=args.triton_url, out=str(out / f"triton-http-{args.images_per_request}img.json"), **common)
        rows += [row("triton http", p, proc, gpus) for p, proc in bench_with_proc(cfg)]
    (out / "crosscheck.json").write_text(json.dumps(rows, indent=2) + "\n")
    files = sorted(out.glob("*img.json"))
    write_report(build_report([load_results(f) for f in files], sources=[str(f) for f in files]), out / "report")

    print(
        f"\n{'run':14s} {'conc':>5s} {'img/s':>9s} | {'srv CPU-s/1k':>12s} {'cli CPU-s/1k':>12s} {'srv cores/GPU':>13s} | "
        f"{'srv cores':>9s} {'/proc':>6s} {'haproxy':>7s} {'clients':>7s} {'host busy':>9s} {'unaccounted':>11s}"
    )
    for r in rows:
        host = r.get("proc_host_busy_cores")
        accounted = sum(r.get(k) or 0.0 for k in ("proc_server_cores", "proc_haproxy_cores", "client_cores"))
        print(
            f"{r['run']:14s} {r['load']:>5} {r['images_per_s']:>9.0f} | {fmt(r.get('server_cpu_s_per_1000_images'), 3):>12s} "
            f"{fmt(r.get('client_cpu_s_per_1000_images'), 3):>12s} {fmt(r.get('server_cores_per_gpu')):>13s} | "
            f"{fmt(r.get('server_cores')):>9s} {fmt(r.get('proc_server_cores')):>6s} {fmt(r.get('proc_haproxy_cores')):>7s} "
            f"{fmt(r.get('client_cores')):>7s} {fmt(host):>9s} {fmt(host - accounted if host is not None else None):>11s}"
        )
    print(f"\nfiles: {out}  (machine: {' / '.join(machine.split(chr(10))[:2])})")


if __name__ == "__main__":
    main()

"""Server CPU per 1000 images, read from /proc around a bench run, for any build of rayscale.

    python3 benchmarks/proc_cpu.py snapshot FILE [--url URL]              # before a bench
    python3 benchmarks/proc_cpu.py delta FILE --label L [--url URL] --out OUT.json   # after it
    python3 benchmarks/proc_cpu.py table DIR                               # host_cost.sh's summary

"Server" is the replica processes (Ray Serve replicas of the OpenClipEncoder deployment, every
thread) and the ingress HAProxy; images are the server's own count (the statistics endpoint's
inference_count), so warm-up and measured windows are both in the figure, as they are in the CPU.
The host's busy cores over the same interval are recorded beside them (clients included). It
reads only /proc and the protocol's statistics endpoint, so it measures an older build exactly as
it measures this one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
STATS = "/v2/models/openclip_vit_b32/stats"


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _cpu_s(pid: str) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # LISTEN on our port
                inodes.add(f[9])
    return inodes


def _holds_socket(pid: str, inodes: set[str]) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] in inodes for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def _server_processes(port: int) -> dict[str, str]:
    """Replica processes of the app this shell's RAYSCALE_STATE_DIR started, and the HAProxy on ``port``."""
    state = os.environ.get("RAYSCALE_STATE_DIR", "")
    inodes = _listening_inodes(port)
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        cmd = _cmdline(pid)
        if "ServeReplica:" in cmd and "OpenClipEncoder" in cmd:
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if not state or f"RAYSCALE_STATE_DIR={state}".encode() in env:
                found[pid] = "replica"
        elif cmd.startswith("haproxy") or "/haproxy " in cmd:
            if _holds_socket(pid, inodes):
                found[pid] = "haproxy"
    return found


def _host() -> tuple[float, float, float]:
    """(busy, user, system) CPU-seconds of the whole host since boot."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq = f[:7]
    steal = f[7] if len(f) > 7 else 0
    return (user + nice + system + irq + softirq + steal) / TICKS, (user + nice) / TICKS, (system + irq + softirq) / TICKS


def _images(url: str) -> int:
    with urllib.request.urlopen(url.rstrip("/") + STATS, timeout=10) as r:
        stats = json.loads(r.read())
    return sum(int(m.get("inference_count", 0)) for m in stats["model_stats"])


def snapshot(url: str) -> dict:
    procs = _server_processes(int(url.rsplit(":", 1)[1].split("/")[0]))
    return {
        "t": time.time(),
        "images": _images(url),
        "host": _host(),
        "procs": {pid: {"kind": kind, "cpu_s": _cpu_s(pid)} for pid, kind in procs.items()},
    }


def delta(before: dict, after: dict, label: str) -> dict:
    kinds: dict[str, float] = {}
    for pid, p in after["procs"].items():
        b = before["procs"].get(pid)
        if b is None or p["cpu_s"] is None or b["cpu_s"] is None:
            continue
        kinds[p["kind"]] = kinds.get(p["kind"], 0.0) + p["cpu_s"] - b["cpu_s"]
    images = after["images"] - before["images"]
    seconds = after["t"] - before["t"]
    busy, user, system = (a - b for a, b in zip(after["host"], before["host"], strict=True))
    per_k = (lambda s: round(s / images * 1000, 4)) if images > 0 else (lambda s: None)
    replica, haproxy = kinds.get("replica", 0.0), kinds.get("haproxy", 0.0)
    return {
        "label": label,
        "seconds": round(seconds, 2),
        "images": images,
        "replica_processes": sum(1 for p in after["procs"].values() if p["kind"] == "replica"),
        "replica_cpu_s": round(replica, 2),
        "haproxy_cpu_s": round(haproxy, 2),
        "server_cpu_s_per_1000_images": per_k(replica + haproxy),
        "replica_cpu_s_per_1000_images": per_k(replica),
        "haproxy_cpu_s_per_1000_images": per_k(haproxy),
        "host_busy_cores": round(busy / seconds, 2),
        "host_user_cores": round(user / seconds, 2),
        "host_system_cores": round(system / seconds, 2),
    }


def _best(path: Path, concurrency: int | None = None) -> float | None:
    """images/s of a bench file's point (at ``concurrency``, else its best)."""
    if not path.is_file():
        return None
    points = [p for p in json.loads(path.read_text()).get("points", []) if p.get("status") != "failed"]
    if concurrency is not None:
        points = [p for p in points if p.get("concurrency") == concurrency]
    return max((p["images_per_s"] for p in points), default=None)


def _engine_device(path: Path) -> float | None:
    if not path.is_file():
        return None
    points = json.loads(path.read_text()).get("points", [])
    return max(
        (p["images_per_s"] for p in points if p.get("where") == "device" and p.get("backend") == "onnxruntime"), default=None
    )


def table(root: Path) -> str:
    rows = []
    builds = [b for b in ("old", "new") if (root / b).is_dir()]
    fig: dict[str, dict[str, float | None]] = {}
    for b in builds:
        d = root / b
        cpu = {}
        for f in d.glob("cpu-*.json"):
            c = json.loads(f.read_text())
            cpu[c["label"]] = c
        fig[b] = {
            "engine": _engine_device(d / "engine.json"),
            "http32": _best(d / "http-32img.json"),
            "grpc32": _best(d / "grpc-32img.json"),
            "http256_16": _best(d / "http-256img.json", 16),
            "http256_64": _best(d / "http-256img.json", 64),
            "handle256_16": _best(d / "handle-256img.json", 16),
            "handle256_64": _best(d / "handle-256img.json", 64),
            "cpu_http32": (cpu.get("http32") or {}).get("server_cpu_s_per_1000_images"),
            "cpu_http32_replica": (cpu.get("http32") or {}).get("replica_cpu_s_per_1000_images"),
            "cpu_grpc32": (cpu.get("grpc32") or {}).get("server_cpu_s_per_1000_images"),
            "host_http32": (cpu.get("http32") or {}).get("host_busy_cores"),
        }

    def ratio(a, b):
        return f"{a / b:.2f}" if a and b else "-"

    def num(v, fmt="{:,.0f}"):
        return fmt.format(v) if v is not None else "-"

    rows.append(f"{'figure':44s} " + " ".join(f"{b:>10s}" for b in builds) + "   new/old  target")
    spec = [
        ("engine batch 256, input on the GPU (img/s)", "engine", "{:,.0f}", None),
        ("HTTP 32 img/req (img/s)", "http32", "{:,.0f}", None),
        ("gRPC 32 img/req (img/s)", "grpc32", "{:,.0f}", None),
        ("HTTP 256 img/req c=16 (img/s)", "http256_16", "{:,.0f}", None),
        ("HTTP 256 img/req c=64 (img/s)", "http256_64", "{:,.0f}", None),
        ("handle 256 img/req c=16 (img/s)", "handle256_16", "{:,.0f}", None),
        ("handle 256 img/req c=64 (img/s)", "handle256_64", "{:,.0f}", None),
        ("server CPU-s / 1000 img, HTTP 32", "cpu_http32", "{:.3f}", "new/old <= 0.60"),
        ("  of which replicas", "cpu_http32_replica", "{:.3f}", None),
        ("server CPU-s / 1000 img, gRPC 32", "cpu_grpc32", "{:.3f}", None),
        ("host busy cores, HTTP 32", "host_http32", "{:.1f}", None),
    ]
    for title, key, fmt, target in spec:
        vals = [fig[b][key] for b in builds]
        r = ratio(fig.get("new", {}).get(key), fig.get("old", {}).get(key)) if len(builds) == 2 else "-"
        rows.append(f"{title:44s} " + " ".join(f"{num(v, fmt):>10s}" for v in vals) + f"   {r:>7s}  {target or ''}")
    rows.append("")
    rows.append("targets, within each build:")
    for b in builds:
        f = fig[b]
        rows.append(
            f"  {b}: HTTP32/engine {ratio(f['http32'], f['engine'])} (>= 0.95), gRPC32/HTTP32 {ratio(f['grpc32'], f['http32'])} (>= 0.90), "
            f"HTTP256/handle c=16 {ratio(f['http256_16'], f['handle256_16'])} c=64 {ratio(f['http256_64'], f['handle256_64'])} (>= 0.90)"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("snapshot")
    s.add_argument("file")
    s.add_argument("--url", default="http://127.0.0.1:8000")
    d = sub.add_parser("delta")
    d.add_argument("file")
    d.add_argument("--label", required=True)
    d.add_argument("--url", default="http://127.0.0.1:8000")
    d.add_argument("--out", required=True)
    t = sub.add_parser("table")
    t.add_argument("dir")
    args = ap.parse_args()
    if args.cmd == "snapshot":
        Path(args.file).write_text(json.dumps(snapshot(args.url)))
    elif args.cmd == "delta":
        result = delta(json.loads(Path(args.file).read_text()), snapshot(args.url), args.label)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps(result))
    else:
        print(table(Path(args.dir)))


if __name__ == "__main__":
    sys.exit(main())

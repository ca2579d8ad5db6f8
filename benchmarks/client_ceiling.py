"""How much load can one client actor drive? Measured against a trivial endpoint that answers at once.

    python3 benchmarks/client_ceiling.py [--out benchmarks/results/client-ceiling-HOST.json] [--concurrency 32]

Runs `rayscale bench` machinery (one client actor, closed loop) against rayscale's TrivialServer
(same protocol, no model) for binary and JSON tensors at 1 and 32 images per request. The server
shares the machine, so the figures are a lower bound on the client's ceiling; the results file
records the client actor's CPU use for each point. Compare them with what a real server reaches:
the client costs under 5% of a measurement when it runs at under 5% of its ceiling.
"""

from __future__ import annotations

import argparse
import socket
import sys

import ray

from rayscale.environment import collect_environment, now_iso
from rayscale.loadgen import BenchConfig, run_bench
from rayscale.loadgen.trivial_server import TrivialServer
from rayscale.results import write_json_atomic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=f"benchmarks/results/client-ceiling-{socket.gethostname()}.json")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--window", type=float, default=2.0)
    args = ap.parse_args()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    points = []
    with TrivialServer() as server:
        for binary, ipr in ((True, 1), (True, 32), (False, 1), (False, 8)):
            cfg = BenchConfig(
                url=server.url,
                concurrency=[args.concurrency],
                images_per_request=[ipr],
                binary=binary,
                clients=1,
                client_cpus=0,
                warmup_s=1.0,
                window_s=args.window,
                duration_s=6 * args.window,
                max_windows=6,
                out=f"/tmp/client-ceiling-{binary}-{ipr}.json",
                overwrite=True,
            )
            p = run_bench(cfg).points[0]
            points.append(p)
            print(
                f"{p.transport:12s} {ipr:3d} img/req: {p.requests_per_s:8.0f} req/s {p.images_per_s:9.0f} img/s "
                f"client CPU {p.client_cpu_pct:5.1f}% p50 {p.latency.p50_ms:.2f} ms",
                file=sys.stderr,
            )
    result = {
        "kind": "client-ceiling",
        "command": " ".join(sys.argv),
        "environment": collect_environment(),
        "ended_at": now_iso(),
        "note": "one client actor, closed loop, trivial server on the same machine (lower bound)",
        "points": [
            {
                "transport": p.transport,
                "images_per_request": p.images_per_request,
                "concurrency": p.concurrency,
                "requests_per_s": p.requests_per_s,
                "images_per_s": p.images_per_s,
                "client_cpu_pct": p.client_cpu_pct,
                "p50_ms": p.latency.p50_ms,
                "p99_ms": p.latency.p99_ms,
                "status": p.status,
            }
            for p in points
        ],
    }
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""The serving path's own ceiling: the app with the null engine (zeros at once), over handle and HTTP.

    python3 benchmarks/serving_overhead.py [--out-dir benchmarks/results/serving-overhead-HOST] [--model DIR]

No model runs, so every request/s and image/s figure is what Ray Serve's proxy or handle path,
rayscale's batcher and the protocol can move on this machine — the ceiling any model served by
this app can reach. One replica, one client actor, closed loop; one results file per transport.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

import ray

from rayscale.config import DEFAULT_MODEL_DIR, ServeConfig
from rayscale.loadgen import BenchConfig, run_bench
from rayscale.serve.cluster import down, up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=f"benchmarks/results/serving-overhead-{socket.gethostname()}")
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="any exported model dir (its model.json is recorded)")
    ap.add_argument("--concurrency", default="16,64")
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--ingress", default="proxy,haproxy", help="ingress modes to compare, in one run")
    args = ap.parse_args()
    out = Path(args.out_dir)
    for ingress in args.ingress.split(","):
        ray.init(address="local", include_dashboard=False, log_to_driver=False, namespace="rayscale")
        app = up(
            ServeConfig(
                model_dir=args.model,
                replicas=1,
                gpus_per_replica=0,
                cpus_per_replica=0.5,
                provider="null",
                port=8000,
                ingress=ingress,
            ),
            exporter=False,
        )
        try:
            common = dict(
                concurrency=[int(c) for c in args.concurrency.split(",")],
                images_per_request=[1, 32],
                clients=1,
                client_cpus=0,
                warmup_s=1.0,
                window_s=args.window,
                duration_s=6 * args.window,
                max_windows=6,
                overwrite=True,
                model_dir=args.model,
            )
            targets = [("http", dict(url=app.url))] + ([("handle", dict(handle=True))] if ingress == "proxy" else [])
            for name, target in targets:
                result = run_bench(BenchConfig(out=str(out / f"null-engine-{ingress}-{name}.json"), **target, **common))
                for p in result.points:
                    print(
                        f"{ingress:8s} {p.transport:12s} {p.images_per_request:3d} img/req c={p.concurrency:3d}: "
                        f"{p.requests_per_s:7.0f} req/s {p.images_per_s:8.0f} img/s p50 {p.latency.p50_ms:6.1f} ms "
                        f"client CPU {p.client_cpu_pct:4.0f}%",
                        file=sys.stderr,
                    )
        finally:
            down(app.app_name)
            ray.shutdown()


if __name__ == "__main__":
    main()

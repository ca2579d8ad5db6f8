"""A third client for cross-checking rayscale bench and perf_analyzer against one v2 server.

    python benchmarks/client_referee.py snapshot URL FILE          # the server's statistics now
    python benchmarks/client_referee.py delta URL FILE [--label L] # per-request server times since FILE
    python benchmarks/client_referee.py tritonclient URL --concurrency 16 --images 32 --seconds 12

``tritonclient`` drives the server with Triton's own Python HTTP client (one client and one
thread per in-flight request, binary tensors) and prints img/s, latency percentiles and the
server-side split (queue, compute input / infer / output per request) over the run. ``delta``
prints the same split for whatever ran between a snapshot and now (for example a
``rayscale bench`` or ``perf_analyzer`` point), so the three clients are compared on what the
server itself measured.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np

from rayscale.config import MODEL_NAME as MODEL
from rayscale.protocol import get_json

PARTS = ("queue", "compute_input", "compute_infer", "compute_output")


def stats(url: str) -> dict:
    s = get_json(f"{url}/v2/models/{MODEL}/stats")["model_stats"][0]
    inf = s["inference_stats"]
    out = {"requests": inf["success"]["count"], "images": s.get("inference_count", 0), "batches": s.get("execution_count", 0)}
    for p in PARTS:
        out[p + "_ns"] = inf[p]["ns"]
    return out


def split(before: dict, after: dict) -> dict:
    d = {k: after[k] - before[k] for k in after}
    n = max(d["requests"], 1)
    res = {"requests": d["requests"], "mean_batch_images": d["images"] / max(d["batches"], 1)}
    for p in PARTS:
        res[p + "_ms_per_request"] = round(d[p + "_ns"] / n / 1e6, 2)
    return res


def run_tritonclient(url: str, concurrency: int, images: int, seconds: float) -> dict:
    import tritonclient.http as http

    host = url.split("://", 1)[-1].rstrip("/")
    data = np.random.default_rng(0).integers(0, 256, size=(images, 224, 224, 3), dtype=np.uint8)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker() -> None:
        client = http.InferenceServerClient(host, connection_timeout=60, network_timeout=60)
        inp = http.InferInput("IMAGE", list(data.shape), "UINT8")
        inp.set_data_from_numpy(data, binary_data=True)
        out = http.InferRequestedOutput("EMBEDDING", binary_data=True)
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                r = client.infer(MODEL, [inp], outputs=[out])
                assert r.as_numpy("EMBEDDING").shape == (images, 512)
            except Exception:
                with lock:
                    errors[0] += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)

    before = stats(url)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.sort(np.asarray(latencies)) * 1000
    return {
        "client": "tritonclient.http (Python, one thread per in-flight request)",
        "concurrency": concurrency,
        "images_per_request": images,
        "images_per_s": round(len(latencies) * images / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
        "errors": errors[0],
        "server": split(before, stats(url)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("snapshot", "delta", "tritonclient"))
    ap.add_argument("url")
    ap.add_argument("file", nargs="?")
    ap.add_argument("--label", default="")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=12.0)
    a = ap.parse_args()
    url = a.url.rstrip("/")
    if a.what == "snapshot":
        with open(a.file, "w") as f:
            json.dump(stats(url), f)
    elif a.what == "delta":
        with open(a.file) as f:
            print(json.dumps({"label": a.label, "server": split(json.load(f), stats(url))}))
    else:
        print(json.dumps(run_tritonclient(url, a.concurrency, a.images, a.seconds)))


if __name__ == "__main__":
    main()

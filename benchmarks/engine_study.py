#!/usr/bin/env python3
"""Engine study: where one batch's GPU time goes, and which engine settings win, in one device call.

    python3 benchmarks/engine_study.py --model-dir models/openclip_vit_b32 --out DIR [--budget-s 270]
    python3 benchmarks/engine_study.py --model-dir DIR --out DIR --device cpu --batch 4 --quick   # rehearsal

Side by side, in one process tree on one card, at one batch size (256 by default), input already on
the GPU: the onnxruntime engine as rayscale runs it (the baseline), each cheap onnxruntime setting
(attention kernel, CUDA graphs, optimisation level, TunableOp, a MultiHeadAttention export), torch
eager fp16 on open_clip's own tower (the reference the targets divide by), rayscale's torch module
(SDPA backends, manual CUDA graphs, torch.compile) and FP8 matrix products (opt-in, reported apart).
Every variant also gets:

* parity: cosine of its embeddings against open_clip fp32 (no TF32) on structured images;
* a kernel profile (CUPTI through torch.profiler, which also sees onnxruntime's kernels): its time by
  operator group beside each group's roofline (``rayscale.engine_profile``); onnxruntime's own
  per-operator profile for the baseline and the best combination.

Each task runs in a worker process under a time cap: a task that fails records its error, one that
hangs or crashes is killed and recorded, and the study goes on with a fresh worker. Tasks run in
priority order while the budget lasts; the rest are recorded as skipped. A second phase combines the
winners (best attention kernel, CUDA graphs if they helped), tries batch 512, the MultiHeadAttention
export, and times the baseline again (the spread between the two baseline runs is the noise floor).

Writes ``DIR/engine_study.json`` (card, driver, versions, command, date, every variant's numbers,
profiles and errors) and ``DIR/engine_study.txt`` (the table printed at the end); worker logs under
``DIR/work/``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

PARITY_IMAGES = 16
PRIMARY_INPUTS = ("device", "cpu")
PARITY_MIN_COSINE = 0.999  # the fp16 target against fp32
TARGET_IMAGES_PER_S = 50_000
TARGET_OVER_TORCH_EAGER = 1.6
RESERVE_S = 50.0  # budget kept for the second phase (combination, baseline again, batch 512)


# ---- the plan ------------------------------------------------------------------------------------


def task(name: str, kind: str, cap_s: float, expected_s: float, **params: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "cap_s": cap_s, "expected_s": expected_s, "params": params}


def plan_first_phase(quick: bool) -> list[dict[str, Any]]:
    """Every variant worth one side-by-side figure, most informative first."""
    tasks = [
        task("setup", "setup", 90, 20),
        task("ort-baseline", "ort", 60, 20, spec="", profile="full", host=True),
        task("torch-eager-openclip", "torch_openclip", 60, 10),
    ]
    for attention in ("flash", "efficient", "cudnn", "math"):
        tasks.append(task(f"ort-attn-{attention}", "ort", 40, 7, spec=f"attention={attention}"))
    tasks += [
        task("ort-cuda-graph", "ort", 40, 8, spec="cuda_graph=1"),
        task("torch-eager", "torch", 90, 25, sdpa=["default", "flash", "efficient", "cudnn", "math"], cuda_graph=True),
    ]
    if not quick:
        tasks.append(task("torch-compile", "torch", 180, 60, sdpa=["default"], compile="default", cuda_graph=True))
    tasks.append(task("torch-fp8", "torch", 60, 15, sdpa=["default"], cuda_graph=True, fp8=True))
    if not quick:
        tasks.append(task("torch-fp8-compile", "torch", 180, 60, sdpa=["default"], compile="default", cuda_graph=True, fp8=True))
    tasks += [
        task("ort-opt-extended", "ort", 40, 7, spec="graph_optimization=extended"),
        task("ort-tunable", "ort", 60, 15, spec="tunable_op=1"),
        # onnxruntime's TensorRT fused kernels are not built for sm_90: expected to fall back (checked, last).
        task("ort-attn-trt", "ort", 40, 7, spec="attention=trt"),
    ]
    if not quick:
        tasks += [
            task("export-mha", "export_mha", 120, 35),
            task(
                "torch-compile-max-autotune",
                "torch",
                300,
                200,
                sdpa=["default"],
                compile="max-autotune-no-cudagraphs",
                cuda_graph=True,
            ),
        ]
    return tasks


def plan_second_phase(results: dict[str, dict[str, Any]], batch: int) -> list[dict[str, Any]]:
    """Combine the first phase's winners; twice the batch; the MHA export; the baseline again."""
    base = _rate(results, "ort-baseline")
    parts = []
    attention = [(n.split("ort-attn-", 1)[1], _rate(results, n)) for n in results if n.startswith("ort-attn-")]
    attention = [(a, r) for a, r in attention if r and _parity_ok(results, f"ort-attn-{a}")]
    if attention and base:
        best, rate = max(attention, key=lambda ar: ar[1])
        if rate > base * 1.01:
            parts.append(f"attention={best}")
    graph = _rate(results, "ort-cuda-graph")
    if graph and base and graph > base * 1.01 and _parity_ok(results, "ort-cuda-graph"):
        parts.append("cuda_graph=1")
    spec = ",".join(parts)
    tasks = []
    if spec:
        tasks.append(task("ort-combined", "ort", 60, 15, spec=spec, profile="full", host=True))
    tasks.append(task("ort-baseline-again", "ort", 40, 8, spec=""))
    tasks.append(task(f"ort-best-batch{2 * batch}", "ort", 40, 10, spec=spec, batch=2 * batch))
    if results.get("export-mha", {}).get("status") == "ok":
        tasks.append(task("ort-mha", "ort", 40, 8, spec=spec, model="mha"))
    baseline = _device_row(results, "ort-baseline") or {}
    if (baseline.get("profile") or {}).get("kernels", {}).get("kernels_per_batch") == 0:
        # CUPTI saw none of onnxruntime's kernels in-process: time them with Nsight Compute instead.
        tasks.append(task("ncu-baseline", "ncu", 120, 40, spec=""))
    return tasks


def _rows(results: dict[str, dict[str, Any]], name: str) -> list[dict[str, Any]]:
    r = results.get(name) or {}
    return r.get("rows") or [] if r.get("status") == "ok" else []


def _device_row(results: dict[str, dict[str, Any]], name: str) -> dict[str, Any] | None:
    rows = [r for r in _rows(results, name) if r.get("input") in PRIMARY_INPUTS and r.get("images_per_s")]
    return rows[0] if rows else None


def _rate(results: dict[str, dict[str, Any]], name: str) -> float | None:
    row = _device_row(results, name)
    return row["images_per_s"] if row else None


def _parity_ok(results: dict[str, dict[str, Any]], name: str) -> bool:
    row = _device_row(results, name)
    parity = (row or {}).get("parity") or {}
    return parity.get("min_cosine", 1.0) >= PARITY_MIN_COSINE  # no reference: speed decides alone


# ---- the parent: workers under time caps ----------------------------------------------------------


class Runner:
    """Runs tasks in worker processes, one at a time, each under its cap and the study's budget."""

    def __init__(self, args: argparse.Namespace, work: Path, deadline: float):
        self.args = args
        self.work = work
        self.deadline = deadline
        self.results: dict[str, dict[str, Any]] = {}
        self._workers = 0

    def run(self, tasks: list[dict[str, Any]], reserve_s: float) -> None:
        pending = [t for t in tasks if self._wanted(t["name"])]
        while pending:
            pending = self._one_worker(pending, reserve_s)

    def _wanted(self, name: str) -> bool:
        only, skip = self.args.only, self.args.skip
        return (not only or name in only) and name not in skip

    def _one_worker(self, pending: list[dict[str, Any]], reserve_s: float) -> list[dict[str, Any]]:
        self._workers += 1
        spec_path = self.work / f"worker-{self._workers}.json"
        events_path = self.work / f"worker-{self._workers}.events.jsonl"
        log_path = self.work / f"worker-{self._workers}.log"
        spec = {
            "model_dir": str(Path(self.args.model_dir).resolve()),
            "device": self.args.device,
            "batch": self.args.batch,
            "min_time_s": self.args.min_time_s,
            "quick": self.args.quick,
            "work": str(self.work.resolve()),
            "events": str(events_path),
            "deadline": self.deadline,
            "reserve_s": reserve_s,
            "tasks": pending,
        }
        spec_path.write_text(json.dumps(spec, indent=1))
        by_name = {t["name"]: t for t in pending}
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=str(ROOT),
            )
        current: str | None = None
        started = 0.0
        offset = 0
        killed_for = None
        while True:
            offset, events = _read_events(events_path, offset)
            for e in events:
                if e["event"] == "start":
                    current, started = e["task"], time.time()
                    _say(f"[{time.strftime('%H:%M:%S')}] {current} ...")
                elif e["event"] == "done":
                    self._record(e["task"], e["result"])
                    current = None
            if proc.poll() is not None:
                offset, events = _read_events(events_path, offset)
                for e in events:
                    if e["event"] == "done":
                        self._record(e["task"], e["result"])
                        current = None if e["task"] == current else current
                break
            now = time.time()
            if current is not None:
                # The cap, or the budget (less the reserve for what comes after), whichever comes first.
                stop_at = min(started + self._cap(by_name[current]), max(self.deadline - reserve_s, started + 5))
                if now > stop_at:
                    killed_for = current
                    _kill(proc)
                    break
            time.sleep(0.2)
        if killed_for is not None:
            self._record(
                killed_for,
                {
                    "status": "timeout",
                    "error": f"killed after {time.time() - started:.0f} s "
                    f"(cap {by_name[killed_for]['cap_s']:.0f} s or the study's budget)",
                    "log_tail": _tail(log_path),
                },
            )
        elif current is not None:
            self._record(
                current, {"status": "crashed", "error": f"worker exited with code {proc.returncode}", "log_tail": _tail(log_path)}
            )
        elif not any(t["name"] in self.results for t in pending):
            # The worker ended without finishing any task (it could not start): a new one would not either.
            for t in pending:
                self._record(
                    t["name"],
                    {
                        "status": "crashed",
                        "error": f"worker exited with code {proc.returncode} before the task",
                        "log_tail": _tail(log_path),
                    },
                )
        return [t for t in pending if t["name"] not in self.results]

    def _cap(self, t: dict[str, Any]) -> float:
        """A task's cap; a CPU rehearsal (one shared machine, no GPU) gets three times the GPU's."""
        return t["cap_s"] * (3 if self.args.device == "cpu" and t["kind"] != "selftest" else 1)

    def _record(self, name: str, result: dict[str, Any]) -> None:
        self.results[name] = result
        status = result.get("status")
        rate = ""
        for row in result.get("rows") or []:
            if row.get("input") in PRIMARY_INPUTS and row.get("images_per_s"):
                rate = f" {row['images_per_s']:,.0f} img/s"
                break
        _say(f"    {name}: {status}{rate}" + (f" ({result.get('error')})" if status != "ok" and result.get("error") else ""))


def _read_events(path: Path, offset: int) -> tuple[int, list[dict[str, Any]]]:
    try:
        with open(path) as f:
            f.seek(offset)
            text = f.read()
    except FileNotFoundError:
        return offset, []
    complete = text[: text.rfind("\n") + 1]
    events = [json.loads(line) for line in complete.splitlines() if line.strip()]
    return offset + len(complete.encode()), events


def _kill(proc: subprocess.Popen) -> None:
    """Stop the worker and what it started (inductor's compile workers): its own process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _say(text: str) -> None:
    print(text, flush=True)


# ---- the worker ----------------------------------------------------------------------------------


class Context:
    """What a worker's tasks share: the model, the parity images and their fp32 reference."""

    def __init__(self, spec: dict[str, Any]):
        from rayscale.export import load_model_info, parity_batch

        self.spec = spec
        self.model_dir = spec["model_dir"]
        self.info = load_model_info(self.model_dir)
        self.batch = spec["batch"]
        self.cuda = spec["device"] == "cuda"
        # The main figure's input: already on the GPU, or (rehearsing on a CPU) the CPU engine's own.
        self.primary_input = "device" if self.cuda else "cpu"
        self.work = Path(spec["work"])
        self.parity_images = parity_batch(PARITY_IMAGES, seed=0)
        self._reference: np.ndarray | None = None

    @property
    def reference(self) -> np.ndarray | None:
        if self._reference is None:
            path = self.work / "reference.npy"
            if path.is_file():
                self._reference = np.load(path)
        return self._reference

    def parity(self, embeddings: np.ndarray) -> dict[str, Any] | None:
        from rayscale.export import cosine_rows

        ref = self.reference
        if ref is None:
            return None
        got = np.asarray(embeddings, dtype=np.float32)[: len(ref)]
        if len(got) < len(ref):
            return {"error": f"{len(got)} embeddings for {len(ref)} reference images"}
        cos = cosine_rows(ref, got)
        return {
            "min_cosine": float(cos.min()),
            "mean_cosine": float(cos.mean()),
            "images": int(len(ref)),
            "reference": "open_clip fp32" + (" on the GPU, TF32 off" if self.cuda else " on the CPU"),
        }

    def inputs(self, batch: int, count: int = 3) -> list[np.ndarray]:
        """Random uint8 batches to rotate through (repeated runs over one buffer would time the cache)."""
        from rayscale.engine import random_images

        return [random_images(batch, seed=batch * 10 + k) for k in range(count)]


def timed(
    prepare: Callable[[int], Any],
    run: Callable[[], Any],
    batch: int,
    min_time_s: float,
    *,
    warmup: int = 5,
    min_iterations: int = 10,
) -> dict[str, Any]:
    """Images/s over many runs; ``prepare(i)`` (not timed) stages iteration i's input, ``run`` must
    return with its GPU work done. Warm-up runs are left out."""
    for i in range(warmup):
        prepare(i)
        run()
    times = []
    end = time.perf_counter() + min_time_s
    while len(times) < min_iterations or time.perf_counter() < end:
        prepare(len(times))
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    t = np.asarray(times)
    return {
        "images_per_s": batch * len(t) / float(t.sum()),
        "ms_per_batch_mean": float(t.mean() * 1000),
        "ms_per_batch_p50": float(np.percentile(t, 50) * 1000),
        "ms_per_batch_p10": float(np.percentile(t, 10) * 1000),
        "ms_per_batch_p90": float(np.percentile(t, 90) * 1000),
        "iterations": int(len(t)),
    }


def _peaks(ctx: Context):
    from rayscale.engine_profile import Peaks

    path = ctx.work / "peaks.json"
    if path.is_file():
        return Peaks(**json.loads(path.read_text()))
    import torch

    from rayscale.engine_profile import datasheet_peaks

    return datasheet_peaks(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")


def kernel_profile(ctx: Context, run: Callable[[], Any], batch: int) -> dict[str, Any] | None:
    """The kernel profile of one batch (CUDA only), trimmed for the results file."""
    if not ctx.cuda:
        return None
    from rayscale.engine_profile import profile_batch

    result = profile_batch(run, batch, _peaks(ctx), iterations=5).to_dict(top_kernels=25)
    result["attention_kernels"] = [k["name"][:160] for k in result["kernels"]["kernels"] if k["group"] == "attention"][:4]
    return result


def attention_label(profile: dict[str, Any] | None) -> str | None:
    """Which attention implementation ran, read off the kernel names."""
    if not profile:
        return None
    names = " ".join(profile.get("attention_kernels") or [])
    for label, needle in (
        ("cudnn", "cudnn"),
        ("flash", "flash"),
        ("efficient", "fmha_cutlass"),
        ("trt-fused", "fmha_v2"),
        ("efficient", "cutlass"),
        ("unfused", "oft"),
    ):
        if needle.lower() in names.lower():
            return label
    return "unknown" if names else "none seen"


# ---- tasks: setup ----------------------------------------------------------------------------------


def task_setup(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """Card ceilings (fp16 matrix rate, copy bandwidth) and the fp32 reference embeddings."""
    import torch

    from rayscale.export import reference_embeddings
    from rayscale.torch_engine import load_visual_for

    out: dict[str, Any] = {"status": "ok", "rows": []}
    if ctx.cuda:
        from rayscale.engine_profile import measure_peaks

        peaks = measure_peaks(0)
        (ctx.work / "peaks.json").write_text(json.dumps(peaks.__dict__))
        out["peaks"] = peaks.__dict__
    visual = load_visual_for(ctx.info)
    if ctx.cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        dev = torch.device("cuda", 0)
        mean = torch.tensor(ctx.info.preprocessing["mean"], device=dev).view(1, 3, 1, 1)
        std = torch.tensor(ctx.info.preprocessing["std"], device=dev).view(1, 3, 1, 1)
        with torch.inference_mode():
            x = torch.from_numpy(ctx.parity_images).to(dev).permute(0, 3, 1, 2).float().div(255).sub(mean).div(std)
            ref = visual.to(dev)(x).float().cpu().numpy()
    else:
        ref = reference_embeddings(visual, ctx.parity_images)
    np.save(ctx.work / "reference.npy", ref)
    out["reference"] = {"images": PARITY_IMAGES, "model": "open_clip fp32", "weights": ctx.info.weights}
    return out


# ---- tasks: onnxruntime ----------------------------------------------------------------------------


def task_ort(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """One onnxruntime setting: the engine as rayscale builds it, timed on input already on the GPU."""
    from rayscale.engine import Engine
    from rayscale.engine_options import EngineOptions

    batch = params.get("batch") or ctx.batch
    options = EngineOptions.parse(params.get("spec", ""))
    model = ctx.model_dir
    if params.get("model") == "mha":
        model = str(ctx.work / "model-mha")
    t0 = time.perf_counter()
    engine = Engine(
        model, provider="cuda" if ctx.cuda else "cpu", max_batch_size=max(batch, PARITY_IMAGES), options=options, warmup=False
    )
    session_s = time.perf_counter() - t0
    settings = {
        "engine_options": options.spec() or "(defaults)",
        "model": Path(model).name,
        "provider_options": engine.session.get_provider_options().get("CUDAExecutionProvider"),
    }
    rows = []
    prepare, run, keep = ort_runner(ctx, engine.session, options, batch)
    stats = timed(prepare, run, batch, ctx.spec["min_time_s"])
    profile = kernel_profile(ctx, run, batch) if params.get("profile", "light") else None
    row = {
        "variant": "",
        "engine": "onnxruntime",
        "input": ctx.primary_input,
        "batch": batch,
        **stats,
        "settings": settings,
        "parity": ctx.parity(runner_embeddings(ctx, engine.session, options, batch)),
        "engine_parity": ctx.parity(engine_embeddings(ctx, engine)),
        "attention_kernel": attention_label(profile),
        "profile": profile,
        "session_s": round(session_s, 2),
    }
    if params.get("profile") == "full":
        row["ort_nodes"] = ort_nodes(ctx, engine, batch)
    rows.append(row)
    if params.get("host"):
        rows += host_rows(ctx, engine, batch)
    del keep
    return {"status": "ok", "rows": rows}


_GRAPH_IDS = itertools.count(10_000)


def ort_runner(ctx: Context, session, options, batch: int):
    """(prepare, run, buffers) for one batch on ``session``: on CUDA the input sits in a fixed GPU buffer
    (a CUDA graph replays fixed addresses) refilled from a rotation before each run."""
    from rayscale.config import INPUT_NAME, OUTPUT_NAME

    inputs = ctx.inputs(batch)
    if not ctx.cuda:
        return (lambda i: None), _cpu_run(session, inputs), None
    import onnxruntime as ort
    import torch

    sources = [torch.from_numpy(x).cuda() for x in inputs]
    dev = torch.empty_like(sources[0])
    out = torch.empty((batch, 512), dtype=torch.float32, device="cuda")
    binding = session.io_binding()
    binding.bind_input(INPUT_NAME, "cuda", 0, np.uint8, list(dev.shape), dev.data_ptr())
    binding.bind_output(OUTPUT_NAME, "cuda", 0, np.float32, list(out.shape), out.data_ptr())
    run_options = None
    if options.cuda_graph:
        run_options = ort.RunOptions()
        # A graph replays the addresses it was captured with: new buffers need a new id (and apart from the engine's).
        run_options.add_run_config_entry("gpu_graph_id", str(next(_GRAPH_IDS)))

    def prepare(i: int) -> None:
        dev.copy_(sources[i % len(sources)])
        torch.cuda.synchronize()

    def run() -> None:
        session.run_with_iobinding(binding, run_options)

    return prepare, run, (sources, dev, out)


def runner_embeddings(ctx: Context, session, options, batch: int) -> np.ndarray:
    """The parity images through the timed path itself (on CUDA: the bound buffers, a replayed graph)."""
    rows = max(batch, PARITY_IMAGES)
    images = np.resize(ctx.parity_images, (rows, *ctx.parity_images.shape[1:]))
    if not ctx.cuda:
        from rayscale.config import INPUT_NAME

        return session.run(None, {INPUT_NAME: images})[0]
    import torch

    prepare, run, (sources, dev, out) = ort_runner(ctx, session, options, rows)
    for _ in range(4 if options.cuda_graph else 1):  # past onnxruntime's warm-up runs: a graph captured and replayed
        dev.copy_(torch.from_numpy(images).cuda())
        torch.cuda.synchronize()
        run()
    return out[:PARITY_IMAGES].cpu().numpy()


def engine_embeddings(ctx: Context, engine) -> np.ndarray:
    """The parity images through ``Engine.encode`` (its own buffers and, with cuda_graph, its graphs)."""
    for _ in range(4 if engine.options.cuda_graph and ctx.cuda else 1):
        embeddings = engine.encode(ctx.parity_images)
    return embeddings


def _cpu_run(session, inputs):
    from rayscale.config import INPUT_NAME

    state = {"i": 0}

    def run() -> None:
        state["i"] += 1
        session.run(None, {INPUT_NAME: inputs[state["i"] % len(inputs)]})

    return run


def ort_nodes(ctx: Context, engine, batch: int) -> dict[str, Any] | None:
    """onnxruntime's per-operator host-side profile of the same session settings."""
    from rayscale.engine_profile import ort_node_profile

    def make_run(session):
        prepare, run, keep = ort_runner(ctx, session, engine.options, batch)
        make_run.keep = keep  # the bound buffers live as long as the profile runs
        return lambda: (prepare(0), run())

    return ort_node_profile(engine.session, make_run)


def host_rows(ctx: Context, engine, batch: int) -> list[dict[str, Any]]:
    """The engine fed from host memory: one batch at a time, and as a replica runs (4 batches in flight)."""
    inputs = ctx.inputs(batch)
    rows = []
    stats = timed(lambda i: None, _rotating(lambda x: engine.encode(x), inputs), batch, ctx.spec["min_time_s"])
    rows.append({"variant": "host", "engine": "onnxruntime", "input": "host", "batch": batch, **stats})
    if engine.provider == "cuda":
        rows.append(
            {
                "variant": "host-4-in-flight",
                "engine": "onnxruntime",
                "input": "host-4-in-flight",
                "batch": batch,
                **in_flight(engine, inputs, batch, ctx.spec["min_time_s"], threads=4),
            }
        )
    return rows


def _rotating(fn: Callable[[np.ndarray], Any], inputs: list[np.ndarray]) -> Callable[[], Any]:
    state = {"i": 0}

    def run() -> Any:
        state["i"] += 1
        return fn(inputs[state["i"] % len(inputs)])

    return run


def in_flight(engine, inputs: list[np.ndarray], batch: int, min_time_s: float, *, threads: int) -> dict[str, Any]:
    """Images/s with ``threads`` threads each running whole batches through ``encode_parts``."""
    for x in inputs:
        engine.encode_parts([x])
    stop = time.perf_counter() + min_time_s
    counts = [0] * threads
    errors: list[str] = []

    def loop(k: int) -> None:
        try:
            while time.perf_counter() < stop:
                engine.encode_parts([inputs[(k + counts[k]) % len(inputs)]])
                counts[k] += 1
        except Exception as e:  # recorded, not raised: the other threads' figure still stands
            errors.append(f"{type(e).__name__}: {e}")

    t0 = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    out = {"images_per_s": batch * sum(counts) / wall, "iterations": sum(counts), "threads": threads}
    if errors:
        out["errors"] = errors[:3]
    return out


def task_export_mha(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """The same weights exported with onnxruntime's MultiHeadAttention fusion instead of Attention."""
    import tempfile

    from rayscale.export import _optimize, _torch_export, build_export_module
    from rayscale.torch_engine import load_visual_for

    visual = load_visual_for(ctx.info)
    module, _ = build_export_module(visual)
    target = ctx.work / "model-mha"
    target.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ctx.work) as tmp:
        raw = Path(tmp) / "raw.onnx"
        _torch_export(module, raw, ctx.info.opset)
        fused = _optimize(raw, target / "model.onnx", ctx.info.precision, fusion={"use_multi_head_attention": True})
    (target / "model.json").write_text((Path(ctx.model_dir) / "model.json").read_text())
    if not fused.get("MultiHeadAttention"):
        return {"status": "error", "error": f"the optimizer fused no MultiHeadAttention (fused: {fused})", "fused": fused}
    return {"status": "ok", "fused": fused, "rows": []}


# ---- tasks: torch ----------------------------------------------------------------------------------


def task_torch_openclip(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """torch eager on open_clip's own tower (fp16 on a GPU): normalised NCHW input on the device."""
    import copy

    import torch

    from rayscale.torch_engine import load_visual_for

    batch = ctx.batch
    dev = torch.device("cuda", 0) if ctx.cuda else torch.device("cpu")
    dtype = torch.float16 if ctx.cuda else torch.float32
    visual = copy.deepcopy(load_visual_for(ctx.info)).to(dev, dtype).eval()
    mean = torch.tensor(ctx.info.preprocessing["mean"], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(ctx.info.preprocessing["std"], device=dev).view(1, 3, 1, 1)

    def normalise(images: np.ndarray):
        return torch.from_numpy(images).to(dev).permute(0, 3, 1, 2).float().div(255).sub(mean).div(std).to(dtype)

    sources = [normalise(x) for x in ctx.inputs(batch)]
    x = sources[0].clone()
    sync = torch.cuda.synchronize if ctx.cuda else (lambda: None)

    def prepare(i: int) -> None:
        x.copy_(sources[i % len(sources)])
        sync()

    def run() -> None:
        visual(x)
        sync()

    with torch.inference_mode():
        stats = timed(prepare, run, batch, ctx.spec["min_time_s"])
        profile = kernel_profile(ctx, run, batch)
        emb = visual(normalise(ctx.parity_images)).float().cpu().numpy()
    row = {
        "variant": "",
        "engine": "torch",
        "input": ctx.primary_input,
        "batch": batch,
        **stats,
        "settings": {"module": "open_clip visual (nn.MultiheadAttention)", "dtype": str(dtype), "torch": torch.__version__},
        "parity": ctx.parity(emb),
        "attention_kernel": attention_label(profile),
        "profile": profile,
    }
    return {"status": "ok", "rows": [row]}


def task_torch(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """rayscale's torch module (uint8 NHWC in, SDPA attention): SDPA backends, compile, CUDA graphs, FP8."""
    import torch

    from rayscale.torch_engine import build_torch_encoder, load_visual_for

    batch = ctx.batch
    dev = torch.device("cuda", 0) if ctx.cuda else torch.device("cpu")
    dtype = torch.float16 if ctx.cuda else torch.float32
    module = build_torch_encoder(load_visual_for(ctx.info)).to(dev, dtype)
    settings: dict[str, Any] = {
        "module": "rayscale.torch_engine (fused qkv, SDPA)",
        "dtype": str(dtype),
        "torch": torch.__version__,
    }
    if params.get("fp8"):
        from rayscale.export import parity_batch

        calibration = torch.from_numpy(parity_batch(32, seed=7)).to(dev)
        settings["fp8"] = fp8_linears(module, calibration)
    forward = module
    compile_s = None
    if params.get("compile"):
        mode = None if params["compile"] == "default" else params["compile"]
        forward = torch.compile(module, mode=mode, dynamic=False)
        settings["compile"] = params["compile"]
    sources = [torch.from_numpy(x).to(dev) for x in ctx.inputs(batch)]
    x = sources[0].clone()
    # At the timed batch size where it holds them all (a compiled model then meets no new shape).
    rows_needed = max(batch, PARITY_IMAGES)
    parity_input = torch.from_numpy(np.resize(ctx.parity_images, (rows_needed, *ctx.parity_images.shape[1:]))).to(dev)
    sync = torch.cuda.synchronize if ctx.cuda else (lambda: None)

    def prepare(i: int) -> None:
        x.copy_(sources[i % len(sources)])
        sync()

    rows = []
    with torch.inference_mode():
        if params.get("compile"):
            t0 = time.perf_counter()
            forward(x)
            sync()
            compile_s = round(time.perf_counter() - t0, 1)
            settings["compile_s"] = compile_s
        for sdpa in params.get("sdpa", ["default"]):
            label = f"sdpa-{sdpa}"
            try:
                with sdpa_backend(sdpa):

                    def run() -> None:
                        forward(x)
                        sync()

                    stats = timed(prepare, run, batch, ctx.spec["min_time_s"])
                    profile = kernel_profile(ctx, run, batch)
                    emb = forward(parity_input)[:PARITY_IMAGES].float().cpu().numpy()
                    rows.append(
                        {
                            "variant": label,
                            "engine": "torch",
                            "input": ctx.primary_input,
                            "batch": batch,
                            **stats,
                            "settings": {**settings, "sdpa": sdpa},
                            "parity": ctx.parity(emb),
                            "attention_kernel": attention_label(profile),
                            "profile": profile,
                        }
                    )
            except Exception as e:  # one backend that cannot run this shape: the others still count
                rows.append(
                    {
                        "variant": label,
                        "engine": "torch",
                        "input": ctx.primary_input,
                        "batch": batch,
                        "status": "error",
                        "error": f"{type(e).__name__}: {str(e)[:300]}",
                    }
                )
        if params.get("cuda_graph") and ctx.cuda:
            rows.append(graph_row(ctx, forward, x, prepare, parity_input, batch, settings))
    return {"status": "ok", "rows": rows}


def graph_row(ctx: Context, forward, x, prepare, parity_input, batch: int, settings: dict[str, Any]) -> dict[str, Any]:
    """The same forward captured once as a CUDA graph and replayed (no launch gaps)."""
    import torch

    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                forward(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = forward(x)

        def run() -> None:
            graph.replay()
            torch.cuda.synchronize()

        stats = timed(prepare, run, batch, ctx.spec["min_time_s"])
        profile = kernel_profile(ctx, run, batch)
        emb = None
        if parity_input.shape == x.shape:
            x.copy_(parity_input)
            run()
            emb = out[:PARITY_IMAGES].float().cpu().numpy()
        return {
            "variant": "cuda-graph",
            "engine": "torch",
            "input": "device",
            "batch": batch,
            **stats,
            "settings": {**settings, "sdpa": "default", "cuda_graph": True},
            "parity": ctx.parity(emb) if emb is not None else None,
            "attention_kernel": attention_label(profile),
            "profile": profile,
        }
    except Exception as e:
        return {
            "variant": "cuda-graph",
            "engine": "torch",
            "input": ctx.primary_input,
            "batch": batch,
            "status": "error",
            "error": f"{type(e).__name__}: {str(e)[:300]}",
        }


def sdpa_backend(name: str):
    import contextlib

    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]
    return sdpa_kernel([backend])


def fp8_linears(module, calibration) -> dict[str, Any]:
    """Replace each block's linear layers by FP8 (e4m3) matrix products with static per-tensor scales.

    Weight scales come from the weights; activation scales from the largest input each layer saw on
    calibration images (other images than the parity check's). Opt-in only: parity is reported.
    """
    import torch
    from torch import nn

    targets = [(blk, name) for blk in module.blocks for name in ("qkv", "out", "fc", "proj")]
    amax: dict[int, float] = {}
    hooks = []

    def record_amax(key: int, _module: Any, inp: tuple) -> None:
        amax[key] = max(amax.get(key, 0.0), float(inp[0].abs().max()))

    for blk, name in targets:
        lin = getattr(blk, name)
        hooks.append(lin.register_forward_pre_hook(functools.partial(record_amax, id(lin))))
    with torch.inference_mode():
        module(calibration)
    for h in hooks:
        h.remove()
    fp8_max = 448.0

    class Fp8Linear(nn.Module):
        def __init__(self, lin: nn.Linear, act_amax: float):
            super().__init__()
            w = lin.weight.detach().float()
            w_scale = w.abs().max().clamp(min=1e-12) / fp8_max
            self.register_buffer("w", (w / w_scale).to(torch.float8_e4m3fn).t())  # column-major, as _scaled_mm wants
            self.register_buffer("w_scale", w_scale.reshape(()).float())
            x_scale = max(act_amax, 1e-6) / fp8_max
            self.register_buffer("x_scale", torch.tensor(x_scale, device=w.device, dtype=torch.float32))
            self.x_inv = 1.0 / x_scale
            self.register_buffer("bias", lin.bias.detach().to(torch.float16))

        def forward(self, x):
            lead = x.shape[:-1]
            xq = (x.reshape(-1, x.shape[-1]) * self.x_inv).clamp(-fp8_max, fp8_max).to(torch.float8_e4m3fn)
            y = torch._scaled_mm(
                xq,
                self.w,
                scale_a=self.x_scale,
                scale_b=self.w_scale,
                bias=self.bias,
                out_dtype=torch.float16,
                use_fast_accum=True,
            )
            return y.reshape(*lead, -1)

    for blk, name in targets:
        lin = getattr(blk, name)
        setattr(blk, name, Fp8Linear(lin, amax[id(lin)]))
    return {
        "layers": len(targets),
        "scales": "static per tensor (weights: their max; activations: calibration max)",
        "calibration_images": int(calibration.shape[0]),
    }


_NCU_TARGET = """
import sys
sys.path.insert(0, {root!r})
import numpy as np, torch
from rayscale.engine import Engine, random_images
from rayscale.engine_options import EngineOptions
engine = Engine({model!r}, provider="cuda", max_batch_size={batch}, options=EngineOptions.parse({spec!r}), warmup=False)
binding = engine.session.io_binding()
x = torch.from_numpy(random_images({batch})).cuda()
out = torch.empty(({batch}, 512), dtype=torch.float32, device="cuda")
binding.bind_input("IMAGE", "cuda", 0, np.uint8, list(x.shape), x.data_ptr())
binding.bind_output("EMBEDDING", "cuda", 0, np.float32, list(out.shape), out.data_ptr())
for _ in range(3):
    engine.session.run_with_iobinding(binding)
torch.cuda.nvtx.range_push("batch")
engine.session.run_with_iobinding(binding)
torch.cuda.nvtx.range_pop()
"""


def task_ncu(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """One batch's kernels timed by Nsight Compute (each kernel alone, serialised): the fallback
    when CUPTI in-process sees no kernels."""
    import csv
    import glob
    import shutil

    from rayscale.engine_profile import group_times, summarize_kernels, vit_b32_work

    ncu = shutil.which("ncu") or next(iter(sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu"))), None)
    if ncu is None:
        return {"status": "error", "error": "ncu not found on PATH or under /opt/nvidia/nsight-compute"}
    batch = params.get("batch") or ctx.batch
    script = _NCU_TARGET.format(root=str(ROOT), model=ctx.model_dir, batch=batch, spec=params.get("spec", ""))
    cmd = [
        ncu,
        "--clock-control",
        "none",
        "--nvtx",
        "--nvtx-include",
        "batch/",
        "--metrics",
        "gpu__time_duration.sum",
        "--csv",
        "--page",
        "raw",
        sys.executable,
        "-c",
        script,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110)
    lines = [line for line in proc.stdout.splitlines() if line.startswith('"')]
    rows = list(csv.DictReader(lines))
    scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}
    unit = scale.get((rows[0] if rows else {}).get("gpu__time_duration.sum", ""), 1e-3)
    events, t = [], 0.0
    for r in rows[1:]:
        try:
            dur = float(r["gpu__time_duration.sum"].replace(",", "")) * unit
        except (KeyError, ValueError):
            continue
        events.append((r.get("Kernel Name", "?"), t, t + dur))
        t += dur
    if not events:
        return {
            "status": "error",
            "error": f"ncu reported no kernels (exit {proc.returncode})",
            "log_tail": (proc.stdout + proc.stderr)[-2000:],
        }
    profile = summarize_kernels(events, 1, float("nan"))
    groups = group_times(profile, vit_b32_work(batch), _peaks(ctx))
    return {
        "status": "ok",
        "rows": [],
        "ncu": {
            "kernels_per_batch": profile.kernels_per_batch,
            "kernel_ms_per_batch": profile.kernel_ms_per_batch,
            "groups": [g.__dict__ for g in groups],
            "kernels": [k.__dict__ for k in profile.kernels[:25]],
        },
    }


def task_selftest(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """For the study's own test: a task that sleeps past its cap, or a worker that dies."""
    if params.get("mode") == "sleep":
        time.sleep(params.get("seconds", 60))
    if params.get("mode") == "crash":
        os._exit(3)
    if params.get("mode") == "raise":
        raise RuntimeError("a failing variant")
    return {"status": "ok", "rows": []}


KINDS: dict[str, Callable[[Context, dict[str, Any]], dict[str, Any]]] = {
    "setup": task_setup,
    "ort": task_ort,
    "export_mha": task_export_mha,
    "torch_openclip": task_torch_openclip,
    "torch": task_torch,
    "ncu": task_ncu,
    "selftest": task_selftest,
}


def worker_main(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    events = open(spec["events"], "a", buffering=1)

    def emit(event: str, name: str, **extra: Any) -> None:
        events.write(json.dumps({"event": event, "task": name, "t": time.time(), **extra}, default=str) + "\n")
        events.flush()

    if spec["device"] == "cuda":
        _load_onnxruntime_cuda()
    ctx = Context(spec)
    for t in spec["tasks"]:
        remaining = spec["deadline"] - spec["reserve_s"] - time.time()
        if t["expected_s"] > remaining:
            emit(
                "done",
                t["name"],
                result={
                    "status": "skipped",
                    "error": f"budget: {max(remaining, 0):.0f} s left, the task takes ~{t['expected_s']:.0f} s",
                },
            )
            continue
        emit("start", t["name"])
        t0 = time.perf_counter()
        try:
            result = KINDS[t["kind"]](ctx, t["params"])
        except Exception as e:  # a failing variant is a result, and the study goes on
            result = {
                "status": "error",
                "error": f"{type(e).__name__}: {str(e)[:500]}",
                "traceback": traceback.format_exc()[-2000:],
            }
        result["seconds"] = round(time.perf_counter() - t0, 1)
        emit("done", t["name"], result=result)
        _cleanup()
    return 0


def _load_onnxruntime_cuda() -> None:
    """Load onnxruntime's CUDA provider (and the CUDA libraries it links) before torch loads its own:
    the order ``rayscale engine-bench`` runs them in on the GPU machine. Not fatal when it fails."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        model = helper.make_model(
            helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y]),
            opset_imports=[helper.make_opsetid("", 17)],
        )
        model.ir_version = 8
        ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    except Exception as e:  # the tasks that need it will say what is wrong
        print(f"onnxruntime CUDA probe failed: {type(e).__name__}: {e}", flush=True)


def _cleanup() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    except ImportError:
        pass


# ---- summary ---------------------------------------------------------------------------------------


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every variant as one row, ratios against the baseline and torch eager, the targets checked."""
    base = _rate(results, "ort-baseline")
    torch_eager = _rate(results, "torch-eager-openclip")
    table = []
    for name, result in results.items():
        rows = result.get("rows") or []
        if result.get("status") != "ok" or not rows:
            if name != "setup" and result.get("status") != "ok":
                table.append({"variant": name, "status": result.get("status"), "error": result.get("error")})
            continue
        for row in rows:
            label = f"{name}/{row['variant']}" if row.get("variant") else name
            entry = {"variant": label, "status": row.get("status", "ok"), "input": row.get("input"), "batch": row.get("batch")}
            if entry["status"] != "ok":
                entry["error"] = row.get("error")
                table.append(entry)
                continue
            rate = row.get("images_per_s")
            entry.update(
                {
                    "images_per_s": rate,
                    "ms_per_batch_p50": row.get("ms_per_batch_p50"),
                    "over_baseline": rate / base if rate and base and row.get("input") in PRIMARY_INPUTS else None,
                    "over_torch_eager": rate / torch_eager
                    if rate and torch_eager and row.get("input") in PRIMARY_INPUTS
                    else None,
                    "min_cosine": (row.get("parity") or {}).get("min_cosine"),
                    "attention_kernel": row.get("attention_kernel"),
                    "fp8": bool((row.get("settings") or {}).get("fp8")),
                }
            )
            table.append(entry)
    fp16 = [
        r
        for r in table
        if r.get("status") == "ok"
        and r.get("input") in PRIMARY_INPUTS
        and r.get("images_per_s")
        and not r.get("fp8")
        and (r.get("min_cosine") is None or r["min_cosine"] >= PARITY_MIN_COSINE)
    ]
    best = max(fp16, key=lambda r: r["images_per_s"]) if fp16 else None
    again = _rate(results, "ort-baseline-again")
    targets = None
    if best:
        targets = {
            "best_variant": best["variant"],
            "images_per_s": best["images_per_s"],
            "images_per_s_target": TARGET_IMAGES_PER_S,
            "over_torch_eager": best.get("over_torch_eager"),
            "over_torch_eager_target": TARGET_OVER_TORCH_EAGER,
            "min_cosine": best.get("min_cosine"),
            "min_cosine_target": PARITY_MIN_COSINE,
            "met": {
                "images_per_s": best["images_per_s"] >= TARGET_IMAGES_PER_S,
                "over_torch_eager": (best.get("over_torch_eager") or 0) >= TARGET_OVER_TORCH_EAGER,
                "parity": best.get("min_cosine") is not None and best["min_cosine"] >= PARITY_MIN_COSINE,
            },
        }
    return {
        "baseline_images_per_s": base,
        "baseline_again_images_per_s": again,
        "baseline_spread": abs(again - base) / base if again and base else None,
        "torch_eager_images_per_s": torch_eager,
        "targets": targets,
        "table": table,
    }


def render(summary: dict[str, Any], results: dict[str, dict[str, Any]], env: dict[str, Any]) -> str:
    gpus = ", ".join(g["name"] for g in env.get("gpus") or []) or "CPU"
    lines = [f"engine study: {gpus}, driver {env.get('gpu_driver')}, {env.get('collected_at')}"]
    head = f"{'variant':44s} {'input':16s} {'img/s':>9s} {'ms p50':>7s} {'×base':>6s} {'×torch':>6s} {'min cos':>8s}  attention / status"
    lines += [head, "-" * len(head)]
    for r in summary["table"]:
        if r.get("status") != "ok":
            lines.append(
                f"{r['variant']:44s} {'':16s} {'':>9s} {'':>7s} {'':>6s} {'':>6s} {'':>8s}  {r.get('status')}: {str(r.get('error'))[:70]}"
            )
            continue

        def f(v, fmt):
            return format(v, fmt) if isinstance(v, (int, float)) else "-"

        lines.append(
            f"{r['variant']:44s} {str(r.get('input')):16s} {f(r.get('images_per_s'), ',.0f'):>9s} "
            f"{f(r.get('ms_per_batch_p50'), '.2f'):>7s} {f(r.get('over_baseline'), '.2f'):>6s} "
            f"{f(r.get('over_torch_eager'), '.2f'):>6s} {f(r.get('min_cosine'), '.5f'):>8s}  {r.get('attention_kernel') or ''}"
            + ("  (fp8, opt-in)" if r.get("fp8") else "")
        )
    for name in ("ort-baseline", "ort-combined"):
        row = _device_row(results, name)
        prof = (row or {}).get("profile")
        if not prof:
            continue
        k = prof["kernels"]
        lines.append("")
        lines.append(
            f"{name}: batch {prof['batch_size']}, {k['wall_ms_per_batch']:.2f} ms per batch (GPU busy {k['busy_ms_per_batch']:.2f}, "
            f"{k['kernels_per_batch']:.0f} kernels); floor {prof['floor_ms']:.2f} ms at {prof['peaks']['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s, "
            f"{prof['peaks']['memory_bytes_per_s'] / 1e12:.2f} TB/s ({prof['peaks']['source']})"
        )
        for g in prof["groups"]:
            floor = (
                f"{g['floor_ms']:.3f} ms floor, {g['over_floor']:.1f}× ({g['bound']})"
                if g.get("floor_ms")
                else "no floor (fusable overhead)"
            )
            lines.append(
                f"  {g['group']:12s} {g['ms_per_batch']:7.3f} ms {g['share']:5.0%}  {g['kernels_per_batch']:5.0f} kernels  {floor}"
            )
    ncu = (results.get("ncu-baseline") or {}).get("ncu")
    if ncu:
        lines.append("")
        lines.append(
            f"ncu-baseline (Nsight Compute, kernels one at a time): {ncu['kernel_ms_per_batch']:.2f} ms of kernels, "
            f"{ncu['kernels_per_batch']:.0f} kernels"
        )
        for g in ncu["groups"]:
            lines.append(f"  {g['group']:12s} {g['ms_per_batch']:7.3f} ms {g['share']:5.0%}")
    t = summary.get("targets")
    if t:
        met = t["met"]
        lines.append("")
        lines.append(
            f"best fp16: {t['best_variant']} {t['images_per_s']:,.0f} img/s (target {t['images_per_s_target']:,}: {'met' if met['images_per_s'] else 'missed'}), "
            f"{(t['over_torch_eager'] or 0):.2f}× torch eager (target {t['over_torch_eager_target']}: {'met' if met['over_torch_eager'] else 'missed'}), "
            f"min cosine {t['min_cosine'] if t['min_cosine'] is not None else '-'} (target {t['min_cosine_target']}: {'met' if met['parity'] else 'missed'})"
        )
    if summary.get("baseline_spread") is not None:
        lines.append(
            f"baseline timed twice: {summary['baseline_images_per_s']:,.0f} and {summary['baseline_again_images_per_s']:,.0f} img/s "
            f"({summary['baseline_spread']:.1%} apart: differences below that are noise)"
        )
    return "\n".join(lines)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    from rayscale.environment import collect_environment, package_versions

    env = collect_environment(" ".join([Path(sys.executable).name, *sys.argv]))
    env["versions"].update(package_versions(("torch", "onnxruntime-gpu", "onnxruntime", "open_clip_torch", "numpy", "triton")))
    env["nvidia_smi"] = _nvidia_smi()
    return env


def _nvidia_smi() -> str | None:
    query = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu,utilization.gpu"
    try:
        return subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv"], capture_output=True, text=True, timeout=20
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def study_main(args: argparse.Namespace) -> int:
    from rayscale.export import load_model_info
    from rayscale.files import write_text_atomic

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    info = load_model_info(args.model_dir)  # a missing export stops here, with what to run
    started = time.time()
    deadline = started + args.budget_s
    env = environment(args)
    _say(
        f"engine study: {args.device}, batch {args.batch}, budget {args.budget_s:.0f} s, model {info.precision} {info.sha256[:12]}"
    )
    runner = Runner(args, work, deadline)
    first = plan_first_phase(args.quick) + [
        task(n, "selftest", 3, 1, **_selftest(n)) for n in args.only if n.startswith("selftest-")
    ]
    runner.run(first, RESERVE_S)
    runner.run(plan_second_phase(runner.results, args.batch), 0.0)
    summary = summarize(runner.results)
    env["nvidia_smi_after"] = _nvidia_smi()
    document = {
        "kind": "engine-study",
        "command": env["command"],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "settings": {
            "device": args.device,
            "batch": args.batch,
            "budget_s": args.budget_s,
            "min_time_s": args.min_time_s,
            "quick": args.quick,
        },
        "environment": env,
        "model": info.to_dict(),
        "summary": summary,
        "results": runner.results,
    }
    text = render(summary, runner.results, env)
    write_text_atomic(out / "engine_study.json", json.dumps(document, indent=1, default=str) + "\n")
    write_text_atomic(out / "engine_study.txt", text + "\n")
    _say("")
    _say(text)
    _say(f"\nwrote {out / 'engine_study.json'} ({time.time() - started:.0f} s)")
    return 0


def _selftest(name: str) -> dict[str, Any]:
    return {"mode": name.split("-", 1)[1], "seconds": 60}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default="models/openclip_vit_b32", help="exported model (rayscale export)")
    p.add_argument("--out", default=None, help="directory for engine_study.json, engine_study.txt and work/")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--budget-s", type=float, default=270.0, help="the study's wall-clock budget; later tasks are skipped")
    p.add_argument("--min-time-s", type=float, default=None, help="seconds timed per variant (default 1.5, quick 0.3)")
    p.add_argument("--quick", action="store_true", help="no torch.compile, no MHA export, short timings (CPU rehearsal)")
    p.add_argument("--only", default="", help="comma-separated task names to run (default: all)")
    p.add_argument("--skip", default="", help="comma-separated task names to leave out")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.only = [s for s in args.only.split(",") if s]
    args.skip = [s for s in args.skip.split(",") if s]
    if args.min_time_s is None:
        args.min_time_s = 0.3 if args.quick else 1.5
    if not args.worker and not args.out:
        p.error("--out is required")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(Path(args.worker))
    return study_main(args)


if __name__ == "__main__":
    sys.exit(main())

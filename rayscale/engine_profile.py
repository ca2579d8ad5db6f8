"""Where a batch's GPU time goes: kernel times grouped by operator, each beside its roofline.

Two views of one engine at one batch size:

* **kernels** (:func:`profile_kernels`): every kernel the GPU ran, timed by CUPTI through
  ``torch.profiler`` (activity ``CUDA``). CUPTI records every kernel in the process, so this also
  times onnxruntime's kernels when its session runs inside the profiled region. Kernels are grouped
  by name (:func:`kernel_group`: GEMM, attention, LayerNorm, activation, input preparation, other
  elementwise, copies), and each group's time is set beside the least time the card could take for
  that group's work (:func:`vit_b32_work`: its FLOPs over the matrix peak, or its bytes over memory
  bandwidth, whichever is larger);
* **nodes** (:func:`ort_node_times`): onnxruntime's own profiler, per operator type. It times each
  node's host-side call (launching its kernels), not the kernels, so it shows launch cost, not GPU time.

Peaks are measured on the card where torch can (:func:`measure_peaks`: a large fp16 matrix product and
a device-to-device copy), else taken from the datasheet.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "BatchProfile",
    "GROUPS",
    "GroupTime",
    "KernelProfile",
    "KernelStat",
    "Peaks",
    "Work",
    "datasheet_peaks",
    "group_times",
    "kernel_group",
    "measure_peaks",
    "model_floor_ms",
    "ort_node_profile",
    "ort_node_times",
    "profile_batch",
    "profile_kernels",
    "summarize_kernels",
    "vit_b32_work",
]

# Kernel name patterns, tried in order (fused attention kernels carry "cutlass" too, so attention
# comes before GEMM; inductor's GEMM templates carry the names of the ops fused into them).
_PATTERNS: list[tuple[str, str]] = [
    ("copy", r"^Memcpy|^Memset|memcpy|memset"),
    ("gemm", r"^triton_tem|scaled_mm"),
    ("attention", r"fmha|flash|[Aa]ttention|sdpa|_attn|[Ss]oft[Mm]ax|mha_|TransposeQKV|AddBiasTranspose"),
    ("layernorm", r"[Ll]ayer_?[Nn]orm"),
    ("activation", r"[Gg]elu|[Ss]igmoid"),
    ("gemm", r"gemm|Gemm|GEMM|nvjet|xmma|cublas|cutlass|wgmma|_mma|sm90_|sm80_|[Mm]at[Mm]ul|addmm|bmm"),
    ("input", r"[Tt]ranspose|Cast|_cast|permute|direct_copy"),
    ("elementwise", r"[Ee]lement[Ww]ise|_Binary|_Unary|triton_poi|Add|Mul"),
    ("reduction", r"[Rr]educe|triton_red|triton_per"),
]
_COMPILED = [(g, re.compile(p)) for g, p in _PATTERNS]
GROUPS = ("gemm", "attention", "layernorm", "activation", "input", "elementwise", "reduction", "copy", "other")


def kernel_group(name: str) -> str:
    """The operator group a kernel belongs to, from its name (``other`` when no pattern matches)."""
    for group, pattern in _COMPILED:
        if pattern.search(name):
            return group
    return "other"


# ---- the work itself -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Work:
    """What a group must do for one batch: FLOPs, and the fewest bytes it must move through memory."""

    flops: float
    bytes: float


def vit_b32_work(batch: int, *, act_bytes: int = 2) -> dict[str, Work]:
    """The ViT-B/32 image tower's work per batch, by group; ``act_bytes``: bytes per activation/weight.

    Bytes count each op's inputs read once and outputs written once, for the fused graph rayscale
    exports (residual adds inside LayerNorm, bias inside GELU). Groups without work here (elementwise,
    copies, reductions) are overhead a fully fused engine would not have.
    """
    tokens, width, mlp, layers, heads, head_dim = 50, 768, 3072, 12, 12, 64
    patches, patch_dim, embed = 49, 32 * 32 * 3, 512
    b, t, d, f = batch, tokens, width, mlp
    gemm_flops = 2 * b * (patches * patch_dim * d + layers * t * (3 * d * d + d * d + 2 * d * f) + d * embed)
    weights = patch_dim * d + layers * (3 * d * d + d * d + 2 * d * f) + d * embed
    gemm_act = b * (patches * patch_dim + patches * d + layers * t * (8 * d + 2 * f) + d + embed)
    attn_flops = layers * b * heads * 4 * t * t * head_dim
    attn_bytes = layers * b * 4 * t * d * act_bytes  # read q, k, v; write the context
    norm_bytes = b * t * d * act_bytes * ((2 * layers + 1) * 2 + 2 * layers * 3)  # LayerNorms + residual adds
    act_bytes_total = layers * b * t * f * act_bytes * 2
    input_bytes = b * 224 * 224 * 3 * (1 + act_bytes)  # uint8 pixels read, patches written as floats
    return {
        "gemm": Work(gemm_flops, (weights + gemm_act) * act_bytes),
        "attention": Work(attn_flops, attn_bytes),
        "layernorm": Work(0.0, norm_bytes),
        "activation": Work(layers * b * t * f * 8.0, act_bytes_total),
        "input": Work(0.0, input_bytes),
    }


@dataclass(frozen=True)
class Peaks:
    """The card's ceilings: dense fp16 matrix rate and device-memory bandwidth (read + write)."""

    matmul_flops_per_s: float
    memory_bytes_per_s: float
    source: str  # "measured" or "datasheet <card>"

    def floor_s(self, work: Work) -> float:
        return max(work.flops / self.matmul_flops_per_s, work.bytes / self.memory_bytes_per_s)


_DATASHEET = {  # dense fp16 FLOP/s, memory bytes/s (SXM parts)
    "H200": (989e12, 4.8e12),
    "H100": (989e12, 3.35e12),
    "A100": (312e12, 2.0e12),
    "L4": (121e12, 0.3e12),
}


def measure_peaks(device: int = 0, *, size: int = 8192, copy_bytes: int = 2 << 30) -> Peaks:
    """Measure the fp16 matrix rate (random data, median of 10) and copy bandwidth with torch."""
    import torch

    torch.cuda.set_device(device)
    peaks = Peaks(_matmul_flops_per_s(size), _copy_bytes_per_s(copy_bytes), "measured")
    torch.cuda.empty_cache()
    return peaks


def _matmul_flops_per_s(size: int) -> float:
    import torch

    a = torch.randn(size, size, device="cuda", dtype=torch.float16)
    b = torch.randn(size, size, device="cuda", dtype=torch.float16)
    return 2 * size**3 / _median_cuda_s(lambda: torch.mm(a, b), 10)


def _copy_bytes_per_s(nbytes: int) -> float:
    """Bytes read plus bytes written per second by a device-to-device copy."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    return 2 * nbytes / _median_cuda_s(lambda: dst.copy_(src), 10)


def datasheet_peaks(card: str) -> Peaks:
    for key, (flops, bw) in _DATASHEET.items():
        if key in card:
            return Peaks(flops, bw, f"datasheet {key}")
    return Peaks(*_DATASHEET["H100"], source="datasheet H100 (card unknown)")


def _median_cuda_s(fn: Callable[[], Any], repeats: int) -> float:
    import torch

    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


# ---- kernels -------------------------------------------------------------------------------------


@dataclass
class KernelStat:
    name: str
    group: str
    calls_per_batch: float
    ms_per_batch: float


@dataclass
class KernelProfile:
    """Kernel times per batch from CUPTI, for ``iterations`` batches run back to back."""

    iterations: int
    wall_ms_per_batch: float  # host clock around each run, synchronised
    busy_ms_per_batch: float  # union of kernel intervals: the GPU was doing something
    kernel_ms_per_batch: float  # sum of kernel times (kernels on several streams may overlap)
    kernels_per_batch: float
    kernels: list[KernelStat] = field(default_factory=list)  # slowest first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def profile_kernels(
    run: Callable[[], Any], *, iterations: int = 5, synchronize: Callable[[], Any] | None = None
) -> KernelProfile:
    """Run ``run`` ``iterations`` times under CUPTI and return its kernels, per batch.

    ``run`` must return only once its GPU work is done (or pass ``synchronize``). A profile with no
    kernels means CUPTI saw none: it is returned as such, for the caller to report.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    sync = synchronize or torch.cuda.synchronize
    run()
    sync()
    # CPU activity too: kineto links each kernel to its launch through it (CUDA alone is not enough everywhere).
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(iterations):
            run()
            sync()
        wall_s = time.perf_counter() - t0
    events = _device_events(prof)
    return summarize_kernels(events, iterations, wall_s * 1000 / iterations)


def _device_events(prof) -> list[tuple[str, float, float]]:
    """(name, start µs, end µs) of every device-side event the profiler recorded."""
    from torch.autograd import DeviceType

    out = []
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            out.append((e.name, float(e.time_range.start), float(e.time_range.end)))
    return out


def summarize_kernels(events: list[tuple[str, float, float]], iterations: int, wall_ms_per_batch: float) -> KernelProfile:
    """Per-kernel totals and the busy time (the union of intervals) from raw device events."""
    per_name: dict[str, list[float]] = {}
    for name, start, end in events:
        per_name.setdefault(name, []).append(end - start)
    busy_us, last_end = 0.0, float("-inf")
    for _, start, end in sorted((e for e in events), key=lambda e: e[1]):
        if end <= last_end:
            continue
        busy_us += end - max(start, last_end)
        last_end = end
    kernels = [
        KernelStat(name, kernel_group(name), len(durs) / iterations, sum(durs) / 1000 / iterations)
        for name, durs in per_name.items()
    ]
    kernels.sort(key=lambda k: -k.ms_per_batch)
    return KernelProfile(
        iterations=iterations,
        wall_ms_per_batch=wall_ms_per_batch,
        busy_ms_per_batch=busy_us / 1000 / iterations,
        kernel_ms_per_batch=sum(k.ms_per_batch for k in kernels),
        kernels_per_batch=sum(k.calls_per_batch for k in kernels),
        kernels=kernels,
    )


@dataclass
class GroupTime:
    group: str
    ms_per_batch: float
    share: float  # of all kernel time
    kernels_per_batch: float
    floor_ms: float | None  # the least time the card could take for this group's work (None: no model)
    over_floor: float | None  # ms_per_batch / floor_ms
    bound: str  # "compute", "memory" or "" (no model)


def group_times(profile: KernelProfile, work: dict[str, Work], peaks: Peaks) -> list[GroupTime]:
    """Kernel time per operator group, each with its roofline floor; largest first."""
    totals: dict[str, list[float]] = {}
    for k in profile.kernels:
        t = totals.setdefault(k.group, [0.0, 0.0])
        t[0] += k.ms_per_batch
        t[1] += k.calls_per_batch
    all_ms = sum(t[0] for t in totals.values()) or 1.0
    rows = []
    for group, (ms, calls) in totals.items():
        w = work.get(group)
        floor = peaks.floor_s(w) * 1000 if w else None
        bound = (
            ""
            if w is None
            else ("compute" if w.flops / peaks.matmul_flops_per_s >= w.bytes / peaks.memory_bytes_per_s else "memory")
        )
        rows.append(GroupTime(group, ms, ms / all_ms, calls, floor, ms / floor if floor else None, bound))
    rows.sort(key=lambda r: -r.ms_per_batch)
    return rows


def model_floor_ms(work: dict[str, Work], peaks: Peaks) -> float:
    """The whole batch's floor: every group at its own roofline, one after another."""
    return sum(peaks.floor_s(w) for w in work.values()) * 1000


# ---- onnxruntime's own profiler -------------------------------------------------------------------


def ort_node_times(profile_path: str, iterations: int, *, skip_runs: int = 0) -> dict[str, dict[str, float]]:
    """Per operator type: host-side ms per batch and nodes per batch, from an onnxruntime profile file.

    ``skip_runs``: leading runs (warm-up) to leave out; ``iterations``: the runs after them.
    """
    with open(profile_path) as f:
        events = json.load(f)
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    start_ts = runs[skip_runs] if skip_runs and len(runs) > skip_runs else float("-inf")
    out: dict[str, dict[str, float]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if e.get("ts", 0) < start_ts:
            continue
        op = e.get("args", {}).get("op_name", "?")
        row = out.setdefault(op, {"ms_per_batch": 0.0, "nodes_per_batch": 0.0})
        row["ms_per_batch"] += e.get("dur", 0) / 1000 / iterations
        row["nodes_per_batch"] += 1 / iterations
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["ms_per_batch"]))


def ort_node_profile(
    session, make_run: Callable[[Any], Callable[[], Any]], *, iterations: int = 5
) -> dict[str, dict[str, float]]:
    """onnxruntime's per-operator host-side times for a copy of ``session`` with its profiler on.

    The copy loads the same file with the same session and provider options; ``make_run(copy)``
    returns a function that runs one batch on it. Warm-up runs are left out of the times.
    """
    import os
    import tempfile

    import onnxruntime as ort

    opts = session.get_session_options()
    providers = session.get_providers()
    # The options as the session reports them, less the ones that hand it outside resources.
    external = {
        "user_compute_stream",
        "has_user_compute_stream",
        "gpu_external_alloc",
        "gpu_external_free",
        "gpu_external_empty_cache",
    }
    provider_options = {p: {k: v for k, v in o.items() if k not in external} for p, o in session.get_provider_options().items()}
    with tempfile.TemporaryDirectory() as tmp:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        profiled = ort.InferenceSession(
            session._model_path,
            sess_options=opts,
            providers=providers,
            provider_options=[provider_options.get(p, {}) for p in providers],
        )
        run = make_run(profiled)
        warm = 3
        for _ in range(warm):
            run()
        for _ in range(iterations):
            run()
        path = profiled.end_profiling()
        return ort_node_times(path, iterations, skip_runs=warm)


@dataclass
class BatchProfile:
    """One engine at one batch size: its kernels by group beside their floors, and the whole batch's floor."""

    batch_size: int
    peaks: Peaks
    floor_ms: float  # every group at its roofline, one after another
    kernels: KernelProfile
    groups: list[GroupTime]
    ort_nodes: dict[str, dict[str, float]] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self, *, top_kernels: int = 40) -> dict[str, Any]:
        d = asdict(self)
        d["kernels"]["kernels"] = d["kernels"]["kernels"][:top_kernels]
        return d


def profile_batch(run: Callable[[], Any], batch_size: int, peaks: Peaks, *, iterations: int = 5) -> BatchProfile:
    """Kernel profile of ``run`` (one batch, synchronised) grouped and set beside the roofline."""
    kernels = profile_kernels(run, iterations=iterations)
    work = vit_b32_work(batch_size)
    notes = []
    if not kernels.kernels:
        notes.append("CUPTI recorded no kernels in this process: no kernel-level profile")
    return BatchProfile(batch_size, peaks, model_floor_ms(work, peaks), kernels, group_times(kernels, work, peaks), notes=notes)

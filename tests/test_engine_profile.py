"""The engine profile: kernels grouped by operator, each group beside its roofline."""

from __future__ import annotations

import pytest

from rayscale.engine_profile import (
    KernelProfile,
    KernelStat,
    Peaks,
    group_times,
    kernel_group,
    model_floor_ms,
    ort_node_profile,
    summarize_kernels,
    vit_b32_work,
)


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("nvjet_hsh_256x128_64x4_2x1_v_bz_coopA_NNT", "gemm"),
        ("sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1", "gemm"),
        ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_f16_s161616gemm_f16_32x32_128x2_tn_align8>", "gemm"),
        ("triton_tem_fused_addmm_gelu_3", "gemm"),
        ("fmha_cutlassF_f16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<...>)", "attention"),
        ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>>", "attention"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3", "attention"),
        ("void onnxruntime::contrib::cuda::AddBiasTransposeQKV<__half>(int, const __half*)", "attention"),
        ("void onnxruntime::contrib::cuda::SkipLayerNormKernelSmall<__half, float, __half, 256, 8, true>", "layernorm"),
        ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::Half, float>", "layernorm"),
        ("triton_per_fused_add_native_layer_norm_5", "layernorm"),
        ("void onnxruntime::contrib::cuda::BiasGeluKernel<__half, 256, 8>", "activation"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>", "activation"),
        ("void onnxruntime::cuda::_TransposeKernelGeneric<unsigned char>", "input"),
        ("void onnxruntime::cuda::_BinaryElementWiseSimple<true, true, __half, __half, __half, OP_Add<__half>>", "elementwise"),
        ("Memcpy DtoD (Device -> Device)", "copy"),
        ("some_kernel_nobody_named", "other"),
    ],
)
def test_kernels_are_grouped_by_the_operator_their_name_names(name, group):
    assert kernel_group(name) == group


def test_the_work_model_counts_vit_b32s_known_cost():
    work = vit_b32_work(1)
    # timm lists 4.41 GMACs per image for ViT-B/32 at 224: 8.8 GFLOP, nearly all in matrix products.
    total = sum(w.flops for w in work.values())
    assert 8.7e9 < total < 8.9e9
    assert work["gemm"].flops / total > 0.98
    assert vit_b32_work(256)["gemm"].flops == pytest.approx(256 * work["gemm"].flops, rel=1e-9)


def test_busy_time_is_the_union_of_kernel_intervals_and_groups_sit_beside_their_floors():
    # Two batches: a GEMM overlapping a LayerNorm on another stream, then an idle gap, then GELU.
    events = [("nvjet_gemm", 0.0, 100.0), ("SkipLayerNormKernel", 50.0, 150.0), ("BiasGeluKernel", 200.0, 250.0)] * 1
    events += [(n, s + 1000, e + 1000) for n, s, e in events]
    profile = summarize_kernels(events, iterations=2, wall_ms_per_batch=0.5)
    assert profile.busy_ms_per_batch == pytest.approx(0.2)  # 150 µs + 50 µs per batch
    assert profile.kernel_ms_per_batch == pytest.approx(0.25)
    assert profile.kernels_per_batch == 3
    peaks = Peaks(matmul_flops_per_s=1e15, memory_bytes_per_s=4e12, source="test")
    work = vit_b32_work(256)
    rows = {g.group: g for g in group_times(profile, work, peaks)}
    assert rows["gemm"].floor_ms == pytest.approx(work["gemm"].flops / 1e15 * 1000)
    assert rows["gemm"].bound == "compute" and rows["activation"].bound == "memory"
    assert rows["gemm"].over_floor == pytest.approx(rows["gemm"].ms_per_batch / rows["gemm"].floor_ms)
    assert sum(r.share for r in rows.values()) == pytest.approx(1.0)
    assert model_floor_ms(work, peaks) > rows["gemm"].floor_ms
    unknown = group_times(KernelProfile(1, 1.0, 1.0, 1.0, 1, [KernelStat("x", "other", 1, 1.0)]), work, peaks)
    assert unknown[0].floor_ms is None and unknown[0].bound == ""


def test_onnxruntimes_own_profile_is_read_per_operator_type(model_dir):
    from rayscale.engine import Engine, random_images

    engine = Engine(model_dir, provider="cpu", max_batch_size=2, warmup=False)
    images = random_images(1)
    nodes = ort_node_profile(engine.session, lambda s: lambda: s.run(None, {"IMAGE": images}), iterations=2)
    assert nodes["Attention"]["nodes_per_batch"] == pytest.approx(12)  # one fused attention per layer, warm-up left out
    assert nodes["MatMul"]["ms_per_batch"] > 0
    assert list(nodes) == sorted(nodes, key=lambda op: -nodes[op]["ms_per_batch"])

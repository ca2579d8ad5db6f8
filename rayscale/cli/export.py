"""``rayscale export`` and ``rayscale engine-bench``: the model file, and the engine alone."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer

from rayscale.cli.common import command_line, fail, warn
from rayscale.config import DEFAULT_MODEL_DIR, parse_int_list
from rayscale.errors import RayscaleError

__all__ = ["engine_bench", "export"]


def export(
    out: Path = typer.Option(DEFAULT_MODEL_DIR, help="Directory for model.onnx and model.json."),
    precision: str = typer.Option("fp16", help="fp16 (GPU serving) or fp32."),
    pretrained: str | None = typer.Option(
        None, help="open_clip checkpoint file, or a pretrained tag where a hub is reachable. Without it: random weights."
    ),
    opset: int = typer.Option(17, help="ONNX opset."),
    optimize: bool = typer.Option(True, help="Fuse attention/LayerNorm/GELU with onnxruntime's transformer optimizer."),
) -> None:
    """Export the OpenCLIP ViT-B/32 image encoder to ONNX (uint8 NHWC in, FP32 [N,512] out) and check parity."""
    from rayscale.export import ExportConfig, export_model

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = ExportConfig(out_dir=str(out), precision=precision, pretrained=pretrained, opset=opset, optimize=optimize)
            if pretrained is None:
                warn("no --pretrained given: exporting RANDOM weights (speed is real, embeddings are not)")
            info = export_model(cfg)
    except RayscaleError as e:
        raise fail(e) from None
    p = info.parity
    typer.echo(
        f"wrote {out}/model.onnx ({info.size_bytes / 1e6:.0f} MB, {info.precision}, opset {info.opset}, weights: {info.weights})"
    )
    typer.echo(f"parity vs open_clip on {p['provider']}: min cosine {p['min_cosine']:.6f} (threshold {p['threshold']})")
    typer.echo("fused operators: " + (", ".join(f"{k}={v}" for k, v in sorted(info.fused_operators.items())) or "none"))
    typer.echo(f"sha256 {info.sha256}")


def engine_bench(
    batch_sizes: str = typer.Option("1,8,32,128,256", help="Comma-separated batch sizes."),
    model: Path = typer.Option(DEFAULT_MODEL_DIR, help="Exported model directory."),
    provider: str = typer.Option("auto", help="auto | cuda | cpu"),
    min_time_s: float = typer.Option(2.0, "--min-time", help="Seconds timed per batch size and mode."),
    torch_eager: str = typer.Option("auto", help="Also time torch eager fp16 (auto: on a GPU)."),
    engine_options: str = typer.Option(
        "", help="Engine settings, key=value,... e.g. cuda_graph=1,attention=flash or backend=torch (see README)."
    ),
    profile: bool = typer.Option(
        False, "--profile", help="Also record where the largest batch's GPU time goes (kernels by operator, beside the roofline)."
    ),
    out: Path | None = typer.Option(None, help="Results JSON (written atomically)."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out file."),
) -> None:
    """Measure the engine alone (images/s and latency per batch size): the ceiling for served numbers."""
    from rayscale.engine_bench import EngineBenchConfig, run_engine_bench
    from rayscale.engine_options import EngineOptions

    try:
        cfg = EngineBenchConfig(
            model_dir=str(model),
            batch_sizes=parse_int_list(batch_sizes, "batch sizes"),
            provider=provider,
            min_time_s=min_time_s,
            torch_eager=torch_eager,
            engine_options=EngineOptions.parse(engine_options),
            profile=profile,
            out=str(out) if out else None,
            overwrite=overwrite,
            command=command_line(),
        )
        result = run_engine_bench(cfg)
    except RayscaleError as e:
        raise fail(e) from None
    _print_engine_table(result)
    if result.profile:
        _print_profile_table(result.profile)
    for w in result.warnings:
        warn(w)
    if out:
        typer.echo(f"wrote {out}")


def _print_engine_table(result) -> None:
    from rayscale.tables import Table, print_table

    gpus = ", ".join(g["name"] for g in result.environment["gpus"]) or "CPU"
    table = Table(
        ["backend", "input", "batch", "img/s", "p50 ms", "p99 ms"], title=f"engine: {result.model.get('precision')} {gpus}"
    )
    for p in result.points:
        table.add_row(
            p.backend,
            p.input_location,
            p.batch_size,
            f"{p.images_per_s:,.0f}",
            f"{p.latency_p50_ms:.2f}",
            f"{p.latency_p99_ms:.2f}",
        )
    print_table(table)


def _print_profile_table(profile: dict) -> None:
    from rayscale.tables import Table, print_table

    k = profile["kernels"]
    title = (
        f"batch {profile['batch_size']}: {k['wall_ms_per_batch']:.2f} ms per batch, GPU busy {k['busy_ms_per_batch']:.2f} ms, "
        f"{k['kernels_per_batch']:.0f} kernels; floor {profile['floor_ms']:.2f} ms ({profile['peaks']['source']} peaks)"
    )
    table = Table(["group", "ms/batch", "share", "kernels", "floor ms", "× floor", "bound"], title=title)
    for g in profile["groups"]:
        floor = f"{g['floor_ms']:.3f}" if g["floor_ms"] else "-"
        over = f"{g['over_floor']:.1f}" if g["over_floor"] else "-"
        table.add_row(
            g["group"], f"{g['ms_per_batch']:.3f}", f"{g['share']:.0%}", f"{g['kernels_per_batch']:.0f}", floor, over, g["bound"]
        )
    print_table(table)

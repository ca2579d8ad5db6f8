"""Export: the ONNX file computes what open_clip computes, and model.json says truthfully what it is."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from rayscale.config import EMBED_DIM, INPUT_NAME, OUTPUT_NAME
from rayscale.engine import Engine
from rayscale.errors import ConfigError, ExportError, ModelNotFoundError
from rayscale.export import (
    ExportConfig,
    ModelInfo,
    export_model,
    load_model_info,
    parity_batch,
    reference_embeddings,
)

ENTRY = "import sys; from rayscale.cli import main; sys.argv[0] = 'rayscale'; main()"


def rayscale(*args: str, block_open_clip: bool = False) -> subprocess.CompletedProcess:
    # Blocking the import is how an install without the export extra looks to the code.
    code = ("import sys; sys.modules['open_clip'] = None; " if block_open_clip else "") + ENTRY
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def photos() -> list[Image.Image]:
    """Smooth, textured RGB pictures of sizes a client really sends (not already 224x224)."""
    rng = np.random.default_rng(7)
    out = []
    for h, w in [(240, 320), (300, 256), (224, 224), (480, 360)]:
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        f = rng.uniform(1, 8, size=3)
        img = np.stack([np.cos(f[c] * np.pi * (xx * (c + 1) - yy)) for c in range(3)], axis=-1)
        img = (img * 0.4 + 0.5 + rng.normal(0, 0.05, img.shape)).clip(0, 1)
        out.append(Image.fromarray((img * 255).astype(np.uint8), "RGB"))
    return out


def open_clip_path(model, preprocess, pictures) -> tuple[np.ndarray, np.ndarray]:
    """open_clip's own route from pictures to embeddings, and the uint8 crops a client sends the server.

    The client resizes and crops (the first two steps of open_clip's preprocessing); the graph does
    the rest (scale to 0..1 and normalise), so both routes start from the same pixels.
    """
    resize, crop = preprocess.transforms[0], preprocess.transforms[1]
    crops = np.stack([np.asarray(crop(resize(p)), dtype=np.uint8) for p in pictures])
    with torch.no_grad():
        embeddings = model.encode_image(torch.stack([preprocess(p) for p in pictures])).numpy()
    return embeddings, crops


def open_clip_model(pretrained: str | None = None, seed: int = 0):
    """open_clip's ViT-B-32 as its users build it; random weights are drawn after seeding torch."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=pretrained)
    return model.eval(), preprocess


@pytest.fixture(scope="module")
def cpu_engine(model_dir) -> Engine:
    return Engine(model_dir, provider="cpu", max_batch_size=8, warmup=False)


@pytest.fixture(scope="module")
def random_open_clip():
    return open_clip_model(seed=0)  # export's random weights are drawn from seed 0


# ---- the default export (random weights, fp32) ---------------------------------------------------


def test_onnx_matches_open_clip_on_the_same_pixels(cpu_engine, random_open_clip):
    model, _ = random_open_clip
    images = parity_batch(3, seed=5)
    got = cpu_engine.encode(images)
    assert got.shape == (3, EMBED_DIM) and got.dtype == np.float32
    assert cosine_rows(got, reference_embeddings(model.visual, images)).min() >= 0.999


def test_onnx_matches_open_clip_preprocessing_and_encode_image(cpu_engine, random_open_clip):
    model, preprocess = random_open_clip
    expected, crops = open_clip_path(model, preprocess, photos())
    got = cpu_engine.encode(crops)
    assert cosine_rows(got, expected).min() >= 0.999
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3 * np.abs(expected).max())


def test_model_json_describes_the_file(model_dir, cpu_engine):
    data = json.loads((model_dir / "model.json").read_text())
    info = load_model_info(model_dir)
    assert isinstance(info, ModelInfo) and info.to_dict() == data

    onnx_path = model_dir / info.file
    assert info.sha256 == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert info.size_bytes == onnx_path.stat().st_size
    assert info.inputs == [{"name": INPUT_NAME, "datatype": "UINT8", "shape": [-1, 224, 224, 3], "layout": "NHWC"}]
    assert info.outputs == [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, EMBED_DIM]}]
    assert (info.precision, info.opset, info.weights, info.activation) == ("fp32", 17, "random", "gelu")
    assert info.extra == {"random_seed": 0}  # so the same random weights can be rebuilt
    for package in ("torch", "open_clip_torch", "onnx", "numpy"):
        assert info.versions[package]
    assert info.versions["open_clip_torch"] == open_clip.__version__

    parity = info.parity
    assert parity["images"] >= 1 and parity["threshold"] == 0.999 and parity["provider"] == "cpu"
    assert parity["threshold"] <= parity["min_cosine"] <= parity["mean_cosine"] <= 1.0 + 1e-9
    assert parity["max_abs_diff"] >= 0
    assert info.fused_operators["Attention"] == 12  # one fused attention kernel per transformer block

    # The graph itself has the names, types and dynamic batch axis model.json claims.
    (inp,), (out,) = cpu_engine.session.get_inputs(), cpu_engine.session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == (INPUT_NAME, "tensor(uint8)", [224, 224, 3])
    assert (out.name, out.type, out.shape[1:]) == (OUTPUT_NAME, "tensor(float)", [EMBED_DIM])
    assert isinstance(inp.shape[0], str) and isinstance(out.shape[0], str)  # symbolic: any batch size


# ---- a real checkpoint ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A ViT-B-32 state_dict saved as open_clip saves one, with weights unlike export's random ones."""
    model, _ = open_clip_model(seed=1234)
    with torch.no_grad():
        model.visual.proj.mul_(3.0)
        model.visual.ln_post.bias.fill_(0.05)
        model.visual.conv1.weight.add_(0.01 * torch.randn_like(model.visual.conv1.weight))
    path = tmp_path_factory.mktemp("ckpt") / "vit-b-32-finetuned.pt"
    torch.save(model.state_dict(), path)
    return path


def test_export_with_a_checkpoint_uses_its_weights(checkpoint, cpu_engine, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = export_model(ExportConfig(out_dir=str(tmp_path), precision="fp32", pretrained=str(checkpoint)))

    assert info.weights == f"file:{checkpoint.resolve()}"
    assert info.extra == {}
    assert info.parity["min_cosine"] >= 0.999
    assert load_model_info(tmp_path) == info

    model, preprocess = open_clip_model(pretrained=str(checkpoint))
    expected, crops = open_clip_path(model, preprocess, photos())
    got = Engine(tmp_path, provider="cpu", warmup=False).encode(crops)
    assert cosine_rows(got, expected).min() >= 0.999
    # ...and not what the random-weights export computes.
    assert cosine_rows(got, cpu_engine.encode(crops)).max() < 0.9


# ---- fp16 ----------------------------------------------------------------------------------------


def test_fp16_export_from_the_cli(tmp_path, cpu_engine):
    proc = rayscale("export", "--out", str(tmp_path), "--precision", "fp16")
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM weights" in proc.stderr  # users are told the embeddings mean nothing
    assert f"wrote {tmp_path}/model.onnx" in proc.stdout and "fp16" in proc.stdout
    assert "Attention=12" in proc.stdout

    info = load_model_info(tmp_path)
    assert info.precision == "fp16"
    assert info.parity["threshold"] == 0.99 and info.parity["min_cosine"] >= 0.99
    assert info.outputs[0]["datatype"] == "FP32"  # fp16 inside, the same FP32 contract outside
    fp32_size = json.loads((cpu_engine.model_path.parent / "model.json").read_text())["size_bytes"]
    assert info.size_bytes < 0.6 * fp32_size
    assert f"sha256 {info.sha256}" in proc.stdout

    images = parity_batch(2, seed=9)
    got = Engine(tmp_path, provider="cpu", warmup=False).encode(images)
    assert got.dtype == np.float32
    assert cosine_rows(got, cpu_engine.encode(images)).min() >= 0.99


# ---- errors --------------------------------------------------------------------------------------


def test_unknown_precision_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="precision must be fp16 or fp32, got 'int8'"):
        ExportConfig(out_dir=str(tmp_path), precision="int8")
    line = error_line(rayscale("export", "--out", str(tmp_path / "m"), "--precision", "int8"))
    assert "precision must be fp16 or fp32, got 'int8'" in line


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"opset": 12}, "opset must be in 13..23, got 12"),
        ({"parity_batch_size": 0}, "parity_batch_size must be in 1..64, got 0"),
    ],
)
def test_export_settings_out_of_range(settings, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        ExportConfig(out_dir=str(tmp_path), **settings)


def test_unknown_pretrained_tag_lists_the_known_ones(tmp_path):
    with pytest.raises(ExportError, match="unknown pretrained tag 'no_such_tag' for ViT-B-32: use one of .*openai"):
        export_model(ExportConfig(out_dir=str(tmp_path), pretrained="no_such_tag"))


def test_a_broken_model_json_says_to_export_again(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    for text in ("{not json", "[1, 2]", '{"name": "x"}'):
        (tmp_path / "model.json").write_text(text)
        with pytest.raises(ModelNotFoundError, match="is not a rayscale model.json .*export the model again"):
            load_model_info(tmp_path)
    (tmp_path / "model.onnx").unlink()
    with pytest.raises(ModelNotFoundError, match=f"run `rayscale export --out {tmp_path}` first"):
        load_model_info(tmp_path)


def test_missing_checkpoint(tmp_path):
    missing = tmp_path / "nowhere" / "vit-b-32.pt"
    line = error_line(rayscale("export", "--out", str(tmp_path / "m"), "--pretrained", str(missing)))
    assert f"checkpoint not found: {missing}" in line
    assert not (tmp_path / "m" / "model.onnx").exists()


def test_checkpoint_that_is_not_a_checkpoint_leaves_the_previous_export(tmp_path):
    bad = tmp_path / "vit-b-32.pt"
    bad.write_bytes(b"not a torch file")
    out = tmp_path / "m"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"previous model")
    (out / "model.json").write_text('{"previous": true}')
    line = error_line(rayscale("export", "--out", str(out), "--pretrained", str(bad)))
    assert f"could not load checkpoint {bad}" in line
    assert (out / "model.onnx").read_bytes() == b"previous model"
    assert (out / "model.json").read_text() == '{"previous": true}'


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = error_line(rayscale("export", "--out", str(blocker / "model"), "--precision", "fp32"))
    assert f"cannot write to {blocker / 'model'}" in line and "choose another --out" in line


def test_missing_export_extra(tmp_path):
    line = error_line(rayscale("export", "--out", str(tmp_path / "m"), "--precision", "fp32", block_open_clip=True))
    assert "open_clip is missing" in line and "pip install 'rayscale[export]'" in line

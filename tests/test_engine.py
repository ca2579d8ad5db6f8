"""The engine: a real onnxruntime session on the exported model turns uint8 images into embeddings."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rayscale.config import EMBED_DIM
from rayscale.engine import Engine, _has_cuda_driver, batch_buckets, random_images
from rayscale.errors import ConfigError, InputError, ModelNotFoundError

MAX_BATCH = 8


@pytest.fixture(scope="module")
def engine(model_dir) -> Engine:
    return Engine(model_dir, provider="cpu", max_batch_size=MAX_BATCH)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("n", [1, 7])
def test_encode_returns_one_fp32_embedding_per_image(engine, n):
    out = engine.encode(random_images(n, seed=n))
    assert out.shape == (n, EMBED_DIM)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert engine.provider == "cpu"


def test_encode_is_deterministic_and_input_dependent(engine):
    images = random_images(3, seed=11)
    first, second = engine.encode(images), engine.encode(images.copy())
    np.testing.assert_array_equal(first, second)
    other = engine.encode(random_images(3, seed=12))
    assert cosine_rows(first, other).max() < 0.999  # different images, different embeddings


def test_an_image_gets_the_same_embedding_alone_or_in_a_batch(engine):
    images = random_images(7, seed=3)
    batch = engine.encode(images)
    alone = np.concatenate([engine.encode(images[i : i + 1]) for i in (0, 6)])
    assert cosine_rows(batch[[0, 6]], alone).min() > 0.99999


def test_encode_takes_the_protocols_read_only_views_and_strided_arrays(engine):
    from rayscale.protocol import build_infer_request, parse_infer_request

    images = random_images(4, seed=8)
    expected = engine.encode(images)
    body, headers = build_infer_request(images)
    view = parse_infer_request(body, headers["Inference-Header-Content-Length"], max_batch_size=MAX_BATCH).images
    assert not view.flags.writeable
    np.testing.assert_array_equal(engine.encode(view), expected)
    strided = np.stack([images, images], axis=1)[:, 0]  # a non-contiguous view of the same pixels
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(engine.encode(strided), expected)


def test_encode_parts_equals_encode_on_the_concatenation(engine):
    parts = [random_images(k, seed=20 + k) for k in (1, 3, 2)]
    outputs, gather_ns, run_ns = engine.encode_parts(parts)
    whole = engine.encode(np.concatenate(parts))

    assert [o.shape for o in outputs] == [(1, EMBED_DIM), (3, EMBED_DIM), (2, EMBED_DIM)]
    np.testing.assert_allclose(np.concatenate(outputs), whole, rtol=0, atol=1e-5)
    assert gather_ns >= 0 and run_ns > 0

    (single,), _, _ = engine.encode_parts([parts[1]])
    np.testing.assert_array_equal(single, engine.encode(parts[1]))


@pytest.mark.parametrize("sizes", [[], [MAX_BATCH, 1]])
def test_encode_parts_refuses_an_empty_or_oversized_batch(engine, sizes):
    with pytest.raises(InputError, match=rf"batch size must be in 1\.\.{MAX_BATCH}, got {sum(sizes)}"):
        engine.encode_parts([random_images(k) for k in sizes])


def test_encode_is_thread_safe(engine):
    images = [random_images(2, seed=40 + i) for i in range(4)]
    expected = [engine.encode(x) for x in images]
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        got[i] = engine.encode(images[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        np.testing.assert_allclose(got[i], expected[i], rtol=0, atol=1e-5)


def test_batch_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(20) == [1, 2, 4, 8, 16, 20]
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 32, 48, 64]
    b256 = batch_buckets(256)
    assert b256[:5] == [1, 2, 4, 8, 16] and b256[-1] == 256
    assert all(b % 16 == 0 for b in b256[4:])
    assert len(b256) == 20  # few shapes, so the session plans few


@pytest.mark.parametrize("max_batch", [1, 5, 16, 17, 100, 256])
def test_buckets_hold_every_batch_size_with_little_padding(max_batch):
    buckets = batch_buckets(max_batch)
    assert buckets == sorted(set(buckets)) and buckets[0] == 1 and buckets[-1] == max_batch
    for n in range(1, max_batch + 1):
        padded_to = min(b for b in buckets if b >= n)
        assert padded_to - n < min(n, 16)  # under 2x for small batches, under 16 images above


def test_engine_bucket_for(engine):
    assert [engine.bucket_for(n) for n in range(1, MAX_BATCH + 1)] == [1, 2, 4, 4, 8, 8, 8, 8]


@pytest.mark.parametrize(
    "images, message",
    [
        (random_images(1).astype(np.float32), "uint8"),
        (random_images(1).astype(np.int64), "uint8"),
        (random_images(1).tolist(), "uint8"),
        (np.zeros((1, 3, 224, 224), dtype=np.uint8), r"shape \[N, 224, 224, 3\], got \[1, 3, 224, 224\]"),
        (np.zeros((224, 224, 3), dtype=np.uint8), r"got \[224, 224, 3\]"),
        (np.zeros((1, 256, 256, 3), dtype=np.uint8), r"got \[1, 256, 256, 3\]"),
        (np.zeros((0, 224, 224, 3), dtype=np.uint8), rf"batch size must be in 1\.\.{MAX_BATCH}, got 0"),
        (np.zeros((MAX_BATCH + 1, 224, 224, 3), dtype=np.uint8), rf"1\.\.{MAX_BATCH}, got {MAX_BATCH + 1}"),
    ],
    ids=["float32", "int64", "list", "nchw", "no-batch-axis", "256px", "empty", "over-max"],
)
def test_bad_input_is_an_input_error_not_a_config_error(engine, images, message):
    with pytest.raises(InputError, match=message) as raised:
        engine.encode(images)
    assert not isinstance(raised.value, ConfigError)


@pytest.mark.parametrize("max_batch_size", [0, -4, 5000])
def test_max_batch_size_out_of_range(model_dir, max_batch_size):
    with pytest.raises(ConfigError, match=rf"max_batch_size must be in 1\.\.4096 images, got {max_batch_size}"):
        Engine(model_dir, provider="cpu", max_batch_size=max_batch_size)


def test_missing_model_says_to_export(tmp_path):
    for where in (tmp_path / "nowhere", tmp_path):  # no directory; a directory without model.onnx
        with pytest.raises(ModelNotFoundError, match="rayscale export") as info:
            Engine(where, provider="cpu")
        assert str(where) in str(info.value)


@pytest.mark.parametrize("content", [b"half a download", b"xx", b""])
def test_a_corrupt_model_file_says_to_export_again(tmp_path, content):
    (tmp_path / "model.onnx").write_bytes(content)
    with pytest.raises(ModelNotFoundError, match=f"cannot load {tmp_path / 'model.onnx'}.*rayscale export") as info:
        Engine(tmp_path, provider="cpu")
    assert "\n" not in str(info.value)


def test_a_model_with_another_signature_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 224, 224])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 224, 224])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "model.onnx")
    with pytest.raises(ModelNotFoundError, match=r"takes x tensor\(float\).*expected IMAGE tensor\(uint8\).*rayscale export"):
        Engine(tmp_path, provider="cpu")


def test_unknown_provider(model_dir):
    with pytest.raises(ConfigError, match="provider must be auto, cuda or cpu, got 'tpu'"):
        Engine(model_dir, provider="tpu")


@pytest.mark.skipif(_has_cuda_driver(), reason="checks the CPU-only host")
def test_asking_for_cuda_without_a_gpu_fails_loudly(model_dir):
    with pytest.raises(ConfigError, match="CUDAExecutionProvider"):
        Engine(model_dir, provider="cuda", warmup=False)


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda_driver(), reason="needs an NVIDIA GPU")
def test_cuda_engine_matches_the_cpu_engine(model_dir, engine):
    gpu = Engine(model_dir, provider="cuda", max_batch_size=MAX_BATCH)
    assert gpu.provider == "cuda"
    images = random_images(7, seed=5)  # padded to the 8-image bucket on the GPU
    expected = engine.encode(images)
    got = gpu.encode(images)
    assert got.shape == (7, EMBED_DIM) and got.dtype == np.float32
    assert cosine_rows(got, expected).min() > 0.999
    parts, _, _ = gpu.encode_parts([images[:3], images[3:]])
    np.testing.assert_allclose(np.concatenate(parts), got, rtol=0, atol=1e-3)
    np.testing.assert_array_equal(gpu.encode(images), got)  # reused buffers give the same answer


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda_driver(), reason="needs an NVIDIA GPU")
def test_every_copy_mode_gives_the_same_answer_also_from_two_threads(model_dir):
    from concurrent.futures import ThreadPoolExecutor

    gpu = Engine(model_dir, provider="cuda", max_batch_size=MAX_BATCH)
    assert gpu.copy == "pinned", "page-locked staging should load the CUDA runtime onnxruntime uses"
    images = random_images(MAX_BATCH, seed=9)
    want_full, want_part = gpu.encode(images), gpu.encode(images[:5])
    want_parts, _, _ = gpu.encode_parts([images[:3], images[3:5]])
    batches = [random_images(MAX_BATCH, seed=s) for s in range(4)]
    want_batches = [gpu.encode(b) for b in batches]
    for mode in ("direct", "pageable", "pinned"):
        assert gpu.set_copy(mode) == mode
        np.testing.assert_array_equal(gpu.encode(images), want_full)
        np.testing.assert_array_equal(gpu.encode(images[:5]), want_part)
        got_parts, _, _ = gpu.encode_parts([images[:3], images[3:5]])
        np.testing.assert_array_equal(np.concatenate(got_parts), np.concatenate(want_parts))
        # Two threads at once, each with its own stream and buffers, still answer their own images.
        with ThreadPoolExecutor(2) as pool:
            for _ in range(5):
                for got, want in zip(pool.map(gpu.encode, batches), want_batches, strict=True):
                    np.testing.assert_array_equal(got, want)
    gpu.release_buffers()  # as a replica does after warming up: this thread allocates afresh
    np.testing.assert_array_equal(gpu.encode(images), want_full)
    np.testing.assert_array_equal(gpu.encode(images[:5]), want_part)


def test_release_buffers_frees_the_calling_threads_buffers_only(engine):
    """A replica warms up on one thread and runs batches on others: it frees the warm-up's set."""
    mine = engine._buffers()
    ready, done, kept = threading.Event(), threading.Event(), {}

    def worker() -> None:
        kept["before"] = engine._buffers()
        ready.set()
        done.wait(10)
        kept["after"] = engine._buffers()

    t = threading.Thread(target=worker)
    t.start()
    ready.wait(10)
    engine.release_buffers()
    done.set()
    t.join()
    assert kept["after"] is kept["before"]  # the other thread's buffers survive
    assert engine._buffers() is not mine  # this thread's were dropped and are made anew
    engine.release_buffers()
    engine.release_buffers()  # releasing twice is harmless


def test_unknown_copy_mode_is_refused(model_dir):
    engine = Engine(model_dir, provider="cpu", warmup=False)
    with pytest.raises(ConfigError, match="copy mode must be one of pinned, direct, pageable"):
        engine.set_copy("zero-copy")

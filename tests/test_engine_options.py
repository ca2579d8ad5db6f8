"""Engine options: one typed set of settings that reaches rayscale's engine, Serve's config and Triton's model."""

from __future__ import annotations

import numpy as np
import pytest

from rayscale.config import ServeConfig
from rayscale.engine import Engine, _has_cuda_driver, random_images
from rayscale.engine_options import EngineOptions, create_engine
from rayscale.errors import ConfigError
from rayscale.serve.app import parse_app_args
from rayscale.triton.repository import engine_parameters, python_backend_config


def test_defaults_are_the_measured_baseline_and_write_no_spec():
    options = EngineOptions()
    assert options.spec() == ""
    # The CUDA provider's options rayscale always used, unchanged until a measurement says otherwise.
    assert options.cuda_provider_options(3) == {
        "device_id": "3",
        "cudnn_conv_algo_search": "HEURISTIC",
        "do_copy_in_default_stream": "1",
    }


def test_a_spec_parses_into_provider_options_and_writes_back_the_same():
    options = EngineOptions.parse("cuda_graph=1, attention=flash,tunable-op=true")
    assert options == EngineOptions(cuda_graph=True, attention="flash", tunable_op=True)
    provider = options.cuda_provider_options(0)
    assert provider["enable_cuda_graph"] == "1"
    assert provider["sdpa_kernel"] == "1"  # onnxruntime's AttentionBackend.FLASH_ATTENTION
    assert provider["tunable_op_enable"] == "1"
    assert EngineOptions.parse(options.spec()) == options
    assert EngineOptions.parse("attention=cudnn").cuda_provider_options(0)["sdpa_kernel"] == "8"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cuda_graphs=1", "unknown engine option 'cuda_graphs': valid ones are backend, cuda_graph"),
        ("cuda_graph", "must be key=value"),
        ("cuda_graph=maybe", "must be 1 or 0"),
        ("attention=fastest", "attention must be one of auto, flash, efficient, trt, cudnn, math"),
        ("backend=tensorrt", "backend must be one of onnxruntime, torch"),
        ("backend=torch,cuda_graph=1", "are onnxruntime settings"),
        ("torch_compile=default", "torch_compile needs backend=torch"),
    ],
)
def test_a_bad_spec_names_the_problem(spec, message):
    with pytest.raises(ConfigError, match=message):
        EngineOptions.parse(spec)


def test_serve_config_takes_options_as_themselves_a_spec_or_a_config_files_mapping():
    typed = ServeConfig(engine=EngineOptions(cuda_graph=True))
    assert ServeConfig(engine="cuda_graph=1").engine == typed.engine
    assert parse_app_args({"engine": {"cuda_graph": "true"}}).engine == typed.engine
    # What Serve's config file and the Kubernetes manifests carry reads back the same.
    assert ServeConfig(**typed.to_dict()).engine == typed.engine
    assert ServeConfig().engine == EngineOptions()
    with pytest.raises(ConfigError, match="unknown engine option"):
        parse_app_args({"engine": "turbo=1"})


def test_triton_model_config_carries_the_same_onnxruntime_settings():
    text = python_backend_config(gpus=1, engine_options=EngineOptions(cuda_graph=True, attention="efficient"))
    assert 'key: "cuda_graph" value: { string_value: "1" }' in text
    assert "sdpa_kernel=2" in text and "enable_cuda_graph=1" in text
    assert "device_id" not in text  # each instance adds its own device
    assert (
        engine_parameters(EngineOptions())["cuda_provider_options"]
        == "cudnn_conv_algo_search=HEURISTIC;do_copy_in_default_stream=1"
    )
    with pytest.raises(ConfigError, match="runs onnxruntime"):
        engine_parameters(EngineOptions(backend="torch"))


def test_engine_runs_with_options_and_gives_the_same_embeddings(model_dir):
    images = random_images(3, seed=5)
    baseline = Engine(model_dir, provider="cpu", max_batch_size=4, warmup=False)
    tuned = create_engine(
        model_dir,
        options=EngineOptions.parse("graph_optimization=basic,cuda_graph=1"),
        provider="cpu",
        max_batch_size=4,
        warmup=False,
    )
    assert isinstance(tuned, Engine) and tuned.options.graph_optimization == "basic"
    np.testing.assert_allclose(tuned.encode(images), baseline.encode(images), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="use rayscale.engine_options.create_engine"):
        Engine(model_dir, provider="cpu", options=EngineOptions(backend="torch"), warmup=False)


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda_driver(), reason="needs an NVIDIA GPU")
def test_cuda_graphs_and_attention_kernels_give_the_plain_engines_answers_also_from_two_threads(model_dir):
    from concurrent.futures import ThreadPoolExecutor

    plain = Engine(model_dir, provider="cuda", max_batch_size=8)
    batches = [random_images(n, seed=n) for n in (8, 5, 8, 3)]  # two buckets, each run past graph capture
    want = [plain.encode(b) for b in batches]
    for spec in ("cuda_graph=1", "attention=flash", "attention=cudnn,cuda_graph=1"):
        engine = Engine(model_dir, provider="cuda", max_batch_size=8, options=EngineOptions.parse(spec))
        for _ in range(4):
            for b, w in zip(batches, want, strict=True):
                np.testing.assert_allclose(engine.encode(b), w, rtol=0, atol=2e-3, err_msg=spec)
        # Threads have their own buffers, so their own graphs: each still gets its own images' answer.
        with ThreadPoolExecutor(2) as pool:
            for _ in range(3):
                for got, w in zip(pool.map(engine.encode, batches), want, strict=True):
                    np.testing.assert_allclose(got, w, rtol=0, atol=2e-3, err_msg=spec)

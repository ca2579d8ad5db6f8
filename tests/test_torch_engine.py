"""The torch engine (backend=torch): open_clip's weights with SDPA attention, the same contract as Engine."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("open_clip")

from rayscale.config import EMBED_DIM
from rayscale.engine import Engine
from rayscale.engine_options import EngineOptions, create_engine
from rayscale.errors import InputError
from rayscale.export import cosine_rows, parity_batch
from rayscale.torch_engine import TorchEngine


def test_torch_engine_matches_the_onnx_engine_on_the_same_weights(model_dir):
    engine = create_engine(model_dir, options=EngineOptions(backend="torch"), provider="cpu", max_batch_size=4, warmup=False)
    assert isinstance(engine, TorchEngine) and engine.provider == "cpu"
    images = parity_batch(3, seed=2)
    got = engine.encode(images)
    assert got.shape == (3, EMBED_DIM) and got.dtype == np.float32
    expected = Engine(model_dir, provider="cpu", max_batch_size=4, warmup=False).encode(images)
    assert cosine_rows(got, expected).min() > 0.9999
    # As a replica calls it: several requests as one batch, outputs split back per request.
    outputs, gather_ns, run_ns = engine.encode_parts([images[:1], images[1:]])
    assert [o.shape[0] for o in outputs] == [1, 2] and gather_ns >= 0 and run_ns > 0
    np.testing.assert_allclose(np.concatenate(outputs), got, rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="batch size must be in 1..4"):
        engine.encode_parts([images, images])
    with pytest.raises(InputError, match="uint8"):
        engine.encode(images.astype(np.float32))


@pytest.mark.timeout(600)
def test_a_replica_serves_the_torch_engine_through_the_same_code(model_dir):
    import ray
    from ray import serve

    from rayscale.config import ServeConfig
    from rayscale.serve.app import DEPLOYMENT_NAME
    from rayscale.serve.cluster import down, up

    from conftest import free_port, start_local_ray

    start_local_ray(num_cpus=2, num_gpus=1, namespace="rayscale")
    cfg = ServeConfig(
        model_dir=str(model_dir),
        replicas=1,
        gpus_per_replica=1,
        cpus_per_replica=0.5,
        provider="cpu",
        port=free_port(),
        grpc_port=free_port(),
        max_batch_size=8,
        engine="backend=torch",
    )
    try:
        result = up(cfg, exporter=False)
        assert [r.backend for r in result.replica_info] == ["torch"]
        images = parity_batch(2, seed=4)
        handle = serve.get_deployment_handle(DEPLOYMENT_NAME, cfg.app_name)
        served = handle.infer.remote(images).result(timeout_s=120)
        expected = Engine(model_dir, provider="cpu", max_batch_size=8, warmup=False).encode(images)
        assert cosine_rows(served, expected).min() > 0.9999
    finally:
        down(cfg.app_name)
        ray.shutdown()

"""Hostile input on every endpoint of the protocol: a 4xx with a JSON error each time, never a 5xx,
never a crash, and the same embedding for a valid request afterwards.

Hand-written cases cover each way a request can be wrong; hypothesis adds a bounded number of
generated bodies, headers, paths and methods. Everything goes over real HTTP to one replica.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayscale import protocol
from rayscale.config import IMAGE_BYTES, MODEL_NAME, ServeConfig
from rayscale.engine import random_images

from conftest import free_port, start_local_ray

pytestmark = pytest.mark.timeout(600)

BODY_LIMIT = 4 * IMAGE_BYTES * 5 + 4096  # a little over one JSON batch of 4 images
INFER = f"/v2/models/{MODEL_NAME}/infer"
GOOD = random_images(2, seed=21)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    import ray

    from rayscale.serve.cluster import down, up

    saved = os.environ.get("RAYSCALE_STATE_DIR")
    os.environ["RAYSCALE_STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
    start_local_ray(num_cpus=4, num_gpus=1, namespace="rayscale")
    cfg = ServeConfig(
        model_dir=str(model_dir),
        replicas=1,
        gpus_per_replica=1,
        cpus_per_replica=0.5,
        provider="cpu",
        port=free_port(),
        grpc_port=free_port(),
        max_batch_size=4,
        batch_wait_ms=1,
        max_body_bytes=BODY_LIMIT,
    )
    app = up(cfg, exporter=False)
    host, port = app.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    reference = _embedding(conn)
    yield conn, reference
    conn.close()
    down(cfg.app_name, stop_cluster=False)
    if ray.is_initialized():
        ray.shutdown()
    if saved is None:
        os.environ.pop("RAYSCALE_STATE_DIR", None)
    else:
        os.environ["RAYSCALE_STATE_DIR"] = saved


def _send(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    for attempt in range(2):
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
        except (http.client.HTTPException, OSError):
            conn.close()  # an idle keep-alive connection the server closed: one retry on a fresh one
            if attempt:
                raise
    raise AssertionError("unreachable")


def _embedding(conn) -> np.ndarray:
    body, headers = protocol.build_infer_request(GOOD)
    status, data, h = _send(conn, "POST", INFER, body, headers)
    assert status == 200, data[:300]
    return protocol.parse_infer_response(data, h.get(protocol.HEADER_LENGTH.lower())).copy()


def _assert_client_error(status: int, data: bytes, headers: dict[str, str], what: object) -> str:
    assert 400 <= status < 500, (what, status, data[:300])
    assert headers.get("content-type", "").startswith("application/json"), (what, headers)
    error = json.loads(data)["error"]
    assert isinstance(error, str) and error, (what, data[:300])
    return error


def _still_serves(server) -> None:
    conn, reference = server
    np.testing.assert_array_equal(_embedding(conn), reference)


# ---- hand-written cases ------------------------------------------------------------------------


def _binary(header: dict, raw: bytes, *, header_length: str | None = None) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + raw, {
        "Content-Type": "application/octet-stream",
        protocol.HEADER_LENGTH: header_length if header_length is not None else str(len(head)),
    }


def _spec(**changes) -> dict:
    spec = {"name": "IMAGE", "datatype": "UINT8", "shape": [2, 224, 224, 3], "parameters": {"binary_data_size": GOOD.nbytes}}
    spec.update(changes)
    return {"inputs": [spec], "outputs": [{"name": "EMBEDDING", "parameters": {"binary_data": True}}]}


def _cases() -> dict[str, tuple[str, str, bytes | None, dict[str, str], int]]:
    raw = GOOD.tobytes()
    good_body, good_headers = protocol.build_infer_request(GOOD)
    hl = int(good_headers[protocol.HEADER_LENGTH])
    json_body, json_headers = protocol.build_infer_request(GOOD[:1], binary=False)
    deep = b"[" * 100_000 + b"]" * 100_000
    gz = zlib.compress(b"\0" * (BODY_LIMIT * 4))
    c: dict[str, tuple[str, str, bytes | None, dict[str, str], int]] = {
        "wrong input name": ("POST", INFER, *_binary(_spec(name="PIXELS"), raw), 400),
        "wrong dtype": ("POST", INFER, *_binary(_spec(datatype="FP32"), raw), 400),
        "string dtype": ("POST", INFER, *_binary(_spec(datatype="BYTES"), raw), 400),
        "NCHW shape": ("POST", INFER, *_binary(_spec(shape=[2, 3, 224, 224]), raw), 400),
        "3-d shape": ("POST", INFER, *_binary(_spec(shape=[2, 224, 224]), raw), 400),
        "shape of strings": ("POST", INFER, *_binary(_spec(shape=["2", 224, 224, 3]), raw), 400),
        "shape of floats": ("POST", INFER, *_binary(_spec(shape=[2.0, 224, 224, 3]), raw), 400),
        "shape of booleans": ("POST", INFER, *_binary(_spec(shape=[True, 224, 224, 3]), raw), 400),
        "empty batch": ("POST", INFER, *_binary(_spec(shape=[0, 224, 224, 3], parameters={"binary_data_size": 0}), b""), 400),
        "negative batch": ("POST", INFER, *_binary(_spec(shape=[-1, 224, 224, 3]), raw), 400),
        "absurd batch": ("POST", INFER, *_binary(_spec(shape=[10**18, 224, 224, 3]), raw), 400),
        "huge batch over the limit": ("POST", INFER, *protocol.build_infer_request(random_images(5)), 400),
        "negative binary size": ("POST", INFER, *_binary(_spec(parameters={"binary_data_size": -5}), raw), 400),
        "binary size of a string": ("POST", INFER, *_binary(_spec(parameters={"binary_data_size": "big"}), raw), 400),
        "two inputs": ("POST", INFER, *_binary({"inputs": [_spec()["inputs"][0]] * 2}, raw + raw), 400),
        "no inputs": ("POST", INFER, b'{"inputs": []}', {"Content-Type": "application/json"}, 400),
        "inputs not a list": ("POST", INFER, b'{"inputs": {"name": "IMAGE"}}', {"Content-Type": "application/json"}, 400),
        "unknown output": ("POST", INFER, *_binary({**_spec(), "outputs": [{"name": "LOGITS"}]}, raw), 400),
        "id not a string": ("POST", INFER, *_binary({**_spec(), "id": 7}, raw), 400),
        "top-level array": ("POST", INFER, b"[1, 2, 3]", {"Content-Type": "application/json"}, 400),
        "malformed JSON": ("POST", INFER, b'{"inputs": [', {"Content-Type": "application/json"}, 400),
        "deeply nested JSON": ("POST", INFER, deep, {"Content-Type": "application/json"}, 400),
        "deeply nested data": (
            "POST",
            INFER,
            b'{"inputs":[{"name":"IMAGE","datatype":"UINT8","shape":[1,224,224,3],"data":'
            + b"[" * 50_000
            + b"]" * 50_000
            + b"}]}",
            {"Content-Type": "application/json"},
            400,
        ),
        "5000-digit number": (
            "POST",
            INFER,
            b'{"inputs": [{"name": "IMAGE", "shape": [' + b"9" * 5000 + b"]}]}",
            {"Content-Type": "application/json"},
            400,
        ),
        "NaN in JSON data": ("POST", INFER, re.sub(rb'"data":\[\d+', b'"data":[NaN', json_body, count=1), json_headers, 400),
        "pixel out of range": ("POST", INFER, re.sub(rb'"data":\[\d+', b'"data":[300', json_body, count=1), json_headers, 400),
        "negative pixel": ("POST", INFER, re.sub(rb'"data":\[\d+', b'"data":[-1', json_body, count=1), json_headers, 400),
        "float pixel": ("POST", INFER, re.sub(rb'"data":\[\d+', b'"data":[1.5', json_body, count=1), json_headers, 400),
        "not UTF-8": ("POST", INFER, b"\xff\xfe\x00garbage", {"Content-Type": "application/json"}, 400),
        "empty body": ("POST", INFER, b"", {"Content-Type": "application/json"}, 400),
        "truncated binary body": ("POST", INFER, good_body[:-1000], good_headers, 400),
        "over-long binary body": ("POST", INFER, good_body + b"\0" * 1000, good_headers, 400),
        "binary body without header length": ("POST", INFER, good_body, {"Content-Type": "application/octet-stream"}, 400),
        "header length past the body": (
            "POST",
            INFER,
            good_body,
            {**good_headers, protocol.HEADER_LENGTH: str(len(good_body) + 1)},
            400,
        ),
        "header length too short": ("POST", INFER, good_body, {**good_headers, protocol.HEADER_LENGTH: str(hl - 7)}, 400),
        "header length zero": ("POST", INFER, good_body, {**good_headers, protocol.HEADER_LENGTH: "0"}, 400),
        "header length negative": ("POST", INFER, good_body, {**good_headers, protocol.HEADER_LENGTH: "-4"}, 400),
        "header length not a number": ("POST", INFER, good_body, {**good_headers, protocol.HEADER_LENGTH: "ten"}, 400),
        "oversized body": ("POST", INFER, b"\0" * (BODY_LIMIT + 1), {"Content-Type": "application/octet-stream"}, 413),
        "gzip bomb": ("POST", INFER, gz, {"Content-Type": "application/json", "Content-Encoding": "deflate"}, 413),
        "bad gzip": ("POST", INFER, b"not gzip at all", {"Content-Type": "application/json", "Content-Encoding": "gzip"}, 400),
        "unknown encoding": ("POST", INFER, b"{}", {"Content-Type": "application/json", "Content-Encoding": "br"}, 400),
        "GET on infer": ("GET", INFER, None, {}, 405),
        "PUT on infer": ("PUT", INFER, b"{}", {}, 405),
        "DELETE on the model": ("DELETE", f"/v2/models/{MODEL_NAME}", None, {}, 405),
        "POST on metadata": ("POST", "/v2", b"{}", {}, 405),
        "POST on readiness": ("POST", "/v2/health/ready", b"{}", {}, 405),
        "POST on stats": ("POST", f"/v2/models/{MODEL_NAME}/stats", b"{}", {}, 405),
        "unknown model": ("POST", "/v2/models/resnet50/infer", good_body, good_headers, 404),
        "unknown version": ("POST", f"/v2/models/{MODEL_NAME}/versions/7/infer", good_body, good_headers, 404),
        "unknown action": ("POST", f"/v2/models/{MODEL_NAME}/explain", good_body, good_headers, 404),
        "path traversal": ("GET", "/v2/models/../../etc/passwd", None, {}, 404),
        "repository load": ("POST", f"/v2/repository/models/{MODEL_NAME}/load", b"{}", {}, 501),
        "shared memory": ("POST", "/v2/systemsharedmemory/region/x/register", b"{}", {}, 501),
    }
    return c


CASES = _cases()


@pytest.mark.parametrize("case", list(CASES))
def test_each_hostile_request_is_a_json_4xx(server, case):
    method, path, body, headers, expected = CASES[case]
    status, data, h = _send(server[0], method, path, body, headers)
    assert status == expected, (case, status, data[:300])
    if expected == 501:  # management extensions rayscale does not implement
        assert json.loads(data)["error"] and h["content-type"].startswith("application/json")
    else:
        _assert_client_error(status, data, h, case)


def test_after_every_hostile_request_the_embedding_is_unchanged(server):
    _still_serves(server)


def test_a_lying_content_length_is_refused_before_the_body_is_read(server):
    conn = server[0]
    conn.putrequest("POST", INFER)
    conn.putheader("Content-Length", str(BODY_LIMIT * 10))
    conn.putheader("Content-Type", "application/octet-stream")
    conn.endheaders()
    conn.send(b"\0" * 1024)  # then nothing more: the server must not wait for the rest
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    assert resp.status == 413, data[:300]
    assert "limit" in json.loads(data)["error"]
    _still_serves(server)


# ---- generated cases ---------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
_specs = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["IMAGE", "image", "", "EMBEDDING"]) | st.text(max_size=8),
        "datatype": st.sampled_from(["UINT8", "FP32", "INT8", "BYTES", "uint8"]) | _json_values,
        "shape": st.lists(st.integers(-(2**40), 2**40), max_size=6) | _json_values,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-10, 10**7) | _json_values})
        | _json_values,
        "data": st.lists(st.integers(-300, 300), max_size=20) | _json_values,
    },
)
_headers = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.lists(_specs, max_size=3) | _json_values,
        "outputs": st.lists(
            st.fixed_dictionaries({}, optional={"name": st.text(max_size=10), "parameters": _json_values}), max_size=2
        )
        | _json_values,
        "parameters": _json_values,
        "id": _json_values,
    },
)
_ASCII = st.characters(min_codepoint=32, max_codepoint=126)  # what an HTTP header value can carry
_fuzz = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@_fuzz
@given(
    header=_headers,
    tail=st.binary(max_size=64),
    header_length=st.one_of(st.none(), st.integers(-5, 5000).map(str), st.text(_ASCII, max_size=6)),
)
def test_generated_infer_requests_are_refused_with_json_4xx(server, header, tail, header_length):
    head = json.dumps(header).encode()
    headers = {"Content-Type": "application/octet-stream"}
    if header_length is not None:
        headers[protocol.HEADER_LENGTH] = header_length if not header_length.isdigit() else str(len(head))
    status, data, h = _send(server[0], "POST", INFER, head + tail, headers)
    # nothing generated here is a whole valid batch, so every answer is a refusal
    _assert_client_error(status, data, h, (header, tail, header_length))


@_fuzz
@given(body=st.binary(max_size=2048), content_type=st.sampled_from(["application/json", "application/octet-stream", ""]))
def test_random_bytes_are_refused_with_json_4xx(server, body, content_type):
    status, data, h = _send(server[0], "POST", INFER, body, {"Content-Type": content_type} if content_type else {})
    _assert_client_error(status, data, h, body[:100])


_segment = st.sampled_from(
    [
        "v2",
        "models",
        MODEL_NAME,
        "versions",
        "1",
        "infer",
        "ready",
        "config",
        "stats",
        "health",
        "live",
        "..",
        "%2e%2e",
        "repository",
        "x" * 300,
    ]
) | st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#%"), min_size=1, max_size=12)


@_fuzz
@given(
    segments=st.lists(_segment, max_size=6), method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
)
def test_every_path_and_method_gets_a_json_answer_and_never_a_5xx(server, segments, method):
    path = "/" + "/".join(segments)
    status, data, h = _send(server[0], method, path, b"{}" if method in ("POST", "PUT", "PATCH") else None)
    assert status < 500 or status == 501, (method, path, status, data[:300])
    if method != "HEAD" and status != 200:
        _assert_client_error(status, data, h, (method, path)) if status < 500 else json.loads(data)["error"]


def test_the_server_still_gives_the_same_embedding_after_the_fuzzing(server):
    _still_serves(server)

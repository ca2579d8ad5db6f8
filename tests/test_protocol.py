"""The Open Inference Protocol layer: what a client sends is what the server decodes, and every
malformed request is a 400 whose message names the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayscale.config import EMBED_DIM, IMAGE_BYTES, INPUT_NAME, MODEL_NAME, OUTPUT_NAME
from rayscale.engine import random_images
from rayscale.errors import BadRequest, ErrorReply
from rayscale.protocol import (
    HEADER_LENGTH,
    build_infer_request,
    encode_infer_response,
    parse_infer_request,
    parse_infer_response,
)

MAX_BATCH = 8


def parse(body: bytes, headers: dict[str, str] | None = None, *, max_batch_size: int = MAX_BATCH):
    return parse_infer_request(body, (headers or {}).get(HEADER_LENGTH), max_batch_size=max_batch_size)


def json_request(**input_fields) -> dict:
    spec = {"name": INPUT_NAME, "datatype": "UINT8", "shape": [1, 224, 224, 3]}
    spec.update(input_fields)
    return {"inputs": [spec]}


def binary_request(header: dict, raw: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + raw, {HEADER_LENGTH: str(len(head))}


def bad(body: bytes, headers: dict[str, str] | None = None, *, max_batch_size: int = MAX_BATCH) -> str:
    """The message of the BadRequest the request must raise; one line, HTTP 400."""
    with pytest.raises(BadRequest) as info:
        parse(body, headers, max_batch_size=max_batch_size)
    assert info.value.status_code == 400
    message = str(info.value)
    assert "\n" not in message
    return message


# ---- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
def test_binary_request_round_trip_is_zero_copy(n):
    images = random_images(n, seed=n)
    body, headers = build_infer_request(images, binary=True)
    assert headers["Content-Type"] == "application/octet-stream"
    assert len(body) == int(headers[HEADER_LENGTH]) + n * IMAGE_BYTES

    req = parse(body, headers)

    np.testing.assert_array_equal(req.images, images)
    assert req.images.dtype == np.uint8 and req.images.shape == (n, 224, 224, 3)
    assert req.binary_output is True
    # Decoding copies nothing: the batch is a read-only view of the request body.
    assert np.shares_memory(req.images, np.frombuffer(body, dtype=np.uint8))
    assert not req.images.flags.writeable


def test_json_request_round_trip():
    images = random_images(2, seed=7)
    body, headers = build_infer_request(images, binary=False)
    assert headers["Content-Type"] == "application/json"
    assert HEADER_LENGTH not in headers

    req = parse(body, headers)

    np.testing.assert_array_equal(req.images, images)
    assert req.images.dtype == np.uint8
    assert req.binary_output is False
    assert req.request_id is None


def test_request_id_travels_from_client_to_response():
    body, headers = build_infer_request(random_images(1), binary=True, request_id="req-42")
    req = parse(body, headers)
    assert req.request_id == "req-42"

    emb = np.ones((1, EMBED_DIM), dtype=np.float32)
    out, out_headers = encode_infer_response(MODEL_NAME, emb, binary=req.binary_output, request_id=req.request_id)
    head = json.loads(out[: int(out_headers[HEADER_LENGTH])])
    assert head["id"] == "req-42"
    assert head["model_name"] == MODEL_NAME


def test_binary_output_asked_for_at_request_level():
    header = json_request(parameters={"binary_data_size": IMAGE_BYTES})
    header["parameters"] = {"binary_data_output": True}
    body, headers = binary_request(header, bytes(IMAGE_BYTES))
    assert parse(body, headers).binary_output is True


@pytest.mark.parametrize("binary", [True, False])
def test_response_round_trip(binary):
    emb = np.random.default_rng(0).standard_normal((5, EMBED_DIM)).astype(np.float32)
    body, headers = encode_infer_response(MODEL_NAME, emb, binary=binary, request_id="r1")

    got = parse_infer_response(body, headers.get(HEADER_LENGTH))

    assert got.dtype == np.float32 and got.shape == (5, EMBED_DIM)
    # Binary is bit-exact; JSON goes through Python floats, which hold every float32 exactly.
    np.testing.assert_array_equal(got, emb)
    if binary:
        head_len = int(headers[HEADER_LENGTH])
        assert len(body) == head_len + emb.nbytes
        out = json.loads(body[:head_len])["outputs"][0]
        assert out["parameters"]["binary_data_size"] == emb.nbytes
    else:
        out = json.loads(body)["outputs"][0]
        assert HEADER_LENGTH not in headers
    assert (out["name"], out["datatype"], out["shape"]) == (OUTPUT_NAME, "FP32", [5, EMBED_DIM])


def test_a_servers_error_reply_is_the_servers_on_the_client():
    with pytest.raises(ErrorReply, match="the server answered: model is overloaded") as raised:
        parse_infer_response(json.dumps({"error": "model is overloaded"}).encode(), None)
    assert not isinstance(raised.value, BadRequest)  # not a server-side refusal of a request


@pytest.mark.parametrize(
    "body, header_length, needle",
    [
        (b"<html>bad gateway</html>", None, "malformed inference response"),
        (json.dumps({"outputs": [{"name": "OTHER", "shape": [1], "data": [0]}]}).encode(), None, "StopIteration"),
        (
            json.dumps(
                {
                    "outputs": [
                        {"name": OUTPUT_NAME, "shape": [2, 512], "datatype": "FP32", "parameters": {"binary_data_size": 4096}}
                    ]
                }
            ).encode(),
            None,
            "without the",
        ),
        (b'{"outputs": []}', "999", "malformed inference response"),
    ],
)
def test_a_malformed_response_is_an_error_reply_that_quotes_it(body, header_length, needle):
    with pytest.raises(ErrorReply, match=needle):
        parse_infer_response(body, header_length)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    request_id=st.none() | st.text(max_size=40),
    binary=st.booleans(),
    headroom=st.integers(0, 4),
)
def test_parse_inverts_build(n, seed, request_id, binary, headroom):
    images = random_images(n, seed=seed)
    body, headers = build_infer_request(images, binary=binary, request_id=request_id)

    req = parse(body, headers, max_batch_size=n + headroom)

    np.testing.assert_array_equal(req.images, images)
    assert req.images.shape == images.shape and req.images.dtype == np.uint8
    assert req.request_id == request_id
    assert req.binary_output is binary


# ---- bad requests --------------------------------------------------------------------------------


def test_empty_body():
    assert "empty request body" in bad(b"")


def test_wrong_input_name():
    msg = bad(json.dumps(json_request(name="INPUT__0", data=[0] * IMAGE_BYTES)).encode())
    assert "INPUT__0" in msg and INPUT_NAME in msg


@pytest.mark.parametrize("datatype", ["FP32", "INT8", "BYTES", None])
def test_wrong_datatype(datatype):
    msg = bad(json.dumps(json_request(datatype=datatype, data=[0] * IMAGE_BYTES)).encode())
    assert "UINT8" in msg and repr(datatype) in msg


@pytest.mark.parametrize(
    "shape",
    [[1, 3, 224, 224], [1, 224, 224], [224, 224, 3], [1, 256, 256, 3], [1, 224, 224, 3, 1]],
)
def test_wrong_shape(shape):
    msg = bad(json.dumps(json_request(shape=shape, data=[0] * IMAGE_BYTES)).encode())
    assert "shape" in msg and str(shape) in msg


@pytest.mark.parametrize("shape", ["1,224,224,3", [1.0, 224, 224, 3], [True, 224, 224, 3], None])
def test_shape_that_is_not_a_list_of_integers(shape):
    assert "list of integers" in bad(json.dumps(json_request(shape=shape, data=[0])).encode())


def test_batch_zero():
    msg = bad(json.dumps(json_request(shape=[0, 224, 224, 3], data=[])).encode())
    assert "batch size must be ≥ 1" in msg and "got 0" in msg


def test_batch_over_max():
    n = MAX_BATCH + 1
    header = json_request(shape=[n, 224, 224, 3], parameters={"binary_data_size": n * IMAGE_BYTES})
    body, headers = binary_request(header, bytes(n * IMAGE_BYTES))
    msg = bad(body, headers)
    assert f"batch size {n}" in msg and f"max_batch_size {MAX_BATCH}" in msg


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"inputs": [', b"\xff\xfe\x00garbage", b"nan", b'{"inputs": [{"shape": [' + b"1" * 5000 + b"]}]}"],
    ids=["unquoted", "unterminated", "not-utf8", "bare-word", "5000-digit-number"],
)
def test_malformed_json(body):
    assert "malformed JSON" in bad(body)


@pytest.mark.parametrize("depth", [100_000, 5_000])
def test_deeply_nested_json(depth):
    assert "nested too deeply" in bad(b"[" * depth + b"]" * depth)
    assert "nested too deeply" in bad(b'{"a":' * depth + b"1" + b"}" * depth)


@pytest.mark.parametrize(
    "header, expected",
    [([1, 2], "JSON object"), ({"inputs": []}, "non-empty 'inputs'"), ({"inputs": [1]}, "JSON object")],
)
def test_body_that_is_not_an_infer_request(header, expected):
    assert expected in bad(json.dumps(header).encode())


def test_two_inputs():
    header = json_request(data=[0] * IMAGE_BYTES)
    header["inputs"].append(dict(header["inputs"][0]))
    assert "exactly one input" in bad(json.dumps(header).encode())


def test_truncated_binary_body():
    header = json_request(parameters={"binary_data_size": IMAGE_BYTES})
    body, headers = binary_request(header, bytes(IMAGE_BYTES))
    msg = bad(body[:-10], headers)
    assert f"{IMAGE_BYTES - 10} bytes" in msg and f"expected {IMAGE_BYTES}" in msg


def test_over_long_binary_body():
    header = json_request(parameters={"binary_data_size": IMAGE_BYTES})
    body, headers = binary_request(header, bytes(IMAGE_BYTES + 3))
    msg = bad(body, headers)
    assert f"{IMAGE_BYTES + 3} bytes" in msg and f"expected {IMAGE_BYTES}" in msg


def test_bytes_after_a_json_only_header():
    head = json.dumps(json_request(data=[0] * IMAGE_BYTES)).encode()
    msg = bad(head + b"extra", {HEADER_LENGTH: str(len(head))})
    assert "5 bytes follow the JSON header" in msg


@pytest.mark.parametrize("value", ["abc", "12.5", "", "0x10"])
def test_header_length_not_an_integer(value):
    body, _ = build_infer_request(random_images(1))
    msg = bad(body, {HEADER_LENGTH: value})
    assert HEADER_LENGTH in msg and "integer" in msg and repr(value) in msg


@pytest.mark.parametrize("delta", [1, 10_000_000])
def test_header_length_larger_than_the_body(delta):
    body, _ = build_infer_request(random_images(1))
    n = len(body) + delta
    msg = bad(body, {HEADER_LENGTH: str(n)})
    assert f"is {n}" in msg and f"body has {len(body)} bytes" in msg


@pytest.mark.parametrize("value", ["0", "-5"])
def test_header_length_not_positive(value):
    body, _ = build_infer_request(random_images(1))
    assert HEADER_LENGTH in bad(body, {HEADER_LENGTH: value})


def test_header_length_that_cuts_the_json():
    body, headers = build_infer_request(random_images(1))
    assert "malformed JSON" in bad(body, {HEADER_LENGTH: str(int(headers[HEADER_LENGTH]) - 1)})


def test_binary_data_size_does_not_match_shape():
    header = json_request(shape=[2, 224, 224, 3], parameters={"binary_data_size": IMAGE_BYTES})
    body, headers = binary_request(header, bytes(IMAGE_BYTES))
    msg = bad(body, headers)
    assert f"binary_data_size is {IMAGE_BYTES}" in msg and f"needs {2 * IMAGE_BYTES}" in msg


@pytest.mark.parametrize("size", [-1, "150528", 1.5, True])
def test_binary_data_size_not_a_count(size):
    body, headers = binary_request(json_request(parameters={"binary_data_size": size}), bytes(IMAGE_BYTES))
    assert "binary_data_size must be a non-negative integer" in bad(body, headers)


def test_binary_body_without_header_length_names_the_header():
    body, _ = build_infer_request(random_images(1), binary=True)
    assert HEADER_LENGTH in bad(body, None)


def test_binary_data_size_without_header_length():
    head = json.dumps(json_request(parameters={"binary_data_size": IMAGE_BYTES})).encode()
    assert HEADER_LENGTH in bad(head, None)


@pytest.mark.parametrize("value", [256, -1, 1000])
def test_json_data_out_of_uint8_range(value):
    data = [0] * IMAGE_BYTES
    data[123] = value
    assert "0..255" in bad(json.dumps(json_request(data=data)).encode())


@pytest.mark.parametrize("count", [1, IMAGE_BYTES - 1, IMAGE_BYTES + 1])
def test_json_data_wrong_count(count):
    msg = bad(json.dumps(json_request(data=[0] * count)).encode())
    assert f"has {count} values" in msg and f"needs {IMAGE_BYTES}" in msg


@pytest.mark.parametrize("value", [1.5, "7", None, 2**70])
def test_json_data_not_integers(value):
    data = [0] * IMAGE_BYTES
    data[0] = value
    assert f"input {INPUT_NAME} 'data'" in bad(json.dumps(json_request(data=data)).encode())


def test_json_data_ragged_or_deep():
    assert "not a regular array" in bad(json.dumps(json_request(data=[[1, 2], [3]])).encode())
    deep: object = 1
    for _ in range(200):
        deep = [deep]
    assert "not a regular array" in bad(json.dumps(json_request(data=deep)).encode())


def test_json_data_missing():
    assert "neither 'data' nor parameters.binary_data_size" in bad(json.dumps(json_request()).encode())


@pytest.mark.parametrize("outputs", [[{"name": "LOGITS"}], ["EMBEDDING"], [{"name": OUTPUT_NAME}, {"name": "x"}]])
def test_unknown_output_name(outputs):
    header = json_request(data=[0] * IMAGE_BYTES)
    header["outputs"] = outputs
    msg = bad(json.dumps(header).encode())
    assert "unknown output" in msg and OUTPUT_NAME in msg


def test_request_id_must_be_a_string():
    header = json_request(data=[0] * IMAGE_BYTES)
    header["id"] = 5
    assert "'id' must be a string" in bad(json.dumps(header).encode())

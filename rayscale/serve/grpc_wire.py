"""ModelInferRequest and ModelInferResponse on the protobuf wire, with their tensor bytes left where they are.

Parsing a ModelInferRequest with protobuf copies ``raw_input_contents`` into protobuf's arena, and
every ``request.raw_input_contents[0]`` makes another ``bytes`` of it: at 32 images that is two
copies of 4.8 MB before the batch sees the images. Here the gRPC method takes the serialized
request as it arrived, ``split_infer_request`` walks its top-level fields (protobuf's wire format:
a varint key, then a varint, fixed-width or length-delimited value), keeps ``raw_input_contents``
as zero-copy views of that message, and lets protobuf parse everything else, which is small.
A response is protobuf's serialization of its small fields, followed by ``raw_output_contents``
written as a length-delimited field: concatenated fields are one message on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass

from tritonclient.grpc import service_pb2

from rayscale.errors import BadRequest

__all__ = ["RawInferRequest", "encode_infer_response", "split_infer_request"]

_RAW_INPUT_CONTENTS = 7  # ModelInferRequest.raw_input_contents: repeated bytes
_RAW_OUTPUT_CONTENTS = 6  # ModelInferResponse.raw_output_contents: repeated bytes
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


class RawInferRequest:
    """A ModelInferRequest as received: the gRPC method's request deserializer, which cannot fail
    (a malformed message is found, and answered INVALID_ARGUMENT, in the handler)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


@dataclass
class InferRequestParts:
    request: service_pb2.ModelInferRequest  # every field but raw_input_contents
    raw_input_contents: list[memoryview]  # views of the received message, in order


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise BadRequest("malformed ModelInferRequest: a truncated or over-long varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def split_infer_request(data: bytes) -> InferRequestParts:
    """The request's small fields parsed by protobuf, and its raw_input_contents as views of ``data``."""
    raw: list[memoryview] = []
    rest: list[memoryview] = []
    view = memoryview(data)
    pos, end = 0, len(data)
    while pos < end:
        start = pos
        key, pos = _varint(data, pos, end)
        field, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            _, pos = _varint(data, pos, end)
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        elif wire_type == _LENGTH_DELIMITED:
            length, pos = _varint(data, pos, end)
            if field == _RAW_INPUT_CONTENTS and pos + length <= end:
                raw.append(view[pos : pos + length])
                pos += length
                continue
            pos += length
        else:
            raise BadRequest(f"malformed ModelInferRequest: field {field} has wire type {wire_type}")
        if field == 0 or pos > end:
            raise BadRequest("malformed ModelInferRequest: a field runs past the end of the message")
        rest.append(view[start:pos])
    try:
        request = service_pb2.ModelInferRequest.FromString(b"".join(rest))
    except Exception as e:  # protobuf's DecodeError, by whichever implementation is installed
        raise BadRequest(f"malformed ModelInferRequest: {e}") from None
    return InferRequestParts(request=request, raw_input_contents=raw)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_infer_response(response: service_pb2.ModelInferResponse, raw_output: memoryview | bytes) -> bytes:
    """``response`` serialized with ``raw_output`` appended as its one raw_output_contents entry."""
    key = _varint_bytes(_RAW_OUTPUT_CONTENTS << 3 | _LENGTH_DELIMITED)
    return b"".join((response.SerializeToString(), key, _varint_bytes(len(raw_output)), raw_output))

"""The load generator's gRPC transport: Triton's ``inference.GRPCInferenceService``, as tritonclient.grpc speaks it.

A URL for gRPC is ``host:port`` (``grpc://host:port`` too); ``grpc_address`` checks and normalises it.

``GrpcSender`` is what a ``LoadClient`` uses for ``kind="grpc"``: one channel per client actor
(HTTP/2 multiplexes every in-flight request over it), and the ModelInfer request serialised
once per images-per-request, so a request costs the client no protobuf work; only the response
is parsed. Each call's outcome is ``None`` (success) or an error kind: ``grpc_<status code>``
(``grpc_unavailable`` for a full queue or an unreachable server, ``grpc_invalid_argument``, ...),
or ``bad_response`` when the embeddings do not have the expected size.

``preflight`` and ``fetch_statistics`` are the gRPC forms of the HTTP checks before a sweep and
the statistics read around each window; they return the same JSON shapes as the HTTP endpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from rayscale.config import EMBED_DIM, IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAME
from rayscale.errors import ConfigError, ErrorReply, ServerError
from rayscale.loadgen.target_spec import TargetSpec

if TYPE_CHECKING:
    import grpc

__all__ = ["GRPC_SCHEME", "GrpcSender", "fetch_statistics", "grpc_address", "preflight"]

GRPC_SCHEME = "grpc://"
_UNLIMITED = -1
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", _UNLIMITED),
    ("grpc.max_receive_message_length", _UNLIMITED),
]


def grpc_address(url: str) -> str:
    """'host:port' or 'grpc://host:port' -> 'host:port' (an IPv6 host in brackets); ConfigError otherwise."""
    address = url[len(GRPC_SCHEME) :] if url.startswith(GRPC_SCHEME) else url
    host, sep, port = address.rpartition(":")
    if "://" in address or "/" in address or not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"a gRPC URL is host:port (or grpc://host:port), e.g. 127.0.0.1:8001; got {url!r}")
    return address


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def _method_path(name: str) -> str:
    from tritonclient.grpc import service_pb2

    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    return f"/{service.full_name}/{service.methods_by_name[name].name}"


class GrpcSender:
    """Sends one prebuilt ModelInfer request over one channel, as often as the load shape asks."""

    def __init__(self, target: TargetSpec):
        self.target = target
        self.address = grpc_address(target.server_url())
        self.channel: grpc.aio.Channel | None = None

    async def prepare(self, images_per_request: int, seed: int = 0) -> dict[str, Any]:
        """Build the request once, open the channel and check one answer; raises ErrorReply if wrong."""
        import grpc
        from tritonclient.grpc import service_pb2

        images = np.random.default_rng(seed).integers(0, 256, size=(images_per_request, *IMAGE_SHAPE), dtype=np.uint8)
        request = service_pb2.ModelInferRequest(model_name=self.target.model)
        request.inputs.add(name=INPUT_NAME, datatype="UINT8", shape=list(images.shape))
        request.outputs.add(name=OUTPUT_NAME)
        request.raw_input_contents.append(images.tobytes())
        self.request_bytes = request.SerializeToString()
        self.expected_output_bytes = images_per_request * EMBED_DIM * 4
        self.metadata = _metadata(self.target.token)
        await self.close()
        self.channel = grpc.aio.insecure_channel(self.address, options=_CHANNEL_OPTIONS)
        # The request goes out as the bytes built above (no serialiser): nothing per request but the send.
        self._infer: grpc.aio.UnaryUnaryMultiCallable = self.channel.unary_unary(
            _method_path("ModelInfer"), request_serializer=None, response_deserializer=service_pb2.ModelInferResponse.FromString
        )
        try:
            response = await self._infer(self.request_bytes, metadata=self.metadata, timeout=self.target.timeout_s)
        except grpc.aio.AioRpcError as e:
            raise ErrorReply(f"target answered gRPC {e.code().name}: {e.details()}") from None
        if not response.raw_output_contents or len(response.raw_output_contents[0]) != self.expected_output_bytes:
            shape = list(response.outputs[0].shape) if response.outputs else None
            raise ErrorReply(f"target returned embeddings of shape {shape}, expected {[images_per_request, EMBED_DIM]}")
        return {"ok": True, "request_bytes": len(self.request_bytes)}

    async def send(self) -> str | None:
        """One request: None when it succeeded, else its error kind."""
        import grpc

        try:
            response = await self._infer(self.request_bytes, metadata=self.metadata, timeout=self.target.timeout_s)
        except grpc.aio.AioRpcError as e:
            return f"grpc_{e.code().name.lower()}"
        if len(response.raw_output_contents) != 1 or len(response.raw_output_contents[0]) != self.expected_output_bytes:
            return "bad_response"
        return None

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None


# ---- before and around the load (the driver, synchronous) ------------------------------------


def _as_dict(message: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    # Zero counters too: the statistics are read as deltas, key by key.
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def preflight(url: str, model: str, token: str | None, *, timeout_s: float = 10.0) -> dict[str, Any]:
    """Before any load: the server answers, and serves ``model``; its config where it gives one.

    Returns ``{"server": ..., "metadata": ..., "config": ... or None}`` in the HTTP endpoints' JSON form.
    """
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    address = grpc_address(url)
    metadata = _metadata(token)
    with grpc.insecure_channel(address, options=_CHANNEL_OPTIONS) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            server = stub.ServerMetadata(service_pb2.ServerMetadataRequest(), metadata=metadata, timeout=timeout_s)
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise ConfigError(f"{address} wants an API token: pass --api-token or set RAYSCALE_API_TOKEN") from None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ServerError(
                    f"cannot reach {address} over gRPC ({code.name}): is the server up, and is this its gRPC port? "
                    "(`rayscale up` / `rayscale triton up`)"
                ) from None
            raise ServerError(
                f"{address} is not an Open Inference Protocol gRPC server (ServerMetadata answered {code.name}: {e.details()})"
            ) from None
        try:
            model_metadata = stub.ModelMetadata(
                service_pb2.ModelMetadataRequest(name=model), metadata=metadata, timeout=timeout_s
            )
        except grpc.RpcError as e:
            raise ConfigError(
                f"{address} does not serve model {model!r} ({e.code().name}: {e.details()}): check --model"
            ) from None
        try:
            config = _as_dict(
                stub.ModelConfig(service_pb2.ModelConfigRequest(name=model), metadata=metadata, timeout=timeout_s).config
            )
        except grpc.RpcError:
            config = None
    return {"server": _as_dict(server), "metadata": _as_dict(model_metadata), "config": config}


def fetch_statistics(url: str, model: str, token: str | None, *, timeout_s: float = 10.0) -> dict[str, Any]:
    """The model's statistics (``{"model_stats": [...]}``, Triton's JSON form); grpc.RpcError if none."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(grpc_address(url), options=_CHANNEL_OPTIONS) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelStatisticsRequest(name=model)
        return _as_dict(stub.ModelStatistics(request, metadata=_metadata(token), timeout=timeout_s))

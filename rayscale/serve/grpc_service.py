"""The Open Inference Protocol over gRPC: KServe v2's ``inference.GRPCInferenceService``, as Triton serves it.

``tritonclient.grpc`` and ``perf_analyzer -i grpc`` talk to it unchanged. The messages are
tritonclient's own generated modules, so the wire format is Triton's by construction.

The hot path, top to bottom:

    ModelInferRequest -> check model, input and outputs -> np.frombuffer view of raw_input_contents
                      -> backend.infer (the replica's batcher and engine)
                      -> ModelInferResponse with the FP32 [N, 512] embeddings in raw_output_contents

Served: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer,
ModelConfig, ModelStatistics. Everything else (repository, shared memory, trace, logging,
streaming) answers UNIMPLEMENTED with a message. Errors are rayscale's ``ProtocolError`` tree,
mapped to gRPC status codes by type (``grpc_status``), each with a message naming the problem.
The bearer token travels as ``authorization: Bearer <token>`` metadata; the health RPCs
(ServerLive, ServerReady, ModelReady) need none, as over HTTP.
"""

from __future__ import annotations

import functools
import hmac
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
import numpy as np
from google.protobuf.json_format import ParseDict
from tritonclient.grpc import service_pb2, service_pb2_grpc

from rayscale.config import EMBED_DIM, INPUT_NAME, MODEL_NAME, OUTPUT_NAME
from rayscale.errors import (
    BadRequest,
    ConfigError,
    MethodNotAllowed,
    NotFound,
    NotImplementedByServer,
    Overloaded,
    PayloadTooLarge,
    ProtocolError,
    ServerError,
    Unauthorized,
)
from rayscale.protocol import check_image_shape
from rayscale.serve.ingress import INGRESS_TOKEN_HEADER

__all__ = ["InferenceBackend", "InferenceServicer", "grpc_status", "start_grpc_server"]

log = logging.getLogger("rayscale.serve.grpc")

# By type, most specific first; a ProtocolError with status 504 is a timeout (see grpc_status).
_STATUS_BY_ERROR: tuple[tuple[type[Exception] | tuple[type[Exception], ...], grpc.StatusCode], ...] = (
    ((BadRequest, MethodNotAllowed), grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
    (PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotImplementedByServer, grpc.StatusCode.UNIMPLEMENTED),
    (Overloaded, grpc.StatusCode.UNAVAILABLE),
)
_SHARED_MEMORY_PARAMETER = "shared_memory_region"


class InferenceBackend(Protocol):
    """What the gRPC service needs from a replica."""

    max_batch_size: int

    async def infer(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, 224, 224, 3] in, float32 [N, 512] out; raises ProtocolError subclasses
        (Overloaded when the queue is full, BadRequest, ProtocolError(status_code=504) on timeout)."""
        ...

    def check_token(self, token: str | None) -> None:
        """Raises Unauthorized when a token is configured and ``token`` is missing or wrong."""
        ...

    def model_metadata(self) -> dict:
        """v2 JSON form: name, versions, platform, inputs, outputs, parameters."""
        ...

    def server_metadata(self) -> dict:
        """v2 JSON form: name, version, extensions."""
        ...

    async def is_ready(self) -> bool:
        """False while draining."""
        ...

    async def model_config(self) -> dict:
        """Triton's JSON model configuration."""
        ...

    async def model_statistics(self) -> dict:
        """Triton's JSON statistics: ``{"model_stats": [...]}``."""
        ...


def grpc_status(error: Exception) -> grpc.StatusCode:
    """The gRPC status code for one of rayscale's errors; INTERNAL for anything unexpected."""
    for types, code in _STATUS_BY_ERROR:
        if isinstance(error, types):
            return code
    if isinstance(error, ProtocolError) and error.status_code == 504:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.INTERNAL


Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _rpc(*, authenticated: bool = True) -> Callable[[Handler], Handler]:
    """Check the token (unless a health RPC), run the handler, and turn its errors into statuses."""

    def decorate(method: Handler) -> Handler:
        @functools.wraps(method)
        async def handler(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if authenticated:
                    self.backend.check_token(_bearer_token(context))
                return await method(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                code = grpc_status(e)
                if code == grpc.StatusCode.INTERNAL:
                    log.exception("gRPC %s failed", method.__name__)
                    message = str(e) if type(e) is ProtocolError else f"internal error: {type(e).__name__}: {e}"
                else:
                    message = str(e)
                retry = (("retry-after", "1"),) if code == grpc.StatusCode.UNAVAILABLE else ()
                await context.abort(code, message, trailing_metadata=retry)

        return handler

    return decorate


def _unimplemented(what: str, fix: str) -> Handler:
    async def handler(self: InferenceServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not supported by rayscale: {fix}")

    return handler


def _bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` for the one model a replica serves."""

    def __init__(self, backend: InferenceBackend):
        self.backend = backend
        versions = [str(v) for v in backend.model_metadata().get("versions") or []]
        self._versions = tuple(versions) or ("1",)

    # ---- health ----------------------------------------------------------------------------------

    @_rpc(authenticated=False)
    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    @_rpc(authenticated=False)
    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=await self.backend.is_ready())

    @_rpc(authenticated=False)
    async def ModelReady(self, request, context):
        self._check_model(request.name, request.version)
        return service_pb2.ModelReadyResponse(ready=await self.backend.is_ready())

    # ---- metadata, configuration, statistics ---------------------------------------------------

    @_rpc()
    async def ServerMetadata(self, request, context):
        return ParseDict(self.backend.server_metadata(), service_pb2.ServerMetadataResponse(), ignore_unknown_fields=True)

    @_rpc()
    async def ModelMetadata(self, request, context):
        self._check_model(request.name, request.version)
        return ParseDict(self.backend.model_metadata(), service_pb2.ModelMetadataResponse(), ignore_unknown_fields=True)

    @_rpc()
    async def ModelConfig(self, request, context):
        self._check_model(request.name, request.version)
        config = await self.backend.model_config()
        return ParseDict({"config": config}, service_pb2.ModelConfigResponse(), ignore_unknown_fields=True)

    @_rpc()
    async def ModelStatistics(self, request, context):
        if request.name:  # no name: every model, as Triton does
            self._check_model(request.name, request.version)
        stats = await self.backend.model_statistics()
        return ParseDict(stats, service_pb2.ModelStatisticsResponse(), ignore_unknown_fields=True)

    # ---- inference -------------------------------------------------------------------------------

    @_rpc()
    async def ModelInfer(self, request, context):
        self._check_model(request.model_name, request.model_version)
        images = self._images(request)
        _check_outputs(request.outputs)
        embeddings = await self.backend.infer(images)
        if embeddings.shape != (images.shape[0], EMBED_DIM):
            raise ProtocolError(
                f"the engine returned embeddings of shape {embeddings.shape}, expected {(images.shape[0], EMBED_DIM)}"
            )
        response = service_pb2.ModelInferResponse(
            model_name=MODEL_NAME, model_version=request.model_version or self._versions[-1], id=request.id
        )
        output = response.outputs.add()
        output.name, output.datatype = OUTPUT_NAME, "FP32"
        output.shape.extend(embeddings.shape)
        response.raw_output_contents.append(np.ascontiguousarray(embeddings, dtype="<f4").tobytes())
        return response

    def _check_model(self, name: str, version: str) -> None:
        if name != MODEL_NAME:
            raise NotFound(f"unknown model {name!r}: this server serves {MODEL_NAME!r}")
        if version and version not in self._versions:
            raise NotFound(f"unknown version {version!r} of {MODEL_NAME}: the versions are {', '.join(self._versions)}")

    def _images(self, request: service_pb2.ModelInferRequest) -> np.ndarray:
        """The image batch: a read-only view of raw_input_contents (or a copy of uint_contents)."""
        if len(request.inputs) != 1:
            raise BadRequest(f"model takes exactly one input ({INPUT_NAME}), got {len(request.inputs)}")
        tensor = request.inputs[0]
        if tensor.name != INPUT_NAME:
            raise BadRequest(f"unknown input {tensor.name!r}: the model's input is {INPUT_NAME!r}")
        if tensor.datatype != "UINT8":
            raise BadRequest(f"input {INPUT_NAME} must have datatype UINT8, got {tensor.datatype!r}")
        if _SHARED_MEMORY_PARAMETER in tensor.parameters:
            raise NotImplementedByServer(
                f"shared memory inputs are not supported by rayscale: send {INPUT_NAME} in raw_input_contents"
            )
        shape = check_image_shape(list(tensor.shape), self.backend.max_batch_size)
        expected = math.prod(shape)
        typed = [f.name for f, _ in tensor.contents.ListFields()]
        if request.raw_input_contents:
            if len(request.raw_input_contents) != 1:
                raise BadRequest(f"raw_input_contents has {len(request.raw_input_contents)} entries for the model's one input")
            if typed:
                raise BadRequest(f"input {INPUT_NAME} has both contents and raw_input_contents: send one of them")
            raw = request.raw_input_contents[0]
            if len(raw) != expected:
                raise BadRequest(f"raw_input_contents has {len(raw)} bytes but shape {list(shape)} of UINT8 needs {expected}")
            return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
        if not typed:
            raise BadRequest(
                f"input {INPUT_NAME} carries no data: send its bytes in raw_input_contents (or contents.uint_contents)"
            )
        if typed != ["uint_contents"]:
            raise BadRequest(f"input {INPUT_NAME} of UINT8 takes its values in contents.uint_contents, got {', '.join(typed)}")
        values = np.asarray(tensor.contents.uint_contents, dtype=np.uint32)
        if values.size != expected:
            raise BadRequest(f"contents.uint_contents has {values.size} values but shape {list(shape)} needs {expected}")
        if values.max() > 255:
            raise BadRequest(f"input {INPUT_NAME} values must be in 0..255 (UINT8), got {int(values.max())}")
        return values.astype(np.uint8).reshape(shape)

    # ---- not served ------------------------------------------------------------------------------

    _repository = "rayscale serves one model, loaded when it starts"
    RepositoryIndex = _unimplemented("the model repository (RepositoryIndex)", _repository)
    RepositoryModelLoad = _unimplemented("the model repository (RepositoryModelLoad)", _repository)
    RepositoryModelUnload = _unimplemented("the model repository (RepositoryModelUnload)", _repository)
    _shm = "send tensors in raw_input_contents"
    SystemSharedMemoryStatus = _unimplemented("system shared memory", _shm)
    SystemSharedMemoryRegister = _unimplemented("system shared memory", _shm)
    SystemSharedMemoryUnregister = _unimplemented("system shared memory", _shm)
    CudaSharedMemoryStatus = _unimplemented("CUDA shared memory", _shm)
    CudaSharedMemoryRegister = _unimplemented("CUDA shared memory", _shm)
    CudaSharedMemoryUnregister = _unimplemented("CUDA shared memory", _shm)
    TraceSetting = _unimplemented("the trace extension (TraceSetting)", "statistics are at ModelStatistics")
    LogSettings = _unimplemented("the logging extension (LogSettings)", "set log levels where the server starts")
    ModelStreamInfer = _unimplemented("streaming inference (ModelStreamInfer)", "use ModelInfer")


def _check_outputs(outputs) -> None:
    for output in outputs:
        if output.name != OUTPUT_NAME:
            raise BadRequest(f"unknown output {output.name!r}: the model's output is {OUTPUT_NAME!r}")
        if _SHARED_MEMORY_PARAMETER in output.parameters:
            raise NotImplementedByServer(
                f"shared memory outputs are not supported by rayscale: {OUTPUT_NAME} comes back in raw_output_contents"
            )


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class _IngressOnly(grpc.aio.ServerInterceptor):
    """Refuses every call that does not carry the ingress token (a replica port behind the ingress)."""

    def __init__(self, token: str):
        self._token = token.encode()

    async def intercept_service(self, continuation, details):
        sent = next((v for k, v in details.invocation_metadata or () if k == INGRESS_TOKEN_HEADER), "")
        if hmac.compare_digest(str(sent).encode(), self._token):
            return await continuation(details)
        return _REFUSE


async def _refuse(request, context) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "this port takes requests from rayscale's ingress only")


_REFUSE: grpc.RpcMethodHandler = grpc.unary_unary_rpc_method_handler(_refuse)


async def start_grpc_server(
    backend: InferenceBackend, *, host: str, port: int = 0, max_message_bytes: int, ingress_token: str | None = None
) -> tuple[grpc.aio.Server, int]:
    """Serve ``backend`` over gRPC on host:port (port 0: an ephemeral one) on the running asyncio loop.

    Returns the started server and the port it bound. Messages up to ``max_message_bytes`` are
    accepted both ways (gRPC refuses larger ones with RESOURCE_EXHAUSTED). With ``ingress_token``,
    only calls carrying it in ``INGRESS_TOKEN_HEADER`` metadata are served (UNAUTHENTICATED
    otherwise). Stop it with ``await server.stop(grace_s)``.
    """
    if max_message_bytes < 1:
        raise ConfigError(f"max_message_bytes must be ≥ 1, got {max_message_bytes}")
    if not 0 <= port <= 65535:
        raise ConfigError(f"gRPC port must be in 0..65535 (0: any free port), got {port}")
    server = grpc.aio.server(
        interceptors=[_IngressOnly(ingress_token)] if ingress_token else None,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # gRPC shares a port with another process by default; a port in use must fail instead.
            ("grpc.so_reuseport", 0),
        ],
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(backend), server)
    address = _address(host, port)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as e:
        bound, reason = 0, f" ({e})"
    else:
        reason = ""
    if not bound:
        raise ServerError(
            f"cannot serve gRPC on {address}{reason}: the port is in use or the address is not this machine's; pick another"
        )
    await server.start()
    return server, bound

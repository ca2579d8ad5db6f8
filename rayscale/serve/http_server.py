"""A lean HTTP/1.1 server for one replica process: the body is received straight into its buffer.

The replica's own port behind the ingress load balancer. Every request body of a served model is
one large uint8 tensor, so the server is built around that:

- the kernel writes the body directly into a buffer of exactly Content-Length bytes
  (``asyncio.BufferedProtocol``), which the protocol layer then views without copying;
- ``admit(head)`` runs as soon as the headers are in, before any body byte is read, so an
  overloaded replica, an oversized or unauthorised request, or a wrong route is answered at once
  (the rest of a refused body is read into a scratch buffer and dropped, so the connection stays
  usable; one over the size limit closes the connection instead);
- requests on one connection are handled one after another (keep-alive; the load balancer
  never pipelines), and reading pauses while one is handled.

What it does not do: chunked request bodies (411, send Content-Length), HTTP/2, TLS.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from rayscale import protocol
from rayscale.errors import BadRequest, PayloadTooLarge, ProtocolError

__all__ = ["HttpResponse", "RequestHead", "start_http_server"]

log = logging.getLogger("rayscale.serve")

MAX_HEAD_BYTES = 64 * 1024
_SCRATCH_BYTES = 256 * 1024
_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


@dataclass
class RequestHead:
    """A request line and its headers (names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    content_length: int = 0
    admitted: bool = False  # the replica holds a place in its queue for this request's body


@dataclass
class HttpResponse:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False  # close the connection after this response


Admit = Callable[[RequestHead], "HttpResponse | None"]
Handle = Callable[[RequestHead, memoryview], Awaitable[HttpResponse]]
Abandon = Callable[[RequestHead], None]


def error_response(e: ProtocolError, *, close: bool = False) -> HttpResponse:
    headers = {"Content-Type": "application/json"}
    if e.status_code in (429, 503):
        headers["Retry-After"] = "1"
    return HttpResponse(e.status_code, protocol.encode_error(str(e)), headers, close)


def _parse_head(raw: bytes, body_limit: int) -> RequestHead:
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # latin-1 decodes every byte; kept for clarity
        raise BadRequest("request head is not text") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha():
        raise BadRequest(f"malformed request line {lines[0][:80]!r}")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise ProtocolError(f"unsupported HTTP version {version[:16]!r}: use HTTP/1.1", status_code=505)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"malformed header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    if version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
        headers.setdefault("connection", "close")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise ProtocolError("chunked request bodies are not supported: send a Content-Length", status_code=411)
    length = 0
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(f"Content-Length must be an integer, got {declared[:32]!r}")
        length = int(declared)
        if length > body_limit:
            raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {body_limit} bytes")
    path = target.split("?", 1)[0]
    return RequestHead(method=method, path=path, headers=headers, content_length=length)


class _Connection(asyncio.BufferedProtocol):
    def __init__(self, server: _Server):
        self.server = server
        self.transport: asyncio.Transport  # set by connection_made, which asyncio calls before any other callback
        self._head = bytearray(MAX_HEAD_BYTES)
        self._head_len = 0
        self._request: RequestHead | None = None
        self._body: bytearray | None = None
        self._body_len = 0
        self._discard = 0  # bytes of a refused body still to drop
        self._scratch: bytearray | None = None
        self._busy = False
        self._closed = False

    # ---- asyncio.BufferedProtocol -------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.connections.add(self)

    def connection_lost(self, exc) -> None:
        self._closed = True
        self.server.connections.discard(self)
        if self._request is not None:  # admitted, but the body never came in whole
            request, self._request = self._request, None
            self.server.abandon(request)
        task = getattr(self, "_task", None)
        if task is not None and not task.done():
            task.cancel()  # the client went away: the handler sees CancelledError

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._body is not None:
            return memoryview(self._body)[self._body_len :]
        if self._discard:
            if self._scratch is None:
                self._scratch = bytearray(_SCRATCH_BYTES)
            return memoryview(self._scratch)[: min(self._discard, _SCRATCH_BYTES)]
        if self._head_len >= MAX_HEAD_BYTES:  # cannot happen: the head is checked on every update
            return memoryview(bytearray(1))
        return memoryview(self._head)[self._head_len :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._body is not None:
            self._body_len += nbytes
            if self._body_len == len(self._body):
                body, self._body = self._body, None
                self._dispatch(memoryview(body))
            return
        if self._discard:
            self._discard -= nbytes
            if not self._discard:
                self._after_response()
            return
        self._head_len += nbytes
        self._try_head()

    def eof_received(self) -> bool:
        return False  # close our side too

    # ---- request handling ---------------------------------------------------------------------

    def _try_head(self) -> None:
        if self._busy or self._request is not None:
            return
        end = self._head.find(b"\r\n\r\n", 0, self._head_len)
        if end < 0:
            if self._head_len >= MAX_HEAD_BYTES:
                self._respond(
                    HttpResponse(
                        431, protocol.encode_error("request head over 64 KiB"), {"Content-Type": "application/json"}, close=True
                    )
                )
            return
        raw = bytes(self._head[:end])
        try:
            head = _parse_head(raw, self.server.body_limit)
        except ProtocolError as e:
            self._head_len = 0
            self._respond(error_response(e, close=True))
            return
        refused = self.server.admit(head)
        leftover = memoryview(self._head)[end + 4 : self._head_len]
        if refused is not None:
            self._head_len = 0
            skip = max(0, head.content_length - len(leftover))
            if refused.close or skip > self.server.body_limit:
                refused.close = True
                self._respond(refused)
                return
            self._discard = skip
            self._keep_leftover(leftover[head.content_length :] if not skip else b"")
            self._respond(refused, then_read=not skip)
            return
        self._request = head
        if head.headers.get("expect", "").lower() == "100-continue" and head.content_length > len(leftover):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if len(leftover) >= head.content_length:
            body = bytes(leftover[: head.content_length])
            self._keep_leftover(leftover[head.content_length :])
            self._dispatch(memoryview(body))
            return
        self._body = bytearray(head.content_length)
        self._body[: len(leftover)] = leftover
        self._body_len = len(leftover)
        self._head_len = 0

    def _keep_leftover(self, rest) -> None:
        n = len(rest)
        if n:
            self._head[:n] = bytes(rest)
        self._head_len = n

    def _dispatch(self, body: memoryview) -> None:
        head = self._request
        if head is None:  # a body completes only after its head was admitted
            raise RuntimeError("a request body arrived without its head")
        self._request = None
        self._busy = True
        self.transport.pause_reading()
        self._task = asyncio.get_running_loop().create_task(self._run(head, body))

    async def _run(self, head: RequestHead, body: memoryview) -> None:
        try:
            response = await self.server.handle(head, body)
        except asyncio.CancelledError:
            return
        except ProtocolError as e:
            response = error_response(e)
        except Exception as e:  # every answer is the protocol's JSON error form, never a bare 500
            log.exception("request %s failed", head.path)
            response = error_response(ProtocolError(f"internal error: {type(e).__name__}: {e}"))
        if head.headers.get("connection", "").lower() == "close":
            response.close = True
        self._respond(response)

    def _respond(self, response: HttpResponse, *, then_read: bool = True) -> None:
        if self._closed:
            return
        lines = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Status')}"]
        for k, v in response.headers.items():
            lines.append(f"{k}: {v}")
        lines.append(f"Content-Length: {len(response.body)}")
        if response.close:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.transport.writelines([head, response.body] if response.body else [head])
        if response.close:
            self.transport.close()
            self._closed = True
            return
        self._busy = False
        if then_read and not self._discard:
            self._after_response()

    def _after_response(self) -> None:
        if self._closed:
            return
        self.transport.resume_reading()
        if self._head_len:
            self._try_head()


class _Server:
    def __init__(self, admit: Admit, handle: Handle, abandon: Abandon, body_limit: int):
        self.admit = admit
        self.handle = handle
        self.abandon = abandon
        self.body_limit = body_limit
        self.connections: set[_Connection] = set()


async def start_http_server(
    admit: Admit, handle: Handle, abandon: Abandon, *, host: str, port: int = 0, body_limit: int
) -> tuple[asyncio.Server, int]:
    """Serve on ``host:port`` (0: any free port) on the running loop; returns the server and its port.

    ``admit`` sees each request head first; ``handle`` answers an admitted request once its body is
    in; ``abandon`` hears of an admitted request whose connection closed before its body arrived.
    """
    state = _Server(admit, handle, abandon, body_limit)
    server = await asyncio.get_running_loop().create_server(
        lambda: _Connection(state), host=host, port=port, reuse_address=True, backlog=1024
    )
    bound = server.sockets[0].getsockname()[1]
    return server, bound

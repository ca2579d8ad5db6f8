"""Code that runs in Ray Serve's own proxy processes (``--ingress proxy`` and ``haproxy``).

Serve imports ``PROXY_CALLBACK`` through ``PROXY_CALLBACK_ENV`` in each proxy, which installs the
middleware that gives Serve's own errors the protocol's JSON form; ``serve_env_vars`` is the
environment Serve's controller (and so its proxies and, for ``haproxy``, its replicas) runs with.
"""

from __future__ import annotations

import logging

__all__ = [
    "PROXY_CALLBACK",
    "PROXY_CALLBACK_ENV",
    "ProtocolErrorMiddleware",
    "proxy_env_vars",
    "proxy_middlewares",
    "serve_env_vars",
]

log = logging.getLogger("rayscale.serve")

# Ray Serve imports this in its HTTP proxy when the variable is set in the proxy's environment.
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "rayscale.serve.proxy:proxy_middlewares"


class ProtocolErrorMiddleware:
    """Gives the errors Ray Serve's HTTP proxy writes itself the protocol's JSON form.

    The proxy answers some requests without the replica's help, in plain text that tritonclient
    cannot parse: 503 when Serve's own queue is full (``max_queued_requests``) or no replica is
    available, 408 when a proxy timeout expires, 404 for a path outside every route, and an empty
    500 when the replica died mid-request. This ASGI middleware runs in the proxy (Serve imports
    ``PROXY_CALLBACK`` from ``PROXY_CALLBACK_ENV``) and rewrites each into ``{"error": ...}``,
    keeping the status and ``Retry-After``; a request left unanswered becomes a retryable 503.
    Serve's own ``/-/`` routes are left alone.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") != "http" or scope.get("path", "").startswith("/-/"):
            await self.app(scope, receive, send)
            return
        started = False
        held: dict | None = None  # the start of a plain-text error, rewritten once its body is complete
        chunks: list[bytes] = []

        async def send_json_errors(message) -> None:
            nonlocal started, held
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 400 and not _is_json(message.get("headers") or []):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    text = b"".join(chunks).decode(errors="replace").strip()
                    await _send_json_error(send, held["status"], text, held.get("headers") or [])
                return
            await send(message)

        try:
            await self.app(scope, receive, send_json_errors)
        except Exception as e:
            if started:
                raise
            log.warning("Serve's proxy failed a request: %r", e)
            await _send_json_error(send, 500, f"proxy error: {type(e).__name__}: {e}", [])
            return
        if not started:  # the proxy gave up on the replica (it died) without writing an answer
            await _send_json_error(
                send, 503, "the replica handling this request failed before answering (Serve replaces it): retry", []
            )


def proxy_middlewares() -> list:
    """What Serve's proxy imports through ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``."""
    from starlette.middleware import Middleware

    return [Middleware(ProtocolErrorMiddleware)]


def proxy_env_vars() -> dict[str, str]:
    """Environment for Serve's controller (and so its proxies) that installs the middleware."""
    return {PROXY_CALLBACK_ENV: PROXY_CALLBACK}


HAPROXY_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # Replicas drain 30 s by default before stopping; HAProxy hears of a removal from the controller
    # within a fraction of a second, so 5 s keeps scale-down safe and `rayscale down` quick.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
}


def serve_env_vars(ingress: str) -> dict[str, str]:
    """Environment for Serve's processes: the JSON-error middleware, and HAProxy mode when asked for.

    With ``haproxy`` (Ray Serve's own HAProxy mode), each replica serves HTTP on a port of Serve's
    and Serve's HAProxy routes to them. Ray 2.60 binds that HAProxy's statistics page (8404) and
    Prometheus endpoint (9101) on every interface, which rayscale cannot configure: the default
    ingress (``direct``, rayscale.serve.ingress) does the same routing with nothing beyond loopback.
    """
    return proxy_env_vars() | (HAPROXY_ENV if ingress == "haproxy" else {})


def _is_json(headers: list) -> bool:
    for key, value in headers:
        if bytes(key).lower() == b"content-type":
            return bytes(value).lower().startswith(b"application/json")
    return False


_PROXY_DEFAULT_MESSAGES = {
    404: "no such route on this server: see /v2 for the Open Inference Protocol endpoints",
    408: "request timed out in Ray Serve's proxy: retry, or raise the timeout",
    503: "server overloaded or no replica available: retry later",
}


async def _send_json_error(send, status: int, text: str, headers: list) -> None:
    import json

    message = text or _PROXY_DEFAULT_MESSAGES.get(status, f"HTTP {status}")
    body = json.dumps({"error": message}).encode()
    kept = [(bytes(k), bytes(v)) for k, v in headers if bytes(k).lower() not in (b"content-type", b"content-length")]
    if status in (503, 429) and not any(k.lower() == b"retry-after" for k, _ in kept):
        kept.append((b"retry-after", b"1"))
    kept += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": kept})
    await send({"type": "http.response.body", "body": body})

"""The exceptions rayscale raises, all derived from ``RayscaleError``.

RayscaleError              anything the user can fix; the CLI prints its message, no traceback
├── ConfigError            a setting is out of range or inconsistent
├── InputError             images the engine cannot take (dtype, shape, batch size)
├── ModelNotFoundError     no exported model where one was expected
├── ExportError            export failed (missing extra, parity check, bad checkpoint)
├── ServerError            a server could not be started, reached or stopped
│   └── ErrorReply         a server answered with an error document or a malformed response
├── ResultsError           a results file is missing, invalid or would be overwritten
└── ProtocolError          a request violates the Open Inference Protocol; carries an HTTP status
    ├── BadRequest         400
    ├── Unauthorized       401
    ├── NotFound           404
    ├── MethodNotAllowed   405
    ├── PayloadTooLarge    413
    ├── Overloaded         503 (with Retry-After)
    └── NotImplementedByServer  501
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "ConfigError",
    "ErrorReply",
    "ExportError",
    "InputError",
    "MethodNotAllowed",
    "ModelNotFoundError",
    "NotFound",
    "NotImplementedByServer",
    "Overloaded",
    "PayloadTooLarge",
    "ProtocolError",
    "RayscaleError",
    "ResultsError",
    "ServerError",
    "Unauthorized",
]


class RayscaleError(Exception):
    """An error whose message tells the user what to do next."""


class ConfigError(RayscaleError, ValueError):
    pass


class InputError(RayscaleError, ValueError):
    """Data handed to the engine at run time is not what it takes; a setting is not at fault."""


class ModelNotFoundError(RayscaleError):
    pass


class ExportError(RayscaleError):
    pass


class ServerError(RayscaleError):
    pass


class ErrorReply(ServerError):
    """What a client makes of a server's error reply: the server's message, not a request of ours it refused."""


class ResultsError(RayscaleError):
    pass


class ProtocolError(RayscaleError):
    status_code = 500

    def __init__(self, message: str, *, status_code: int | None = None):
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code


class BadRequest(ProtocolError):
    status_code = 400


class Unauthorized(ProtocolError):
    status_code = 401


class NotFound(ProtocolError):
    status_code = 404


class MethodNotAllowed(ProtocolError):
    status_code = 405


class PayloadTooLarge(ProtocolError):
    status_code = 413


class NotImplementedByServer(ProtocolError):
    status_code = 501


class Overloaded(ProtocolError):
    status_code = 503

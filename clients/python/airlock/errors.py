"""Typed exceptions, one per public error code of the API (api/api.go)."""

import builtins


class AirlockError(Exception):
    """An error the daemon answered with ({"error": {"code", "message"}}), or a transport failure.

    code is the API's machine-readable code (invalid_argument, not_found, …), status the HTTP
    status (0 when the request never got an answer)."""

    code = "internal"

    def __init__(self, message, code=None, status=0):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.status = status


class InvalidArgumentError(AirlockError, ValueError):
    code = "invalid_argument"


class AuthenticationError(AirlockError):
    code = "unauthenticated"


class NotFoundError(AirlockError, LookupError):
    code = "not_found"


class SandboxTerminatedError(AirlockError):
    """The sandbox (or session) has ended: the API's code "gone"."""

    code = "gone"


class ConflictError(AirlockError):
    code = "conflict"


class PayloadTooLargeError(AirlockError):
    code = "payload_too_large"


class ResourceExhaustedError(AirlockError):
    """Over the daemon's capacity or a per-key bound; retry later."""

    code = "resource_exhausted"


class TimeoutError(AirlockError, builtins.TimeoutError):
    """The daemon timed out. It is also the builtin TimeoutError, so Modal-style
    `except TimeoutError:` catches it."""

    code = "timeout"


class UnimplementedError(AirlockError, NotImplementedError):
    code = "unimplemented"


class UnavailableError(AirlockError):
    code = "unavailable"


class InternalError(AirlockError):
    code = "internal"


class ConnectionError(AirlockError, builtins.ConnectionError):
    """The daemon could not be reached."""

    code = "connection"


_BY_CODE = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        AuthenticationError,
        NotFoundError,
        SandboxTerminatedError,
        ConflictError,
        PayloadTooLargeError,
        ResourceExhaustedError,
        TimeoutError,
        UnimplementedError,
        UnavailableError,
        InternalError,
    )
}


def from_code(code, message, status=0):
    """The exception for an API error code; an unknown code (a newer daemon) is AirlockError."""
    cls = _BY_CODE.get(code, AirlockError)
    return cls(message or code, code=code, status=status)

"""Airlock's Python client: sandboxes, stateful Python sessions and one-shot execution over the
daemon's HTTP API, with the standard library only. Shaped after Modal's Sandbox API, so
`import airlock as modal` ports most Sandbox code.

Configuration comes from AIRLOCK_SERVER (default http://127.0.0.1:8080) and AIRLOCK_API_KEY,
or pass client=Client(server, api_key) to any constructor."""

from .aio import blocking
from .client import Client, default_client
from .errors import (AirlockError, AuthenticationError, ConflictError, ConnectionError, InternalError,
                     InvalidArgumentError, NotFoundError, PayloadTooLargeError, ResourceExhaustedError,
                     SandboxTerminatedError, TimeoutError, UnavailableError, UnimplementedError)
from .sandbox import ContainerProcess, Image, Sandbox, SandboxFile, StreamReader, StreamWriter
from .session import (CellError, Display, ExecuteResult, InstallResult, OutputFile, RunResult, Session, execute,
                      execute_batch)


@blocking
def info(client=None):
    """GET /v1/info: the daemon's version, languages and limits."""
    return (client or default_client()).json("GET", "/v1/info")


__all__ = [
    "AirlockError", "AuthenticationError", "CellError", "Client", "ConflictError", "ConnectionError",
    "ContainerProcess", "Display", "ExecuteResult", "Image", "InstallResult", "InternalError",
    "InvalidArgumentError", "NotFoundError", "OutputFile", "PayloadTooLargeError", "ResourceExhaustedError",
    "RunResult", "Sandbox", "SandboxFile", "SandboxTerminatedError", "Session", "StreamReader", "StreamWriter",
    "TimeoutError", "UnavailableError", "UnimplementedError", "execute", "execute_batch", "info",
]

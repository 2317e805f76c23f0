"""Typed errors raised by the flowserve clients.

Callers catch by meaning, never by message text::

    FlowServeError                 every error this package raises (.status_code, .code, .message)
    ├── InvalidInput               422/415/400: wrong width, NaN, unknown feature, bad n/fpr
    ├── Unauthorized               401/403: missing or wrong API key, admin endpoints off
    ├── ModelNotFound              404: no such model or version
    ├── PayloadTooLarge            413: too many rows or too large a body (split the batch)
    ├── ServerError                500 and other unexpected 5xx responses
    ├── ServiceUnavailable         503 (after retries): model failed to load, service not
    │   │                          ready or draining, overloaded (Retry-After is honoured)
    │   └── ConnectionFailed       the service could not be reached (after retries)
    └── RequestTimeout             no answer within the client's timeout

Every error carries the server's machine ``code`` (e.g. ``"invalid_input"``) and its ``message``
(a sentence naming the problem); ``details`` holds any further fields of the error body.
"""

from __future__ import annotations

from typing import Any

from ._protocol import ERROR_CODES

__all__ = [
    "ConnectionFailed",
    "FlowServeError",
    "InvalidInput",
    "ModelNotFound",
    "PayloadTooLarge",
    "RequestTimeout",
    "ServerError",
    "ServiceUnavailable",
    "Unauthorized",
    "error_for_response",
]


class FlowServeError(Exception):
    """Base of every error raised by the flowserve clients."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status_code: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status_code = status_code
        self.details = details or {}

    def __str__(self) -> str:
        where = f"HTTP {self.status_code}, " if self.status_code is not None else ""
        return f"{self.message} ({where}{self.code})"


class InvalidInput(FlowServeError):
    """The request was rejected as malformed: fix the input, retrying will not help."""


class Unauthorized(FlowServeError):
    """The API key is missing or not accepted."""


class ModelNotFound(FlowServeError):
    """The named model or version does not exist on the server."""


class PayloadTooLarge(FlowServeError):
    """Too many rows or too many bytes in one request: send smaller chunks."""


class ServerError(FlowServeError):
    """The server failed unexpectedly (a bug or an outage on its side)."""


class ServiceUnavailable(FlowServeError):
    """The service or the model is temporarily unable to answer (503), even after retries."""


class ConnectionFailed(ServiceUnavailable):
    """The service could not be reached at all, even after retries."""


class RequestTimeout(FlowServeError):
    """The service did not answer within the client's timeout."""


_CLASSES: dict[str, type[FlowServeError]] = {
    cls.__name__: cls
    for cls in (
        FlowServeError,
        InvalidInput,
        Unauthorized,
        ModelNotFound,
        PayloadTooLarge,
        ServerError,
        ServiceUnavailable,
    )
}
# The server's error codes, from the table it answers with.
_BY_CODE: dict[str, type[FlowServeError]] = {e.code: _CLASSES[e.exception] for e in ERROR_CODES}
# Responses without a code (a proxy's, the V2 protocol's ``{"error": "..."}``): by status. Every
# code of one status raises the same class (a test checks), so the status stands in for the code.
_BY_STATUS: dict[int, type[FlowServeError]] = {
    400: InvalidInput,  # a plain 400 (a proxy's, or a framework's bad request)
    **{e.status: _CLASSES[e.exception] for e in ERROR_CODES},
}


def error_for_response(status_code: int, body: Any, fallback_text: str = "") -> FlowServeError:
    """The typed error for an error response (``{"error": {"code", "message", ...}}``)."""
    code, message, details = "", "", {}
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code", ""))
        message = str(error.get("message", ""))
        details = {k: v for k, v in error.items() if k not in ("code", "message")}
    elif isinstance(error, str):  # KServe V2 style {"error": "..."}
        message = error
    elif isinstance(body, dict) and "detail" in body:  # a bare FastAPI error
        message = str(body["detail"])
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status_code)
    if cls is None:
        cls = ServerError if status_code >= 500 else FlowServeError
    message = message or fallback_text.strip()[:500] or f"HTTP {status_code}"
    code = code or f"http_{status_code}"
    return cls(message, code=code, status_code=status_code, details=details)

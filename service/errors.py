"""API errors: one exception type per error code, rendered as ``{"error": {...}}`` JSON.

Each class names its machine ``code``; its HTTP status comes from the one table of error codes,
``flowserve_client._protocol.ERROR_CODES``, which the client and docs/api.md read too. Codes
the routes answer without raising (``not_ready``, ``draining``, the framework's ``not_found``)
are in that table as well.

:func:`install_error_handlers` maps these, FastAPI's request validation errors and Starlette's
HTTP errors to that JSON shape, and turns anything unexpected into a 500 without a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from flowserve_client._protocol import ERROR_CODES, error_code

__all__ = [
    "AdminDisabled",
    "ApiError",
    "BodyTooLarge",
    "InvalidInput",
    "ModelNotFound",
    "ModelUnavailable",
    "OutOfRange",
    "Overloaded",
    "TooManyRows",
    "Unauthorized",
    "UnsupportedMediaType",
    "VersionNotFound",
    "error_body",
    "from_validation_errors",
    "install_error_handlers",
]

log = logging.getLogger("flowserve.service")

# Fields whose range violations are reported as ``out_of_range`` rather than ``invalid_input``.
RANGE_FIELDS = frozenset({"n", "temperature", "fpr", "fdr", "seed"})
_RANGE_TYPES = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


class ApiError(Exception):
    """An error the client can act on; ``details`` are merged into the JSON error object.

    A subclass names its code (``class OutOfRange(ApiError, code="out_of_range")``); its
    ``status_code`` is that code's status in the table of error codes.
    """

    code: ClassVar[str]
    status_code: ClassVar[int]

    def __init_subclass__(cls, code: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.code = code
        cls.status_code = error_code(code).status

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(ApiError, code="invalid_input"):
    """Wrong width, NaN/Inf, non-numeric, empty, unknown fields, ..."""


class OutOfRange(ApiError, code="out_of_range"):
    """``n``, ``temperature``, ``fpr``, ... outside their range."""


class TooManyRows(ApiError, code="too_many_rows"):
    """More rows than ``MAX_ROWS``, or an ``/explain`` too large to compute."""


class BodyTooLarge(ApiError, code="body_too_large"):
    """A body over ``MAX_BODY_BYTES``."""


class ModelNotFound(ApiError, code="model_not_found"):
    """No model of that name."""


class VersionNotFound(ApiError, code="version_not_found"):
    """No such version of the model."""


class ModelUnavailable(ApiError, code="model_unavailable"):
    """That version failed to load."""


class Overloaded(ApiError, code="overloaded"):
    """Too many requests in flight (answered with ``Retry-After``)."""


class Unauthorized(ApiError, code="unauthorized"):
    """A missing or invalid API key."""


class AdminDisabled(ApiError, code="admin_disabled"):
    """No admin key is configured: ``/admin/*`` is off."""


class UnsupportedMediaType(ApiError, code="unsupported_media_type"):
    """A Content-Type the endpoint does not read."""


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **details}}


def _location(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def from_validation_errors(errors: Sequence[Any]) -> ApiError:
    """One clear error from pydantic's error list (range errors on n/temperature/fpr -> 422
    out_of_range, everything else invalid_input), naming the field and what was wrong."""
    errors = list(errors)
    if not errors:
        return InvalidInput("the request is not valid")
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    where = _location(loc)
    field = str(loc[-1]) if loc else ""
    msg = first.get("msg", "is not valid")
    shown = [
        {"loc": _location(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in errors[:5]
    ]
    if field in RANGE_FIELDS and first.get("type") in _RANGE_TYPES:
        return OutOfRange(f"{where} is out of range: {msg}", field=field, errors=shown)
    extra = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return InvalidInput(f"{where}: {msg}{extra}", errors=shown)


def _render(err: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        error_body(err.code, err.message, **err.details),
        status_code=err.status_code,
        headers=headers,
    )


# The codes of Starlette's own HTTP errors (an unknown route, a wrong method), by status.
_FRAMEWORK_CODES = {e.status: e.code for e in ERROR_CODES if e.framework}


def install_error_handlers(app: FastAPI, on_error: Any = None) -> None:
    """Register the JSON error handlers; ``on_error(code)`` is called for every error answered."""

    def _count(code: str) -> None:
        if on_error is not None:
            on_error(code)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        _count(exc.code)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        if isinstance(exc, Overloaded):
            headers = {"Retry-After": str(exc.details.get("retry_after_s", 1))}
        return _render(exc, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = from_validation_errors(exc.errors())
        _count(err.code)
        return _render(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _FRAMEWORK_CODES.get(exc.status_code, "http_error")
        _count(code)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return JSONResponse(
            error_body(code, message), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: log the traceback server-side, answer without one.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        _count("internal_error")
        return JSONResponse(
            error_body("internal_error", "the server failed to answer this request"),
            status_code=500,
        )

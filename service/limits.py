"""Limits that bound what one request can cost, enforced before the expensive part.

- :class:`BodySizeLimit`: a declared ``Content-Length`` over the limit is answered 413 at once,
  without reading the body; otherwise the bytes actually received are counted as they stream in,
  and the read that crosses the limit raises :class:`~flowserve.service.errors.BodyTooLarge`
  (chunked uploads included).
- :func:`check_json_values`: before a JSON body is parsed, an upper bound on the number of values
  it holds (a few byte counts, no parsing) is checked against what the request may carry, so a
  body of a million empty rows is refused before it becomes a million Python lists.
- :class:`InFlightLimit`: admission control; past ``max_in_flight`` requests in progress, more are
  answered 503 ``overloaded`` with ``Retry-After`` instead of queueing without bound.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, BodyTooLarge, InvalidInput, Overloaded, TooManyRows, error_body

__all__ = [
    "EXEMPT_PATHS",
    "JSON_SLACK",
    "BodySizeLimit",
    "InFlightLimit",
    "check_json_values",
    "check_options_size",
    "json_value_bound",
]

# Probes and scrapes must answer under load, or an overloaded pod would also be restarted.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Values a JSON body may hold beyond its rows (the enclosing object, fpr, ...).
JSON_SLACK = 64


def json_value_bound(body: bytes) -> int:
    """An upper bound on the JSON values (numbers, strings, lists, objects) in ``body``.

    Every value but the first is preceded by a comma or opens a container, so commas plus
    opening brackets plus one bounds them (commas and brackets inside strings only raise it).
    ``bytes.count`` runs at memory speed: a 64 MiB body costs milliseconds, not a parse.
    """
    return body.count(b",") + body.count(b"[") + body.count(b"{") + 1


def check_options_size(body: bytes, max_values: int = JSON_SLACK) -> None:
    """Refuse (422 ``invalid_input``) an options body (``/sample``) holding more values than a
    few options can, before parsing it."""
    bound = json_value_bound(body)
    if bound > max_values:
        raise InvalidInput(
            f"the JSON body holds up to {bound} values; this endpoint takes a few options "
            f"(at most {max_values} values)",
            max_values=max_values,
        )


def check_json_values(body: bytes, max_rows: int, dim: int, max_values: int) -> None:
    """Refuse (413 ``too_many_rows``) a JSON body that may hold more values than ``max_rows``
    rows of ``dim`` values (or ``max_values`` in all), before parsing it."""
    allowed = min(max_rows * (dim + 1) + JSON_SLACK, max_values)
    bound = json_value_bound(body)
    if bound > allowed:
        raise TooManyRows(
            f"the JSON body holds up to {bound} values, more than one request may carry "
            f"({max_rows} rows of {dim} values, {max_values} values in all); split the request "
            "or send a binary .npy body",
            max_rows=max_rows,
            max_values=max_values,
        )


def _too_large(limit: int, size: int | None = None) -> BodyTooLarge:
    got = f"{size} bytes" if size is not None else "more than that"
    return BodyTooLarge(
        f"request body is too large: the limit is {limit} bytes, got {got}; send fewer rows "
        "per request",
        limit=limit,
    )


class BodySizeLimit:
    """Pure ASGI middleware: cheap on every request, no body buffering of its own."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, on_reject: object = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                if declared is not None and declared > limit:
                    await self._reject(send, _too_large(limit, declared))
                    return
                break

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)
            return message

        await self.app(scope, limited_receive, send)

    async def _reject(self, send: Send, err: BodyTooLarge) -> None:
        if callable(self.on_reject):
            self.on_reject(err.code)
        await send_error(send, err, [(b"connection", b"close")])


async def send_error(send: Send, err: ApiError, headers: list[tuple[bytes, bytes]]) -> None:
    """Answer ``err`` as the JSON error body straight from ASGI middleware."""
    body = json.dumps(error_body(err.code, err.message, **err.details)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": err.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class InFlightLimit:
    """Pure ASGI middleware: at most ``max_in_flight`` HTTP requests in progress (0: no limit).

    One event loop per process runs every request, so a plain counter is exact. Health,
    readiness and metrics (:data:`EXEMPT_PATHS`) are neither counted nor refused.
    """

    def __init__(
        self, app: ASGIApp, max_in_flight: int, retry_after_s: int = 1, on_reject: object = None
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.retry_after_s = retry_after_s
        self.on_reject = on_reject
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.max_in_flight <= 0 or scope.get("path") in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            err = Overloaded(
                f"the server is at its limit of {self.max_in_flight} requests in progress; "
                f"retry after {self.retry_after_s} s",
                max_in_flight=self.max_in_flight,
                retry_after_s=self.retry_after_s,
            )
            if callable(self.on_reject):
                self.on_reject(err.code)
            await send_error(send, err, [(b"retry-after", str(self.retry_after_s).encode())])
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

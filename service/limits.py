"""Request body size limit, enforced before anything parses the body.

A declared ``Content-Length`` over the limit is answered 413 at once, without reading the body;
otherwise the bytes actually received are counted as they stream in, and the read that crosses
the limit raises :class:`~flowserve.service.errors.BodyTooLarge` (chunked uploads included).
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import BodyTooLarge, error_body

__all__ = ["BodySizeLimit"]


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
        body = json.dumps(error_body(err.code, err.message, **err.details)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": err.status_code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

"""Request IDs and access logs: one pure ASGI middleware, and the log formats.

:class:`RequestLog` takes the client's ``X-Request-ID`` (1-128 characters of letters, digits and
``._:-``; anything else is replaced) or makes one (32 hex digits), echoes it on every response,
leaves it in ``scope["state"]["request_id"]`` for the handlers, and writes one access-log line
per request to the ``flowserve.access`` logger: client, method, path, status, milliseconds and
request ID.
:func:`configure_logging` sets the process's log format: plain text, or one JSON object per line
(``--log-format json``) with the access fields as keys.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
import time
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ACCESS_LOGGER", "JsonFormatter", "RequestLog", "configure_logging"]

ACCESS_LOGGER = "flowserve.access"
_HEADER = b"x-request-id"
_VALID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


# New IDs: a random per-process prefix and a counter (unique across workers and restarts, and a
# fraction of uuid4's cost, which reads the OS's random source every time).
_PREFIX = secrets.token_hex(8)
_COUNTER = itertools.count(1)


def _new_id() -> bytes:
    return f"{_PREFIX}{next(_COUNTER):016x}".encode()


def _request_id(scope: Scope) -> bytes:
    for name, value in scope.get("headers", ()):
        if name == _HEADER:
            return value if _VALID.fullmatch(value) else _new_id()
    return _new_id()


class RequestLog:
    """Echo or assign ``X-Request-ID``; log each request when ``access_log`` is on."""

    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.log = logging.getLogger(ACCESS_LOGGER) if access_log else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid.decode()
        start = time.perf_counter()
        status = 500  # until a response starts: a crash before it is a 500 to the client

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (_HEADER, rid)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.log is not None and self.log.isEnabledFor(logging.INFO):
                self._write(scope, rid.decode(), status, time.perf_counter() - start)

    def _write(self, scope: Scope, rid: str, status: int, seconds: float) -> None:
        client = scope.get("client")
        fields = {
            "client": f"{client[0]}:{client[1]}" if client else "-",
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "duration_ms": round(seconds * 1000.0, 3),
            "request_id": rid,
        }
        assert self.log is not None
        self.log.info(
            '%s "%s %s" %d %.3fms id=%s',
            *fields.values(),
            extra={"access": fields},
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, access fields when present."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "access", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, fmt: Literal["text", "json"] = "text") -> None:
    """The root logger's level and format for ``flowserve serve``."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)

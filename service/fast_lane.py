"""The model endpoints' short path through the ASGI stack.

FastAPI matches a request against every route in order, solves the route's parameters and runs
it inside two more layers (exception handling, an exit stack): about 100 us per request, as much
as the whole ONNX Runtime call of a small model. :class:`FastLane` sits inside the service's own
middleware (body limit, in-flight limit, request IDs, tracing) and answers the model endpoints
of :data:`~flowserve.service.routes_predict.ENDPOINTS` directly: a dictionary lookup on the path,
the same route function FastAPI would call, the same exception handlers on failure. Everything
else, and model requests with a query string (whose options FastAPI validates), goes on to
FastAPI unchanged, so the routes, their OpenAPI document and their errors have one definition.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["FastLane", "RouteFunction"]

RouteFunction = Callable[..., Awaitable[Response]]


class FastLane:
    """Pure ASGI middleware: ``POST`` model endpoints straight to their route functions.

    Arguments:
        app: the rest of the stack (FastAPI's router, for every other request).
        fastapi_app: the app whose exception handlers render errors (looked up per error, so
            handlers installed later count).
        default: endpoint name -> route function, for ``/<endpoint>`` (the default model).
        named: the same for ``/models/{name}/<endpoint>``.
        versioned: the same for ``/models/{name}/versions/{version}/<endpoint>``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        fastapi_app: FastAPI,
        default: dict[str, RouteFunction],
        named: dict[str, RouteFunction],
        versioned: dict[str, RouteFunction],
    ) -> None:
        self.app = app
        self._fastapi = fastapi_app
        self._default = {f"/{name}": fn for name, fn in default.items()}
        self._named = named
        self._versioned = versioned

    def match(self, path: str) -> tuple[RouteFunction, dict[str, str]] | None:
        """The route function and path parameters for ``path``, or None (FastAPI's to route)."""
        fn = self._default.get(path)
        if fn is not None:
            return fn, {}
        if not path.startswith("/models/"):
            return None
        parts = path.split("/")
        # "", "models", name, endpoint | "", "models", name, "versions", version, endpoint
        if len(parts) == 4 and parts[2]:
            fn = self._named.get(parts[3])
            return (fn, {"name": parts[2]}) if fn is not None else None
        if len(parts) == 6 and parts[2] and parts[3] == "versions" and parts[4]:
            fn = self._versioned.get(parts[5])
            return (fn, {"name": parts[2], "version": parts[4]}) if fn is not None else None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = None
        if scope["type"] == "http" and scope["method"] == "POST" and not scope["query_string"]:
            target = self.match(scope["path"])
        if target is None:
            await self.app(scope, receive, send)
            return
        fn, params = target
        request = Request(scope, receive)
        try:
            response = await fn(request, **params)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> Callable[[Request, Any], Awaitable[Response]] | None:
        # As Starlette looks them up: the most specific class with a handler wins.
        handlers = self._fastapi.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return handlers[cls]  # type: ignore[return-value]
        return None

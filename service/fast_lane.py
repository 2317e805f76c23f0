"""The inference endpoints' short path through the ASGI stack.

FastAPI matches a request against every route in order, solves the route's parameters and runs
it inside two more layers (exception handling, an exit stack): about 100 us per request, as much
as the whole ONNX Runtime call of a small model. :class:`FastLane` sits inside the service's own
middleware (body limit, in-flight limit, request IDs, tracing) and answers the ``POST`` inference
routes (the model endpoints of :data:`~flowserve.service.routes_predict.ENDPOINTS` under their
three prefixes, and V2 ``infer``) directly: a dictionary lookup on the path, the same route
function FastAPI would call, the same exception handlers on failure. Everything else, and
requests with a query string (whose options FastAPI validates), goes on to FastAPI unchanged,
so the routes, their OpenAPI document and their errors have one definition.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["FastLane", "RouteFunction"]

RouteFunction = Callable[..., Awaitable[Response]]
# (number of path segments, static segments by position) -> (parameter positions, function)
_Key = tuple[int, tuple[tuple[int, str], ...]]


def _compile(template: str) -> tuple[_Key, dict[str, int]]:
    parts = template.split("/")
    params = {p[1:-1]: i for i, p in enumerate(parts) if p.startswith("{") and p.endswith("}")}
    static = tuple((i, p) for i, p in enumerate(parts) if i not in params.values())
    return (len(parts), static), params


class FastLane:
    """Pure ASGI middleware: ``POST`` requests on ``routes`` straight to their route functions.

    Arguments:
        app: the rest of the stack (FastAPI's router, for every other request).
        fastapi_app: the app whose exception handlers render errors (looked up per error, so
            handlers installed later count).
        routes: path template (``/models/{name}/log_prob``; a parameter is one whole,
            non-empty segment, as FastAPI's ``str`` path parameters are) -> route function,
            called as ``fn(request, **path_params)``.
    """

    def __init__(
        self, app: ASGIApp, *, fastapi_app: FastAPI, routes: Mapping[str, RouteFunction]
    ) -> None:
        self.app = app
        self._fastapi = fastapi_app
        # Segment count -> the templates of that length, each as (static segments, params, fn).
        self._by_length: dict[
            int, list[tuple[tuple[tuple[int, str], ...], dict[str, int], RouteFunction]]
        ] = {}
        for template, fn in routes.items():
            (length, static), params = _compile(template)
            self._by_length.setdefault(length, []).append((static, params, fn))

    def match(self, path: str) -> tuple[RouteFunction, dict[str, str]] | None:
        """The route function and path parameters for ``path``, or None (FastAPI's to route)."""
        parts = path.split("/")
        for static, params, fn in self._by_length.get(len(parts), ()):
            if all(parts[i] == segment for i, segment in static):
                values = {name: parts[i] for name, i in params.items()}
                if all(values.values()):
                    return fn, values
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = None
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("query_string"):
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

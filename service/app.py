"""Build the FastAPI app: :func:`create_app` wires settings, repository, engine, routes, errors,
the body size limit and the OpenAPI document. It loads nothing until the app starts."""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import FastAPI

import flowserve

from .batching import InferenceEngine
from .docs_offline import install_offline_docs
from .drain import draining_on_sigterm
from .errors import install_error_handlers
from .fast_lane import FastLane
from .kserve_v2 import fast_lane_routes, kserve_v2_router
from .limits import BodySizeLimit, InFlightLimit
from .metrics import ServiceMetrics
from .openapi import openapi_document
from .repository import ModelRepository
from .request_log import RequestLog
from .routes_ops import admin_router, health_router, models_router
from .routes_predict import prediction_router, route_functions
from .settings import ServiceSettings
from .state import ServiceState, _default, _named, _versioned
from .tracing import install_tracing

__all__ = ["create_app"]

log = logging.getLogger("flowserve.service")

DESCRIPTION = """Exact likelihoods from normalizing flows: `/log_prob`, anomaly `/score`,
`/encode`, `/decode`, `/sample` for the default model, for `/models/{name}` (newest ready
version) and `/models/{name}/versions/{version}`. JSON rows, or `.npy` bodies
(`Content-Type: application/x-npy`, `Accept: application/x-npy`) for bulk scoring.
Errors are `{"error": {"code", "message", ...}}`."""


# FastAPI 0.16x instruments every request with OpenTelemetry itself, checking its providers per
# request. Tracing here is opt-in (--tracing, OpenTelemetry's ASGI middleware): off, there is
# nothing to check; on, the native spans would duplicate the middleware's.
_NO_NATIVE_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The service app for ``settings`` (default: read from ``FLOWSERVE_*``)."""
    settings = settings or ServiceSettings()
    metrics = ServiceMetrics()
    repository = ModelRepository(
        settings.model_root,
        default_model=settings.default_model,
        prefer=settings.runtime,
        intra_op_threads=settings.ort_intra_op_threads,
        inter_op_threads=settings.ort_inter_op_threads,
        on_load_failure=metrics.load_failure,
    )
    engine = InferenceEngine(
        batching=settings.batching,
        max_batch_size=settings.max_batch_size,
        max_delay_s=settings.max_batch_delay_ms / 1000.0,
        threads=settings.inference_threads,
        on_batch=metrics.observe_batch,
        inline_max_rows=settings.inline_max_rows,
        inline_max_s=settings.inline_max_ms / 1000.0,
    )
    state = ServiceState(settings, repository, engine, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not repository.loaded:
            snap = await anyio.to_thread.run_sync(repository.reload)
            log.info(
                "serving %d model versions from %s (default: %s; %d failed)",
                len(snap.ready_versions()),
                settings.model_root,
                snap.default_name,
                len(snap.failed_versions()),
            )
        snap = repository.snapshot
        metrics.set_models(len(snap.ready_versions()), len(snap.failed_versions()))
        try:
            with draining_on_sigterm(state, settings.drain_s):
                async with anyio.create_task_group() as tg:
                    if settings.watch:
                        tg.start_soon(repository.watch, settings.watch_interval_s)
                    yield
                    tg.cancel_scope.cancel()
        finally:
            metrics.close()

    app = FastAPI(
        **_NO_NATIVE_TELEMETRY,
        title="flowserve",
        version=flowserve.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc with local assets, below
        redoc_url=None,
    )
    app.state.flowserve = state
    install_error_handlers(app, on_error=metrics.error)
    # The model endpoints under their three prefixes: each route function is made once, and
    # both FastAPI's router and the fast lane call it.
    prefixes = {
        "": (_default, "default model"),
        "/models/{name}": (_named, "named model"),
        "/models/{name}/versions/{version}": (_versioned, "versioned model"),
    }
    functions = {prefix: route_functions(resolver) for prefix, (resolver, _) in prefixes.items()}
    if settings.fast_lane:  # innermost: inside the limits and request IDs, before FastAPI
        lane = {f"{p}/{name}": fn for p, fns in functions.items() for name, fn in fns.items()}
        app.add_middleware(FastLane, fastapi_app=app, routes={**lane, **fast_lane_routes()})
    app.add_middleware(
        BodySizeLimit, max_body_bytes=settings.max_body_bytes, on_reject=metrics.error
    )
    # Added last, so outermost: an overloaded server refuses before doing anything else.
    app.add_middleware(InFlightLimit, max_in_flight=settings.max_in_flight, on_reject=metrics.error)
    # Around even that: every answer, a refused one included, carries its X-Request-ID and is
    # logged.
    app.add_middleware(RequestLog, access_log=settings.access_log)
    if settings.tracing:  # outermost: the span covers everything the server does
        install_tracing(app)
    # Most-called routes first: Starlette matches routes in order, and matching is per request.
    for prefix, (_, tag) in prefixes.items():
        app.include_router(prediction_router(functions[prefix], prefix, tag))
    app.include_router(health_router)
    app.include_router(models_router)
    app.include_router(admin_router)
    app.include_router(kserve_v2_router())
    # After the model routes: Starlette tries routes in order, on every request.
    if not install_offline_docs(app):
        log.warning("fastapi-offline is not installed: no /docs or /redoc")
    app.openapi = lambda: openapi_document(app, state)  # type: ignore[method-assign]
    return app

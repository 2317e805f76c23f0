"""OpenTelemetry tracing, optional (``pip install "flowserve[tracing]"``, ``--tracing``).

:func:`install_tracing` wraps the app in OpenTelemetry's ASGI middleware: one server span per
request (``POST /log_prob`` and so on, with the HTTP method, route, status and the client's
``X-Request-ID`` as attributes), health, readiness and metrics excluded. Spans go to the
process's tracer provider: run ``opentelemetry-instrument flowserve serve --tracing ...`` (or set a
provider) to export them, e.g. with OTLP as the ``OTEL_*`` environment variables say.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

__all__ = ["EXCLUDED_URLS", "install_tracing"]

EXCLUDED_URLS = "/healthz,/readyz,/metrics,/v2/health"


def install_tracing(app: FastAPI, tracer_provider: Any = None) -> None:
    """Add the tracing middleware to ``app`` (before it starts). Raises ``RuntimeError`` naming
    the extra to install when OpenTelemetry's ASGI instrumentation is missing."""
    try:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    except ImportError as e:
        raise RuntimeError(
            'tracing needs OpenTelemetry: pip install "flowserve[tracing]" (or turn --tracing off)'
        ) from e
    app.add_middleware(
        OpenTelemetryMiddleware,
        excluded_urls=EXCLUDED_URLS,
        tracer_provider=tracer_provider,
        http_capture_headers_server_request=["x-request-id"],
    )

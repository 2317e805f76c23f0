"""Prometheus metrics of one app (its own registry, so several apps can live in one process).

Names: ``flowserve_requests_total{endpoint,model,version,status}``,
``flowserve_request_duration_seconds{endpoint,model}``, ``flowserve_rows_total{endpoint,model}``,
``flowserve_errors_total{code}``, ``flowserve_model_load_failures_total{model}``,
``flowserve_batch_rows`` / ``flowserve_batch_requests`` (server-side batching),
``flowserve_models_ready`` and ``flowserve_models_failed``.
With several uvicorn workers each process reports its own numbers.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "ServiceMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096, 65536)


class ServiceMetrics:
    """The service's counters, histograms and gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "flowserve_requests",
            "Model requests answered",
            ["endpoint", "model", "version", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "flowserve_request_duration_seconds",
            "Time to answer a model request",
            ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rows = Counter(
            "flowserve_rows",
            "Rows scored, encoded, decoded or sampled",
            ["endpoint", "model"],
            registry=r,
        )
        self.errors = Counter("flowserve_errors", "Error responses by code", ["code"], registry=r)
        self.load_failures = Counter(
            "flowserve_model_load_failures", "Artifacts refused at load", ["model"], registry=r
        )
        self.batch_rows = Histogram(
            "flowserve_batch_rows", "Rows per inference call", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "flowserve_batch_requests",
            "Requests merged into one inference call",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        # Labelled children by label values, filled on first use (per-request hot path).
        self._requests: dict[tuple[str, str, int, str], Any] = {}
        self._latency: dict[tuple[str, str], Any] = {}
        self._rows: dict[tuple[str, str], Any] = {}
        self.models_ready = Gauge("flowserve_models_ready", "Model versions ready", registry=r)
        self.models_failed = Gauge(
            "flowserve_models_failed", "Model versions that failed to load", registry=r
        )

    def request(self, endpoint: str, model: str, version: int, status: str, seconds: float) -> None:
        """Count one answered model request and its latency."""
        key = (endpoint, model, version, status)
        counter = self._requests.get(key)
        if counter is None:  # ``labels()`` locks and validates: look each child up once
            counter = self._requests[key] = self.requests.labels(
                endpoint, model, str(version), status
            )
        counter.inc()
        hist = self._latency.get((endpoint, model))
        if hist is None:
            hist = self._latency[endpoint, model] = self.latency.labels(endpoint, model)
        hist.observe(seconds)

    def rows_done(self, endpoint: str, model: str, rows: int) -> None:
        """Count rows scored, encoded, decoded or sampled."""
        counter = self._rows.get((endpoint, model))
        if counter is None:
            counter = self._rows[endpoint, model] = self.rows.labels(endpoint, model)
        counter.inc(rows)

    def observe_batch(self, rows: int, requests: int) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)

    def error(self, code: str) -> None:
        self.errors.labels(code).inc()

    def load_failure(self, name: str, version: int, reason: str) -> None:
        self.load_failures.labels(name).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

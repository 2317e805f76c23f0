"""Optional OpenTelemetry tracing: one server span per request, health probes excluded."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from flowserve.service.app import create_app
from flowserve.service.settings import ServiceSettings
from flowserve.service.tracing import install_tracing
from tests.service_fixtures import affine_flow, build_affine_artifact

pytest.importorskip("opentelemetry.instrumentation.asgi")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
in_memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
export = pytest.importorskip("opentelemetry.sdk.trace.export")


def test_spans_per_request(tmp_path: Path) -> None:
    build_affine_artifact(tmp_path, "toy", 1, affine_flow(3, seed=2))
    spans = in_memory.InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(spans))
    app = create_app(ServiceSettings(model_root=tmp_path))
    install_tracing(app, tracer_provider=provider)
    with TestClient(app) as client:
        ok = client.post("/log_prob", json={"inputs": [[1, 2, 3]]}, headers={"X-Request-ID": "t1"})
        bad = client.post("/v2/models/nope/infer", json={})
        client.get("/healthz")
    assert (ok.status_code, bad.status_code) == (200, 404)
    servers = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER"]
    assert [s.name for s in servers] == ["POST /log_prob", "POST /v2/models/nope/infer"]
    first = dict(servers[0].attributes or {})
    assert 200 in (first.get("http.response.status_code"), first.get("http.status_code"))
    assert any("x_request_id" in k and v == ("t1",) for k, v in first.items())
    second = dict(servers[1].attributes or {})
    assert 404 in (second.get("http.response.status_code"), second.get("http.status_code"))


def test_tracing_setting_adds_the_middleware(tmp_path: Path) -> None:
    app = create_app(ServiceSettings(model_root=tmp_path, tracing=True))
    assert any(m.cls.__name__ == "OpenTelemetryMiddleware" for m in app.user_middleware)

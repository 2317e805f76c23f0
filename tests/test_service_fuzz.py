"""Property-based fuzzing of the whole HTTP API from its own OpenAPI document (schemathesis):
whatever a client sends, the answer is never a server error (5xx other than a documented 503).

The bundled default model is served in-process; examples are derandomized, so runs repeat.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from flowserve.service.app import create_app
from flowserve.service.settings import ServiceSettings


@pytest.fixture(scope="module")
def api_schema() -> Iterator[schemathesis.BaseSchema]:
    app = create_app(ServiceSettings())
    with TestClient(app):  # runs the lifespan: models loaded and warmed up
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def _operations() -> list[str]:
    app = create_app(ServiceSettings())
    spec = app.openapi()
    return [f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item]


@pytest.mark.parametrize("operation", _operations())
def test_no_server_errors(api_schema: schemathesis.BaseSchema, operation: str) -> None:
    method, path = operation.split(" ", 1)
    strategy = api_schema[path][method].as_strategy()

    @given(case=strategy)
    @settings(
        max_examples=25,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call()
        if response.status_code == 503 and path.endswith("/ready"):
            return  # V2 readiness of an unknown model is a documented answer
        case.validate_response(response, checks=[not_a_server_error])

    fuzz()

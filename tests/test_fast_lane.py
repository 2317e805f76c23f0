"""The fast lane answers the model endpoints exactly as FastAPI's routes do: the same status, body
and headers for good requests and bad ones, on every prefix, with and without API keys."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.routing import Router

from flowserve.service.fast_lane import FastLane
from flowserve.service.routes_predict import ENDPOINTS
from tests.service_fixtures import AffineFlow, npy_bytes, service_client

ROW = [0.3, -1.2, 2.5]
FAR = [40.0, -35.0, 60.0]  # far outside the training distribution
NPY = {"content-type": "application/x-npy", "accept": "application/x-npy"}
# (method, path, keyword arguments of TestClient.request)
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/log_prob", {"json": {"inputs": [ROW, FAR]}}),
    ("POST", "/score", {"json": {"inputs": [ROW, FAR], "fpr": 0.2}}),
    ("POST", "/score?fpr=0.2", {"json": {"inputs": [ROW]}}),  # a query string: FastAPI's
    ("POST", "/score?fpr=2", {"json": {"inputs": [ROW]}}),
    ("POST", "/encode", {"json": {"inputs": [ROW]}}),
    ("POST", "/decode", {"json": {"z": [[0.1, 0.2, -0.3]]}}),
    ("POST", "/sample", {"json": {"n": 3, "seed": 4}}),
    ("POST", "/explain", {"json": {"inputs": [FAR]}}),
    ("POST", "/models/toy/log_prob", {"json": {"inputs": [ROW]}}),
    ("POST", "/models/toy/versions/1/score", {"json": {"inputs": [ROW]}}),
    ("POST", "/models/toy/versions/latest/encode", {"json": {"inputs": [ROW]}}),
    # bad input: every one a clear 4xx, the same from both paths
    ("POST", "/log_prob", {"json": {"inputs": [[1.0, 2.0]]}}),
    ("POST", "/log_prob", {"content": b'{"inputs": [[NaN, 1, 2]]}'}),
    ("POST", "/log_prob", {"content": b"{not json"}),
    ("POST", "/log_prob", {"json": {"inputs": [ROW], "extra": 1}}),
    ("POST", "/log_prob", {"content": b"abc", "headers": {"content-type": "text/plain"}}),
    ("POST", "/score", {"json": {"inputs": [ROW], "fpr": 1e-9}}),
    ("POST", "/sample", {"json": {"n": -1}}),
    ("POST", "/models/nope/log_prob", {"json": {"inputs": [ROW]}}),
    ("POST", "/models/toy/versions/9/log_prob", {"json": {"inputs": [ROW]}}),
    ("POST", "/models/toy/versions/x/log_prob", {"json": {"inputs": [ROW]}}),
    ("POST", "/models/toy/nothing", {"json": {"inputs": [ROW]}}),
    ("POST", "/models//log_prob", {"json": {"inputs": [ROW]}}),
    ("GET", "/log_prob", {}),
    ("POST", "/log_prob/", {"json": {"inputs": [ROW]}}),
    ("POST", "/log_prob", {"content": npy_bytes(np.array([ROW], np.float32)), "headers": NPY}),
    ("POST", "/log_prob", {"content": b"\x93NUMPY garbage", "headers": NPY}),
]
PREFIXES = ("", "/models/{name}", "/models/{name}/versions/{version}")
V2_X = {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [ROW, FAR]}
_RAW = np.array([ROW], np.float32).tobytes()
_V2_HEAD = json.dumps(
    {
        "inputs": [
            {
                "name": "x",
                "shape": [1, 3],
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(_RAW)},
            }
        ],
        "outputs": [{"name": "log_prob", "parameters": {"binary_data": True}}, {"name": "z"}],
    }
).encode()
V2_BINARY = {
    "content": _V2_HEAD + _RAW,
    "headers": {"Inference-Header-Content-Length": str(len(_V2_HEAD))},
}
CASES += [
    ("POST", "/v2/models/toy/infer", {"json": {"inputs": [V2_X]}}),
    ("POST", "/v2/models/toy/versions/1/infer", {"json": {"inputs": [V2_X], "id": "r1"}}),
    ("POST", "/v2/models/toy/infer", V2_BINARY),
    ("POST", "/v2/models/toy/infer", {"json": {"inputs": [{**V2_X, "shape": [3, 2]}]}}),
    ("POST", "/v2/models/toy/infer", {"json": {"inputs": [V2_X], "parameters": {"fpr": 2}}}),
    ("POST", "/v2/models/nope/infer", {"json": {"inputs": [V2_X]}}),
    ("POST", "/v2/models/toy/versions/7/infer", {"json": {"inputs": [V2_X]}}),
    ("POST", "/v2/models/toy/infer", {"content": b"[1, 2"}),
    (
        "POST",
        "/v2/models/toy/infer",
        {**V2_BINARY, "headers": {"Inference-Header-Content-Length": "x"}},
    ),
]
KEPT_HEADERS = ("content-type", "x-flowserve-model", "x-flowserve-version", "www-authenticate")


def _answer(client: TestClient, method: str, path: str, kwargs: dict[str, Any]) -> tuple:
    r = client.request(method, path, **kwargs)
    body: Any = r.json() if r.headers.get("content-type") == "application/json" else r.content
    assert r.headers.get("x-request-id"), "every answer carries a request ID"
    return r.status_code, body, {h: r.headers.get(h) for h in KEPT_HEADERS}


@pytest.fixture(scope="module")
def clients(toy_repo: tuple[Path, AffineFlow]) -> Iterator[tuple[TestClient, TestClient]]:
    with (
        service_client(toy_repo[0], fast_lane=True) as fast,
        service_client(toy_repo[0], fast_lane=False) as routed,
    ):
        yield fast, routed


@pytest.mark.parametrize(("method", "path", "kwargs"), CASES, ids=[c[1] for c in CASES])
def test_fast_lane_answers_as_fastapi_routes_do(
    clients: tuple[TestClient, TestClient], method: str, path: str, kwargs: dict[str, Any]
) -> None:
    fast, routed = clients
    got, want = _answer(fast, method, path, kwargs), _answer(routed, method, path, kwargs)
    assert got == want
    assert got[0] != 500


def test_fast_lane_keeps_api_keys_and_metrics(toy_repo: tuple[Path, AffineFlow]) -> None:
    with service_client(toy_repo[0], api_keys=["k1"]) as client:
        body = {"inputs": [ROW]}
        missing = client.post("/log_prob", json=body)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["code"] == "unauthorized"
        assert client.post("/log_prob", json=body, headers={"x-api-key": "k2"}).status_code == 401
        assert client.post("/log_prob", json=body, headers={"x-api-key": "k1"}).status_code == 200
        metrics = client.get("/metrics").text
    assert 'flowserve_requests_total{endpoint="log_prob",model="toy",status="200",version="1"}' in (
        metrics
    )
    assert 'flowserve_errors_total{code="unauthorized"} 2.0' in metrics


def test_fast_lane_matches_exactly_its_routes() -> None:
    names = [ep.name for ep in ENDPOINTS]
    fns = {name: (lambda name=name: name) for name in names}
    routes = {f"{prefix}/{name}": fns[name] for prefix in PREFIXES for name in names}
    lane = FastLane(None, fastapi_app=None, routes=routes)  # type: ignore[arg-type]
    for name in names:
        assert lane.match(f"/{name}") == (fns[name], {})
        assert lane.match(f"/models/m/{name}") == (fns[name], {"name": "m"})
        assert lane.match(f"/models/m/versions/3/{name}") == (
            fns[name],
            {"name": "m", "version": "3"},
        )
    for other in (
        "/healthz",
        "/models",
        "/models/m",
        "/models/m/versions/3",
        "/models//log_prob",
        "/models/m/versions//log_prob",
        "/models/m/v/3/log_prob",
        "/models/versions/3/log_prob",
        "/log_prob/",
        "/v2/models/m/infer",
        "/models/m/log_prob/x",
    ):
        assert lane.match(other) is None, other


def test_fast_lane_skips_fastapi_routing(
    toy_repo: tuple[Path, AffineFlow], monkeypatch: pytest.MonkeyPatch
) -> None:
    routed: list[str] = []
    original = Router.__call__

    async def spy(self: Router, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            routed.append(scope["path"])
        await original(self, scope, receive, send)

    monkeypatch.setattr(Router, "__call__", spy)
    for lane, expected in (
        (True, ["/score", "/healthz"]),
        (False, ["/log_prob", "/score", "/v2/models/toy/infer", "/healthz"]),
    ):
        routed.clear()
        with service_client(toy_repo[0], fast_lane=lane) as client:
            assert client.post("/log_prob", json={"inputs": [ROW]}).status_code == 200
            assert client.post("/score?fpr=0.2", json={"inputs": [ROW]}).status_code == 200
            assert client.post("/v2/models/toy/infer", json={"inputs": [V2_X]}).status_code == 200
            assert client.get("/healthz").status_code == 200
        assert routed == expected

"""The Python client without a server: httpx.MockTransport stands in for flowserve.

Checks the public API list, request shapes (JSON vs .npy bodies, DataFrame column matching),
the error mapping, and the retry policy (connection errors and 503 only). The client against a
real server process is tested in tests/test_client.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import numpy as np
import pandas as pd
import pytest

import flowserve_client as fc
from flowserve_client import FlowClient, decode_npy, encode_npy

FEATURES = ["a", "b", "c"]
INFO = {
    "name": "toy",
    "default_version": 2,
    "versions": [
        {"version": 1, "feature_names": ["x", "y", "z"]},
        {"version": 2, "feature_names": FEATURES},
    ],
}


def test_public_api_is_exactly_all() -> None:
    assert sorted(fc.__all__) == sorted(
        [
            "AsyncFlowClient",
            "ConnectionFailed",
            "Encoding",
            "Explanation",
            "FlowClient",
            "FlowServeError",
            "InvalidInput",
            "ModelNotFound",
            "NPY_MEDIA_TYPE",
            "PayloadTooLarge",
            "RequestTimeout",
            "ScoreResult",
            "ServerError",
            "ServiceUnavailable",
            "Unauthorized",
            "__version__",
            "decode_npy",
            "encode_npy",
        ]
    )
    public = {n for n in dir(fc) if not n.startswith("_")} - {"cli"}
    assert public <= set(fc.__all__)


def test_exception_hierarchy() -> None:
    for cls in (
        fc.InvalidInput,
        fc.Unauthorized,
        fc.ModelNotFound,
        fc.PayloadTooLarge,
        fc.ServerError,
        fc.ServiceUnavailable,
        fc.RequestTimeout,
    ):
        assert issubclass(cls, fc.FlowServeError)
    assert issubclass(fc.ConnectionFailed, fc.ServiceUnavailable)


def _fake(seen: list[httpx.Request]) -> Callable[[httpx.Request], httpx.Response]:
    """A tiny flowserve: log_prob = -sum(x^2), echoes which body kind it got."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path
        if path == "/models/toy":
            return httpx.Response(200, json=INFO)
        if path == "/models":
            return httpx.Response(200, json={"default": "toy", "models": [INFO]})
        if request.headers.get("content-type") == "application/x-npy":
            x = decode_npy(request.content)
        else:
            x = np.asarray(json.loads(request.content)["inputs"], dtype=np.float64)
        if x.shape[1] != 3:
            return httpx.Response(
                422,
                json={
                    "error": {
                        "code": "invalid_input",
                        "message": f"expected 3 features, got {x.shape[1]}",
                        "expected": 3,
                    }
                },
            )
        lp = -(x.astype(np.float64) ** 2).sum(axis=1)
        if path.endswith("/score") and request.headers.get("accept") == "application/x-npy":
            table = np.stack([lp, 50 + 0 * lp, (lp < -5).astype(float)], axis=1)
            return httpx.Response(
                200,
                content=encode_npy(table.astype(np.float32)),
                headers={
                    "Content-Type": "application/x-npy",
                    "X-Flowserve-Threshold": "-5",
                    "X-Flowserve-Fpr": request.url.params.get("fpr", "0.01"),
                    "X-Flowserve-Model": "toy",
                    "X-Flowserve-Version": "2",
                },
            )
        if path.endswith("/score"):
            body = json.loads(request.content)
            return httpx.Response(
                200,
                json={
                    "model": "toy",
                    "version": 2,
                    "fpr": body.get("fpr", 0.01),
                    "threshold": -5.0,
                    "log_prob": lp.tolist(),
                    "score": (-lp).tolist(),
                    "percentile": [50.0] * len(lp),
                    "is_anomaly": (lp < -5).tolist(),
                },
            )
        return httpx.Response(200, json={"model": "toy", "version": 2, "log_prob": lp.tolist()})

    return handler


def _client(seen: list[httpx.Request], **kwargs: object) -> FlowClient:
    return FlowClient("http://flow", transport=httpx.MockTransport(_fake(seen)), **kwargs)


def test_dataframe_columns_matched_to_feature_names() -> None:
    seen: list[httpx.Request] = []
    frame = pd.DataFrame({"id": [7, 8], "c": [3.0, 0.0], "a": [1.0, 0.0], "b": [2.0, 1.0]})
    with _client(seen, model="toy") as client:
        lp = client.log_prob(frame)
    # Reordered to the model's feature order (a, b, c); the id column is ignored.
    sent = json.loads(seen[-1].content)["inputs"]
    assert sent == [[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]]
    np.testing.assert_allclose(lp, [-14.0, -1.0])
    assert seen[0].url.path == "/models/toy"  # feature names fetched once
    assert [r.url.path for r in seen].count("/models/toy") == 1


def test_dataframe_missing_feature_is_named() -> None:
    seen: list[httpx.Request] = []
    with _client(seen) as client, pytest.raises(fc.InvalidInput, match=r"\['c'\]"):
        client.score(pd.DataFrame({"a": [1.0], "b": [2.0]}))


def test_large_batches_travel_as_npy_and_match_json() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    seen: list[httpx.Request] = []
    with _client(seen, binary_threshold=None) as client:
        by_json = client.score(x, fpr=0.05)
    assert seen[-1].headers["content-type"] == "application/json"
    with _client(seen, binary_threshold=0) as client:
        by_npy = client.score(x, fpr=0.05)
    assert seen[-1].headers["content-type"] == "application/x-npy"
    assert seen[-1].url.params["fpr"] == "0.05"
    np.testing.assert_allclose(by_npy.log_prob, by_json.log_prob, rtol=1e-6)
    np.testing.assert_array_equal(by_npy.is_anomaly, by_json.is_anomaly)
    assert (by_npy.model, by_npy.version, by_npy.fpr) == ("toy", 2, 0.05)
    assert by_json.threshold == by_npy.threshold == -5.0
    np.testing.assert_allclose(by_json.score, -by_json.log_prob)


def test_server_errors_become_typed_exceptions_with_code_and_message() -> None:
    seen: list[httpx.Request] = []
    with _client(seen) as client, pytest.raises(fc.InvalidInput) as info:
        client.log_prob([[1.0, 2.0]])
    assert info.value.code == "invalid_input"
    assert info.value.status_code == 422
    assert "expected 3 features, got 2" in info.value.message
    assert info.value.details == {"expected": 3}


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (401, "unauthorized", fc.Unauthorized),
        (404, "model_not_found", fc.ModelNotFound),
        (404, "version_not_found", fc.ModelNotFound),
        (413, "too_many_rows", fc.PayloadTooLarge),
        (413, "body_too_large", fc.PayloadTooLarge),
        (422, "out_of_range", fc.InvalidInput),
        (415, "unsupported_media_type", fc.InvalidInput),
        (500, "internal_error", fc.ServerError),
        (503, "model_unavailable", fc.ServiceUnavailable),
        (503, "overloaded", fc.ServiceUnavailable),
        (503, "draining", fc.ServiceUnavailable),
        (403, "admin_disabled", fc.Unauthorized),
    ],
)
def test_error_mapping(status: int, code: str, cls: type[Exception]) -> None:
    body = {"error": {"code": code, "message": "why"}}
    transport = httpx.MockTransport(lambda r: httpx.Response(status, json=body))
    client = FlowClient("http://flow", transport=transport, retries=0)
    with client, pytest.raises(cls) as info:
        client.sample(3)
    assert (info.value.code, info.value.message) == (code, "why")  # type: ignore[attr-defined]


def test_retries_on_503_then_succeeds() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 3:
            return httpx.Response(503, json={"error": {"code": "model_unavailable", "message": ""}})
        return httpx.Response(200, json={"model": "m", "version": 1, "samples": [[1.0, 2.0]]})

    with FlowClient("http://f", transport=httpx.MockTransport(handler), backoff=0) as client:
        np.testing.assert_array_equal(client.sample(1), [[1.0, 2.0]])
    assert len(calls) == 3


def test_retries_give_up_after_the_budget() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(503, json={"error": {"code": "model_unavailable", "message": "x"}})

    transport = httpx.MockTransport(handler)
    client = FlowClient("http://f", transport=transport, retries=2, backoff=0)
    with client, pytest.raises(fc.ServiceUnavailable):
        client.sample(1)
    assert len(calls) == 3  # one try + two retries


def test_no_retry_on_other_errors() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(500, json={"error": {"code": "internal_error", "message": "x"}})

    client = FlowClient("http://f", transport=httpx.MockTransport(handler), backoff=0)
    with client, pytest.raises(fc.ServerError):
        client.sample(1)
    assert len(calls) == 1


def test_retries_connection_errors_then_raises_connection_failed() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ConnectError("refused", request=request)

    client = FlowClient("http://f", transport=httpx.MockTransport(handler), backoff=0)
    with client, pytest.raises(fc.ConnectionFailed, match="after 4 attempts"):
        client.health()
    assert len(calls) == 4


def test_ready_is_false_on_503_without_retrying() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(503, json={"status": "loading"})

    with FlowClient("http://f", transport=httpx.MockTransport(handler), backoff=0) as client:
        assert client.ready() is False
    assert len(calls) == 1


async def _async_retry() -> tuple[np.ndarray, int]:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        if len(calls) == 2:
            return httpx.Response(503, json={"error": {"code": "model_unavailable", "message": ""}})
        return httpx.Response(200, json={"model": "m", "version": 1, "log_prob": [-1.0]})

    transport = httpx.MockTransport(handler)
    async with fc.AsyncFlowClient("http://f", transport=transport, backoff=0) as client:
        return await client.log_prob([[0.0, 1.0]]), len(calls)


def test_async_client_retries_the_same_way() -> None:
    import asyncio

    lp, calls = asyncio.run(_async_retry())
    np.testing.assert_array_equal(lp, [-1.0])
    assert calls == 3


def test_prefixes_and_headers() -> None:
    seen: list[httpx.Request] = []
    with _client(seen, model="toy", version=2, api_key="k1") as client:
        client.log_prob([[0.0, 0.0, 0.0]])
    assert seen[-1].url.path == "/models/toy/versions/2/log_prob"
    assert seen[-1].headers["x-api-key"] == "k1"
    with pytest.raises(ValueError, match="version needs model"):
        FlowClient("http://f", version=1)


def test_client_side_input_errors() -> None:
    seen: list[httpx.Request] = []
    with _client(seen) as client:
        with pytest.raises(fc.InvalidInput, match="numeric"):
            client.log_prob([["a", "b", "c"]])
        with pytest.raises(fc.InvalidInput, match="no rows"):
            client.log_prob(np.zeros((0, 3)))
    assert seen == []

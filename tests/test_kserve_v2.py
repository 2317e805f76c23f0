"""Open Inference Protocol (KServe V2 REST) routes: contract, parity with /score, V2 errors."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.service_fixtures import (
    AffineFlow,
    affine_flow,
    build_affine_artifact,
    corrupt_artifact,
    service_client,
)

KEY = "v2-secret"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, AffineFlow]]:
    root = tmp_path_factory.mktemp("models")
    _, flow = build_affine_artifact(root, "toy", 1, affine_flow(3, seed=2))
    build_affine_artifact(root, "toy", 2, affine_flow(3, seed=3))
    broken, _ = build_affine_artifact(root, "broken", 1, affine_flow(2, seed=5))
    corrupt_artifact(broken)
    with service_client(root, api_keys=[KEY], default_model="toy") as client:
        yield client, flow


def _infer_body(x: np.ndarray, **extra: object) -> dict:
    return {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP64", "data": x.ravel().tolist()}
        ],
        **extra,
    }


def test_health_and_server_metadata(setup: tuple[TestClient, AffineFlow]) -> None:
    client, _ = setup
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    meta = client.get("/v2").json()
    assert meta["name"] == "flowserve" and isinstance(meta["version"], str)


def test_model_metadata_describes_tensors(setup: tuple[TestClient, AffineFlow]) -> None:
    client, _ = setup
    meta = client.get("/v2/models/toy", headers=AUTH).json()
    assert meta["name"] == "toy"
    assert meta["versions"] == ["1", "2"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert outputs == {
        "log_prob": ("FP32", [-1]),
        "z": ("FP32", [-1, 3]),
        "score": ("FP32", [-1]),
        "percentile": ("FP64", [-1]),
        "is_anomaly": ("BOOL", [-1]),
        "p_value": ("FP64", [-1]),
    }
    assert client.get("/v2/models/toy/versions/1", headers=AUTH).status_code == 200
    ready = client.get("/v2/models/toy/versions/2/ready", headers=AUTH)
    assert ready.json() == {"name": "toy", "ready": True}


def test_infer_matches_score_and_encode(setup: tuple[TestClient, AffineFlow]) -> None:
    client, flow = setup
    x = flow.sample(7, seed=9)
    x[3] += 8.0  # an outlier
    r = client.post(
        "/v2/models/toy/versions/1/infer",
        headers=AUTH,
        json=_infer_body(x, id="req-1", parameters={"fpr": 0.1}),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("toy", "1", "req-1")
    out = {o["name"]: o for o in body["outputs"]}
    assert list(out) == ["log_prob", "z", "score", "percentile", "is_anomaly", "p_value"]
    assert out["z"]["shape"] == [7, 3] and out["log_prob"]["shape"] == [7]
    assert out["is_anomaly"]["datatype"] == "BOOL"

    score = client.post(
        "/models/toy/versions/1/score", headers=AUTH, json={"inputs": x.tolist(), "fpr": 0.1}
    ).json()
    np.testing.assert_allclose(out["log_prob"]["data"], score["log_prob"], rtol=1e-6)
    np.testing.assert_allclose(out["score"]["data"], score["score"], rtol=1e-6)
    np.testing.assert_allclose(out["percentile"]["data"], score["percentile"], rtol=1e-9)
    assert out["is_anomaly"]["data"] == score["is_anomaly"]
    assert out["is_anomaly"]["data"][3] is True
    assert body["parameters"] == {"fpr": 0.1, "threshold": score["threshold"]}
    encoded = client.post(
        "/models/toy/versions/1/encode", headers=AUTH, json={"inputs": x.tolist()}
    )
    np.testing.assert_allclose(np.reshape(out["z"]["data"], (7, 3)), encoded.json()["z"], rtol=1e-6)
    np.testing.assert_allclose(out["log_prob"]["data"], flow.log_prob(x), rtol=1e-4)


def test_infer_output_selection_nested_data_and_int_types(
    setup: tuple[TestClient, AffineFlow],
) -> None:
    client, _ = setup
    nested = [[1, 2, 3], [4, 5, 6]]
    body = {
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "INT32", "data": nested}],
        "outputs": [{"name": "score"}, {"name": "is_anomaly"}],
    }
    r = client.post("/v2/models/toy/infer", headers=AUTH, json=body)
    assert r.status_code == 200, r.text
    res = r.json()
    assert [o["name"] for o in res["outputs"]] == ["score", "is_anomaly"]
    assert res["model_version"] == "2"  # newest version by default
    assert "id" not in res


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"inputs": []}, 422, "one tensor named 'x'"),
        (
            {"inputs": [{"name": "y", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
            422,
            "unknown input tensor 'y'",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]},
            422,
            "expected shape [N, 3]",
        ),
        (
            {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
            422,
            "needs 6 values, data holds 3",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "BYTES", "data": ["a"] * 3}]},
            422,
            "datatype 'BYTES'",
        ),
        (
            {
                "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}],
                "outputs": [{"name": "bits"}],
            },
            422,
            "unknown output 'bits'",
        ),
        (
            {
                "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}],
                "parameters": {"fpr": 1.5},
            },
            422,
            "parameters.fpr",
        ),
    ],
)
def test_infer_errors_use_the_v2_shape(
    setup: tuple[TestClient, AffineFlow], body: dict, status: int, fragment: str
) -> None:
    client, _ = setup
    r = client.post("/v2/models/toy/infer", headers=AUTH, json=body)
    assert r.status_code == status
    error = r.json()["error"]
    assert isinstance(error, str) and fragment in error


def test_non_finite_rows_are_named(setup: tuple[TestClient, AffineFlow]) -> None:
    client, _ = setup
    content = (
        b'{"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64",'
        b' "data": [1, 2, 3, 4, NaN, 6]}]}'
    )
    r = client.post(
        "/v2/models/toy/infer",
        headers={**AUTH, "Content-Type": "application/json"},
        content=content,
    )
    assert r.status_code == 422
    assert "rows [1]" in r.json()["error"]


def test_unknown_models_auth_and_failed_versions(setup: tuple[TestClient, AffineFlow]) -> None:
    client, _ = setup
    missing = client.get("/v2/models/nope", headers=AUTH)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    no_version = client.post("/v2/models/toy/versions/9/infer", headers=AUTH, json={})
    assert no_version.status_code == 404 and "9" in no_version.json()["error"]
    unauthorized = client.post("/v2/models/toy/infer", json=_infer_body(np.zeros((1, 3))))
    assert unauthorized.status_code == 401
    assert "API key" in unauthorized.json()["error"]
    bearer = client.get("/v2/models/toy", headers={"Authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 200
    # Health stays open without a key, like /healthz.
    assert client.get("/v2/health/live").status_code == 200
    broken = client.get("/v2/models/broken/versions/1/ready", headers=AUTH)
    assert broken.status_code == 503 and broken.json() == {"name": "broken", "ready": False}
    bad_json = client.post(
        "/v2/models/toy/infer",
        headers={**AUTH, "Content-Type": "application/json"},
        content=b"{not json",
    )
    assert bad_json.status_code == 422 and isinstance(bad_json.json()["error"], str)


def test_infer_is_counted_in_metrics(setup: tuple[TestClient, AffineFlow]) -> None:
    client, _ = setup
    client.post("/v2/models/toy/infer", headers=AUTH, json=_infer_body(np.zeros((2, 3))))
    text = client.get("/metrics").text
    assert 'endpoint="v2_infer"' in text

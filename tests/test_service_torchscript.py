"""The committed default model served from its TorchScript file (``--runtime torchscript``)
answers every endpoint like the ONNX Runtime service does on the same requests.

Skipped where torch is not importable (the serving image has none).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from flowserve.service.runtime import TorchScriptFlowModel
from flowserve.service.settings import DEFAULT_MODEL_ROOT
from tests.service_fixtures import npy_bytes, npy_load, service_client

pytest.importorskip("torch")

LOG_PROB_ATOL = 1e-3
# Far outside the data log_prob is about -4e8, where float32 itself resolves only ~30 nats.
LOG_PROB_RTOL = 1e-5
NPY = "application/x-npy"


def _client(runtime: str) -> Iterator[TestClient]:
    with service_client(DEFAULT_MODEL_ROOT, runtime=runtime) as client:
        yield client


@pytest.fixture(scope="module")
def onnx() -> Iterator[TestClient]:
    yield from _client("onnx")


@pytest.fixture(scope="module")
def torchscript() -> Iterator[TestClient]:
    yield from _client("torchscript")


@pytest.fixture(scope="module")
def rows(onnx: TestClient) -> np.ndarray:
    """Realistic sensor rows (drawn from the model) plus a few far outside the data."""
    drawn = np.array(onnx.post("/sample", json={"n": 29, "seed": 11}).json()["samples"])
    odd = np.array([[0.0, 0.0, 0.0, 0.0], [5000.0, 120.0, 9.0, 30.0], [-100.0, -40.0, 0.1, 0.0]])
    return np.concatenate([drawn, odd]).astype(np.float32)


def relative_to_feature_scale(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / scale))


@pytest.fixture(scope="module")
def feature_scale(rows: np.ndarray) -> np.ndarray:
    # speed is in the thousands of rpm, vibration in single mm/s: compare per feature scale
    return rows[:29].std(axis=0)


def test_read_only_rows_need_no_copy_warning() -> None:
    # First in this module: torch warns about a read-only array once per process only.
    model = TorchScriptFlowModel(DEFAULT_MODEL_ROOT / "sensors" / "1")
    rows = np.zeros((3, 4), np.float32)
    rows.flags.writeable = False  # as .npy request bodies arrive
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lp = model.log_prob(rows)
        x = model.decode(rows)
    assert lp.shape == (3,) and x.shape == (3, 4)


def test_models_reports_the_runtime(onnx: TestClient, torchscript: TestClient) -> None:
    for client, runtime in ((onnx, "onnxruntime"), (torchscript, "torchscript")):
        (model,) = client.get("/models").json()["models"]
        assert model["name"] == "sensors"
        assert [v["runtime"] for v in model["versions"]] == [runtime]
        assert client.get("/models/sensors/versions/1").json()["runtime"] == runtime
    meta = torchscript.get("/v2/models/sensors").json()
    assert meta["platform"] == "pytorch_torchscript"


def test_log_prob_matches(onnx: TestClient, torchscript: TestClient, rows: np.ndarray) -> None:
    body = {"inputs": rows.tolist()}
    a = onnx.post("/log_prob", json=body).json()
    b = torchscript.post("/log_prob", json=body).json()
    assert (b["model"], b["version"]) == ("sensors", 1)
    assert np.isfinite(b["log_prob"]).all()
    np.testing.assert_allclose(b["log_prob"], a["log_prob"], atol=LOG_PROB_ATOL, rtol=LOG_PROB_RTOL)


def test_binary_log_prob_matches(
    onnx: TestClient, torchscript: TestClient, rows: np.ndarray
) -> None:
    headers = {"Content-Type": NPY, "Accept": NPY}
    # a read-only buffer, as the service's .npy decoding hands out, must be fine for torch too
    a = npy_load(onnx.post("/log_prob", content=npy_bytes(rows), headers=headers).content)
    r = torchscript.post("/log_prob", content=npy_bytes(rows), headers=headers)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(npy_load(r.content), a, atol=LOG_PROB_ATOL, rtol=LOG_PROB_RTOL)


def test_score_matches(onnx: TestClient, torchscript: TestClient, rows: np.ndarray) -> None:
    body = {"inputs": rows.tolist(), "fpr": 0.01}
    a = onnx.post("/score", json=body).json()
    b = torchscript.post("/score", json=body).json()
    assert (b["fpr"], b["threshold"]) == (a["fpr"], a["threshold"])
    np.testing.assert_allclose(b["score"], a["score"], atol=LOG_PROB_ATOL, rtol=LOG_PROB_RTOL)
    np.testing.assert_allclose(b["percentile"], a["percentile"], atol=0.5)
    # rows within the tolerance of the threshold may flip; there are none here
    assert np.min(np.abs(np.array(a["log_prob"]) - a["threshold"])) > LOG_PROB_ATOL
    assert b["is_anomaly"] == a["is_anomaly"]
    assert any(a["is_anomaly"][-3:])  # the far rows are anomalies


def test_encode_decode_match_and_round_trip(
    onnx: TestClient, torchscript: TestClient, rows: np.ndarray, feature_scale: np.ndarray
) -> None:
    body = {"inputs": rows[:29].tolist()}
    a = onnx.post("/encode", json=body).json()
    b = torchscript.post("/encode", json=body).json()
    np.testing.assert_allclose(b["z"], a["z"], atol=1e-3)
    np.testing.assert_allclose(b["log_det"], a["log_det"], atol=LOG_PROB_ATOL)
    back = torchscript.post("/decode", json={"inputs": b["z"]}).json()["x"]
    assert relative_to_feature_scale(back, rows[:29], feature_scale) < 1e-3
    # each runtime decodes the other's latents to the same rows
    cross = onnx.post("/decode", json={"inputs": b["z"]}).json()["x"]
    assert relative_to_feature_scale(cross, back, feature_scale) < 1e-3


def test_sample_same_seed_same_rows(
    onnx: TestClient, torchscript: TestClient, feature_scale: np.ndarray
) -> None:
    for body in ({"n": 16, "seed": 3}, {"n": 5, "seed": 123, "temperature": 0.5}):
        a = np.array(onnx.post("/sample", json=body).json()["samples"])
        b = np.array(torchscript.post("/sample", json=body).json()["samples"])
        again = np.array(torchscript.post("/sample", json=body).json()["samples"])
        assert b.shape == (body["n"], 4)
        np.testing.assert_array_equal(again, b)
        assert relative_to_feature_scale(b, a, feature_scale) < 1e-3
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3)
    binary = torchscript.post("/sample", json={"n": 16, "seed": 3}, headers={"Accept": NPY})
    np.testing.assert_array_equal(
        npy_load(binary.content),
        # JSON carries float32 values in their shortest form
        np.array(
            torchscript.post("/sample", json={"n": 16, "seed": 3}).json()["samples"], np.float32
        ),
    )


def test_bad_input_is_refused_the_same_way(onnx: TestClient, torchscript: TestClient) -> None:
    for body in ({"inputs": [[1.0, 2.0]]}, {"inputs": [[float("nan")] * 4]}):
        a = onnx.post(
            "/log_prob", content=_json(body), headers={"Content-Type": "application/json"}
        )
        b = torchscript.post(
            "/log_prob", content=_json(body), headers={"Content-Type": "application/json"}
        )
        assert a.status_code == b.status_code == 422
        assert a.json()["error"]["code"] == b.json()["error"]["code"] == "invalid_input"


def _json(body: object) -> bytes:
    import json

    return json.dumps(body).encode()  # NaN as the bare token, as a careless client sends it

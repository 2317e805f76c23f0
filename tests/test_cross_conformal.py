"""Cross-conformal calibration through the whole pipeline: the estimator's fold models, the
artifact's score graph, and the same p-values and flags from /score, binary /score, V2 infer,
bulk scoring and the estimator, on in- and out-of-distribution rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from flowserve.graphs import FORWARD, SCORE, onnx_session
from flowserve.models.estimator import FlowDensityEstimator
from flowserve.service.bulk import score_frame
from flowserve.service.runtime import load_flow_model
from tests.helpers import two_moons
from tests.service_fixtures import npy_bytes, npy_load, service_client

FPR = 0.1


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[FlowDensityEstimator, Path]:
    est = FlowDensityEstimator("maf", layers=2, hidden=16, epochs=6, seed=0, fpr=FPR)
    est.fit(two_moons(400, seed=0))
    root = tmp_path_factory.mktemp("models")
    result = est.export(root, "moons", torchscript=False)
    return est, result.artifact_dir


@pytest.fixture(scope="module")
def client(fitted: tuple[FlowDensityEstimator, Path]) -> Iterator[TestClient]:
    with service_client(fitted[1].parent.parent) as c:
        yield c


def _rows() -> np.ndarray:
    x = two_moons(60, seed=7)
    far = x[:10] * 4.0 + np.array([3.0, -2.0])  # out of distribution
    return np.concatenate([x, far]).astype(np.float32)


def test_small_tables_ship_fold_models_in_a_score_graph(
    fitted: tuple[FlowDensityEstimator, Path],
) -> None:
    est, directory = fitted
    manifest = load_flow_model(directory).manifest
    cal = manifest.calibration
    assert cal.method == "cross-fit" and cal.folds == est.calibration_.folds >= 2
    assert manifest.graphs["score"] == SCORE.file and manifest.schema_minor == 1
    assert (
        cal.n_rows
        == est.calibration_.n_rows
        == len(cal.cross_fit.served) + sum(len(f) for f in cal.cross_fit.folds)
    )
    x = _rows()
    lp, folds = onnx_session(directory / SCORE.file).run(list(SCORE.outputs), {"x": x})
    (forward_lp,) = onnx_session(directory / FORWARD.file).run(["log_prob"], {"x": x})
    np.testing.assert_allclose(lp, forward_lp, atol=1e-4, rtol=1e-5)  # the served column
    assert folds.shape == (len(x), cal.folds)
    # fold models are other models: their log-likelihoods differ from the served one's
    assert np.all(np.abs(folds - lp[:, None]).max(axis=0) > 1e-3)


def test_the_estimator_and_the_artifact_give_the_same_p_values(
    fitted: tuple[FlowDensityEstimator, Path],
) -> None:
    est, directory = fitted
    x = _rows()
    served = load_flow_model(directory).score(x, FPR)
    p = est.p_values(x)
    # torch and ONNX Runtime agree within parity, so a p-value moves by a rank at most
    assert np.max(np.abs(served.p_value - p)) <= 2.0 / (est.calibration_.n_rows + 1)
    assert np.mean(served.is_anomaly == est.predict(x).astype(bool)) >= 0.95
    assert served.is_anomaly[-10:].all() and est.predict(x)[-10:].all()  # far rows flagged
    assert np.array_equal(served.is_anomaly, served.p_value <= FPR)


def test_every_serving_path_gives_the_same_p_values_and_flags(
    fitted: tuple[FlowDensityEstimator, Path], client: TestClient
) -> None:
    _, directory = fitted
    x = _rows()
    direct = load_flow_model(directory).score(x, FPR)
    r = client.post("/models/moons/score", json={"inputs": x.tolist(), "fpr": FPR})
    assert r.status_code == 200, r.text
    body = r.json()
    np.testing.assert_allclose(body["p_value"], direct.p_value, rtol=1e-12)
    assert body["is_anomaly"] == direct.is_anomaly.tolist()
    binary = client.post(
        "/models/moons/score?fpr=0.1&columns=p_value,is_anomaly",
        content=npy_bytes(x),
        headers={"content-type": "application/x-npy", "accept": "application/x-npy"},
    )
    assert binary.status_code == 200, binary.text
    table = npy_load(binary.content)
    np.testing.assert_allclose(table[:, 0], direct.p_value, rtol=1e-6)
    assert table[:, 1].astype(bool).tolist() == direct.is_anomaly.tolist()
    v2 = client.post(
        "/v2/models/moons/infer",
        json={
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ],
            "parameters": {"fpr": FPR},
        },
    )
    assert v2.status_code == 200, v2.text
    out = {o["name"]: o["data"] for o in v2.json()["outputs"]}
    np.testing.assert_allclose(out["p_value"], direct.p_value, rtol=1e-12)
    assert out["is_anomaly"] == direct.is_anomaly.tolist()
    # without z among the outputs, the score graph alone answers (one graph call): same numbers
    calls = _graph_calls(client)
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    only = client.post(
        "/v2/models/moons/infer",
        json={
            "inputs": [tensor],
            "outputs": [{"name": "p_value"}, {"name": "log_prob"}],
            "parameters": {"fpr": FPR},
        },
    ).json()
    assert _graph_calls(client) == calls + 1
    got = {o["name"]: o["data"] for o in only["outputs"]}
    np.testing.assert_allclose(got["p_value"], direct.p_value, rtol=1e-12)
    np.testing.assert_allclose(got["log_prob"], out["log_prob"], rtol=1e-6)
    names = load_flow_model(directory).manifest.feature_names
    frame = pd.DataFrame(x, columns=names)
    frame.loc[3, names[0]] = np.inf  # a non-finite row is flagged, never scored as normal
    bulk = score_frame(frame, directory, fpr=FPR, errors="coerce")
    keep = np.arange(len(x)) != 3
    np.testing.assert_allclose(bulk["p_value"].to_numpy()[keep], direct.p_value[keep])
    assert bulk["is_anomaly"].tolist()[3] is True
    assert bulk["is_anomaly"].to_numpy()[keep].tolist() == direct.is_anomaly[keep].tolist()


def _graph_calls(client: TestClient) -> int:
    """The model's graph executions so far (V2 statistics)."""
    stats = client.get("/v2/models/moons/stats").json()["model_stats"]
    return sum(int(m["execution_count"]) for m in stats)


def test_models_shows_the_folds(client: TestClient) -> None:
    cal = client.get("/models/moons/versions/1").json()["calibration"]
    assert cal["method"] == "cross-fit" and cal["folds"] >= 2
    assert cal["min_fpr"] == pytest.approx(1 / (cal["n_rows"] + 1))


def test_a_corrupted_score_graph_is_refused_at_load(
    fitted: tuple[FlowDensityEstimator, Path], tmp_path: Path
) -> None:
    import shutil

    from flowserve.artifact import ArtifactError

    copy = tmp_path / "moons" / "1"
    shutil.copytree(fitted[1], copy)
    (copy / SCORE.file).write_bytes(b"not onnx")
    with pytest.raises(ArtifactError, match=r"score\.onnx"):
        load_flow_model(copy)

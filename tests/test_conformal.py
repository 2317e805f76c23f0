"""Conformal calibration: p-values, thresholds, the finite-sample guarantee, BH selection, and
what /score, binary /score and /models serve from them (no torch needed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from flowserve import conformal
from flowserve.artifact import (
    MAX_STORED_SCORES,
    Calibration,
    calibration_levels,
    load_manifest,
    write_manifest,
)
from tests.service_fixtures import (
    AffineFlow,
    affine_flow,
    build_affine_artifact,
    npy_bytes,
    npy_load,
    service_client,
)


def _brute_p(cal_scores: np.ndarray, s: float) -> float:
    return (1 + np.sum(cal_scores >= s)) / (len(cal_scores) + 1)


def test_p_values_follow_the_formula() -> None:
    rng = np.random.default_rng(0)
    lp = rng.normal(-3.0, 1.0, 57)
    cal = Calibration.from_log_probs(lp, default_fpr=0.1, method="split")
    rows = np.concatenate([rng.normal(-3.0, 2.0, 200), lp[:5], [np.nan, -np.inf]])
    p = cal.p_values(rows)
    expected = [_brute_p(-lp, -v) for v in rows[:-2]]
    np.testing.assert_allclose(p[:-2], expected)
    assert p[-2] == 0.0  # NaN log-likelihood: the most anomalous
    assert p[-1] == pytest.approx(1 / 58)  # -inf: beyond every calibration score
    assert cal.method == "split" and cal.n_rows == 57 and cal.exact


@pytest.mark.parametrize("fpr", [0.02, 0.05, 0.1, 0.37])
def test_threshold_flags_exactly_the_rows_with_p_at_most_fpr(fpr: float) -> None:
    rng = np.random.default_rng(1)
    cal = Calibration.from_log_probs(rng.normal(size=99))
    rows = rng.normal(size=5000)
    flagged = rows < cal.threshold_for(fpr)
    np.testing.assert_array_equal(flagged, cal.p_values(rows) <= fpr)


def test_false_positive_rate_holds_in_finite_samples() -> None:
    # Many small calibration sets (n = 19) and fresh normal rows from the same law: the flag rate
    # at fpr is floor(fpr * 20) / 20 <= fpr on average, never the 2x of a plug-in quantile.
    rng = np.random.default_rng(2)
    rates = {0.05: [], 0.1: [], 0.2: []}
    for _ in range(400):
        cal = Calibration.from_log_probs(rng.normal(size=19), default_fpr=0.05)
        fresh = rng.normal(size=50)
        for fpr, seen in rates.items():
            seen.append(np.mean(fresh < cal.threshold_for(fpr)))
    for fpr, seen in rates.items():
        mean = float(np.mean(seen))
        # the exact expectation is floor(fpr * 20) / 20 = fpr here; 400 x 50 rows: +-0.01
        assert abs(mean - fpr) < 0.012, (fpr, mean)


def test_min_fpr_is_refused_below_and_allowed_at() -> None:
    cal = Calibration.from_log_probs(-np.arange(1.0, 19.0), default_fpr=0.2)  # n = 18
    assert cal.min_fpr == pytest.approx(1 / 19)
    with pytest.raises(ValueError, match=r"smallest attainable.*1/\(n\+1\) = 0.0526316.*18"):
        cal.threshold_for(0.05)
    # exactly 1/(n+1) is attainable: only rows beyond the largest calibration score
    assert cal.threshold_for(1 / 19) == -18.0


def test_default_fpr_below_the_minimum_is_raised_to_it(caplog: pytest.LogCaptureFixture) -> None:
    cal = Calibration.from_log_probs(np.linspace(-5, -1, 18), default_fpr=0.01)
    assert cal.default_fpr == pytest.approx(1 / 19)
    assert cal.threshold == cal.threshold_for(cal.default_fpr)
    assert "below the attainable minimum" in caplog.text


def test_large_calibration_keeps_the_tail_exact() -> None:
    rng = np.random.default_rng(3)
    lp = rng.normal(size=30_000)
    cal = Calibration.from_log_probs(lp)
    assert cal.n_rows == 30_000 and len(cal.scores or []) == MAX_STORED_SCORES
    rows = rng.normal(size=3000)
    p = cal.p_values(rows)
    brute = (1 + np.sum((-lp)[None, :] >= -rows[:, None], axis=1)) / 30_001
    tail = brute <= MAX_STORED_SCORES / 30_001
    np.testing.assert_allclose(p[tail], brute[tail])
    # beyond the stored tail, the quantile grid (201 levels) is within its resolution
    assert np.max(np.abs(p[~tail] - brute[~tail])) < 0.006
    assert cal.threshold_for(0.01) == pytest.approx(np.sort(lp)[299])


def test_manifest_without_scores_still_reads() -> None:
    # What an old manifest holds: quantiles only. p-values come from the grid.
    lp = np.random.default_rng(4).normal(size=500)
    levels = calibration_levels()
    old = Calibration(
        levels=levels,
        log_prob_quantiles=np.quantile(lp, levels).tolist(),
        n_rows=500,
        threshold=float(np.quantile(lp, 0.01)),
    )
    assert old.method == "holdout" and not old.exact
    p = old.p_values(np.array([-10.0, 0.0, 10.0]))
    assert p[0] == pytest.approx(1 / 501) and p[1] == pytest.approx(0.5, abs=0.05) and p[2] == 1
    assert old.threshold_for(0.05) == pytest.approx(np.quantile(lp, 0.05), abs=0.02)


def test_benjamini_hochberg() -> None:
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    # k = 2: p_(2) = 0.008 <= 2 * 0.05 / 10; p_(3) = 0.039 > 0.015; no later p_(k) <= k/200
    np.testing.assert_array_equal(conformal.benjamini_hochberg(p, 0.05), [1, 1] + [0] * 8)
    # at 0.2, k = 7 (0.074 <= 7 * 0.02); p_(8) = 0.205 > 0.16 and the later ones exceed theirs
    assert conformal.benjamini_hochberg(p, 0.2).sum() == 7
    shuffled = np.random.default_rng(0).permutation(len(p))
    assert (
        conformal.benjamini_hochberg(p[shuffled], 0.2)
        == conformal.benjamini_hochberg(p, 0.2)[shuffled]
    ).all()
    assert not conformal.benjamini_hochberg(np.array([]), 0.1).any()


# -- the service ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AffineFlow]:
    root = tmp_path_factory.mktemp("models")
    _, flow = build_affine_artifact(root, "toy", 1, affine_flow(3, seed=0))
    small, _ = build_affine_artifact(root, "small", 1, affine_flow(3, seed=0))
    # A version calibrated on 19 rows: the lowest attainable rate is 1/20.
    manifest = load_manifest(small)
    cal = Calibration.from_log_probs(flow.log_prob(flow.sample(19, seed=5)), 0.1, "split")
    write_manifest(small, manifest.model_copy(update={"calibration": cal}))
    return root, flow


@pytest.fixture(scope="module")
def client(repo: tuple[Path, AffineFlow]) -> Iterator[TestClient]:
    with service_client(repo[0], default_model="toy") as c:
        yield c


def test_score_returns_conformal_p_values(client: TestClient, repo) -> None:
    root, flow = repo
    cal = load_manifest(root / "toy" / "1").calibration
    x = np.concatenate([flow.sample(30, seed=9), [[50.0, -50.0, 50.0]]])
    r = client.post("/score", json={"inputs": x.tolist(), "fpr": 0.1}).json()
    np.testing.assert_allclose(r["p_value"], cal.p_values(np.array(r["log_prob"])), rtol=1e-12)
    assert r["is_anomaly"] == [p <= 0.1 for p in r["p_value"]]
    assert r["p_value"][-1] == pytest.approx(1 / 2001) and "fdr_selected" not in r


def test_score_with_fdr_selects_by_benjamini_hochberg(client: TestClient, repo) -> None:
    _, flow = repo
    x = np.concatenate([flow.sample(40, seed=10), flow.sample(10, seed=11) * 8.0])
    r = client.post("/score", json={"inputs": x.tolist(), "fdr": 0.1}).json()
    assert r["fdr"] == 0.1
    assert r["fdr_selected"] == conformal.benjamini_hochberg(np.array(r["p_value"]), 0.1).tolist()
    assert sum(r["fdr_selected"][40:]) >= 8 and sum(r["fdr_selected"][:40]) <= 2
    q = client.post("/score?fdr=0.1", json={"inputs": x.tolist()}).json()
    assert q["fdr_selected"] == r["fdr_selected"]
    bad = client.post("/score", json={"inputs": x.tolist(), "fdr": 1.5})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "fdr"


def test_fpr_below_the_attainable_minimum_is_a_422_naming_it(client: TestClient, repo) -> None:
    _, flow = repo
    rows = flow.sample(3, seed=12).tolist()
    r = client.post("/models/small/score", json={"inputs": rows, "fpr": 0.01})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "out_of_range" and err["field"] == "fpr"
    assert err["min_fpr"] == pytest.approx(0.05) and err["n_rows"] == 19
    assert "0.05" in err["message"] and "19 calibration rows" in err["message"]
    ok = client.post("/models/small/score", json={"inputs": rows, "fpr": 0.05})
    assert ok.status_code == 200
    v2 = client.post(
        "/v2/models/small/infer",
        json={
            "inputs": [{"name": "x", "datatype": "FP64", "shape": [3, 3], "data": rows}],
            "parameters": {"fpr": 0.01},
        },
    )
    assert v2.status_code == 422 and "attainable" in v2.json()["error"]


def test_models_shows_n_method_and_attainable_rate(client: TestClient) -> None:
    info = client.get("/models/small").json()["versions"][0]["calibration"]
    assert info["n_rows"] == 19 and info["method"] == "split" and info["exact"] is True
    assert info["min_fpr"] == pytest.approx(0.05) and info["default_fpr"] == 0.1


def test_binary_score_columns(client: TestClient, repo) -> None:
    _, flow = repo
    x = flow.sample(20, seed=13).astype(np.float32)
    headers = {"content-type": "application/x-npy", "accept": "application/x-npy"}
    plain = client.post("/score", content=npy_bytes(x), headers=headers)
    assert plain.headers["x-flowserve-columns"] == "log_prob,percentile,is_anomaly"
    assert npy_load(plain.content).shape == (20, 3)
    r = client.post(
        "/score?columns=log_prob,p_value,fdr_selected&fdr=0.2",
        content=npy_bytes(x),
        headers=headers,
    )
    table = npy_load(r.content)
    js = client.post("/score", json={"inputs": x.tolist(), "fdr": 0.2}).json()
    np.testing.assert_allclose(table[:, 1], js["p_value"], rtol=1e-6)
    assert table[:, 2].astype(bool).tolist() == js["fdr_selected"]
    bad = client.post("/score?columns=p_value,nope", content=npy_bytes(x), headers=headers)
    assert bad.status_code == 422 and "nope" in bad.json()["error"]["message"]
    no_fdr = client.post("/score?columns=fdr_selected", content=npy_bytes(x), headers=headers)
    assert no_fdr.status_code == 422 and "needs fdr" in no_fdr.json()["error"]["message"]


def test_client_reads_p_values_and_fdr_from_json_and_binary(client: TestClient, repo) -> None:
    import flowserve_client as fc

    _, flow = repo
    x = np.concatenate([flow.sample(40, seed=14), flow.sample(5, seed=15) * 8.0])
    fs = fc.FlowClient("http://testserver", transport=client._transport, binary_threshold=None)
    with fs:
        by_json = fs.score(x, fpr=0.1, fdr=0.1)
        fs.binary_threshold = 0
        by_npy = fs.score(x, fpr=0.1, fdr=0.1)
        with pytest.raises(fc.InvalidInput) as info:
            fc.FlowClient("http://testserver", transport=client._transport, model="small").score(
                x, fpr=0.01
            )
    assert by_json.p_value is not None and by_npy.p_value is not None
    np.testing.assert_allclose(by_npy.p_value, by_json.p_value, rtol=1e-6)
    np.testing.assert_array_equal(by_npy.is_anomaly, by_json.p_value <= 0.1)
    assert by_json.fdr == by_npy.fdr == 0.1
    np.testing.assert_array_equal(by_npy.fdr_selected, by_json.fdr_selected)
    assert list(by_json.to_frame().columns) == [
        "log_prob", "score", "percentile", "p_value", "is_anomaly", "fdr_selected"
    ]  # fmt: skip
    assert info.value.code == "out_of_range" and info.value.details["min_fpr"] == 0.05

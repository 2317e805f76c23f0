"""Per-feature explanations: the Shapley maths, and /explain on flows whose answers have a closed
form (the affine test flow's score is a sum of per-feature terms), via HTTP and the client."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import flowserve_client as fc
from flowserve.service import explain
from tests.service_fixtures import AffineFlow, affine_flow, build_affine_artifact, service_client


def _interacting(rows: np.ndarray) -> np.ndarray:
    """A score with interactions (a three-way one: antithetic pairs of orders split pairwise
    interactions exactly, but not this)."""
    return rows[:, 0] * rows[:, 1] * rows[:, 2] + np.sin(rows[:, 2]) * rows[:, 0] + rows[:, 3] ** 2


def _brute_shapley(x: np.ndarray, b: np.ndarray, score) -> np.ndarray:
    """The textbook definition: average marginal gain over all orders."""
    dim = len(x)
    total = np.zeros(dim)
    for order in itertools.permutations(range(dim)):
        h = b.copy()
        prev = score(h[None])[0]
        for j in order:
            h[j] = x[j]
            now = score(h[None])[0]
            total[j] += now - prev
            prev = now
    return total / math.factorial(dim)


def test_exact_shapley_matches_the_definition_and_sums_to_the_score_gap() -> None:
    rng = np.random.default_rng(0)
    x, b = rng.normal(size=(3, 4)), rng.normal(size=4)
    phi = explain.shapley_exact(x, b, _interacting)
    for i in range(3):
        np.testing.assert_allclose(phi[i], _brute_shapley(x[i], b, _interacting), atol=1e-12)
    np.testing.assert_allclose(phi.sum(axis=1), _interacting(x) - _interacting(b[None]))


def test_sampled_shapley_sums_exactly_and_approaches_the_exact_values() -> None:
    rng = np.random.default_rng(1)
    x, b = rng.normal(size=(2, 4)), rng.normal(size=4)
    exact = explain.shapley_exact(x, b, _interacting)
    few = explain.shapley_sampled(x, b, _interacting, permutations=3, seed=0)
    many = explain.shapley_sampled(x, b, _interacting, permutations=400, seed=0)
    gap = _interacting(x) - _interacting(b[None])
    np.testing.assert_allclose(few.sum(axis=1), gap, atol=1e-12)  # every order sums exactly
    # more orders, closer (3 orders: 8e-3 off; 400: 1e-4)
    assert np.abs(many - exact).max() < 1e-3 < np.abs(few - exact).max()
    same = explain.shapley_sampled(x, b, _interacting, permutations=3, seed=0)
    np.testing.assert_array_equal(few, same)  # reproducible by seed


# -- the service ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AffineFlow, AffineFlow]:
    root = tmp_path_factory.mktemp("models")
    _, small = build_affine_artifact(root, "toy", 1, affine_flow(3, seed=0))
    _, wide = build_affine_artifact(root, "wide", 1, affine_flow(12, seed=3))
    return root, small, wide


@pytest.fixture(scope="module")
def client(repo) -> Iterator[TestClient]:
    with service_client(repo[0], default_model="toy") as c:
        yield c


def _terms(flow: AffineFlow, x: np.ndarray) -> np.ndarray:
    """Per-feature anomaly-score terms of the affine flow: score(x) = sum_j terms[:, j]."""
    loc = flow.mean - flow.std * flow.b / flow.a
    scale = flow.std / np.abs(flow.a)
    u = (np.asarray(x, np.float64) - loc) / scale
    return 0.5 * u**2 + np.log(scale) + 0.5 * math.log(2 * math.pi)


def test_explain_is_exact_on_an_additive_density(client: TestClient, repo) -> None:
    _, flow, _ = repo
    x = flow.sample(5, seed=1)
    x[0, 1] += 20.0  # one feature far off
    r = client.post("/explain", json={"inputs": x.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "shapley_exact" and body["permutations"] is None
    assert body["feature_names"] == flow.feature_names
    centre = flow.decode(np.zeros((1, 3)))[0]  # the default baseline: decode(0)
    np.testing.assert_allclose(body["baseline"], centre, rtol=1e-5, atol=1e-5)
    expected = _terms(flow, x) - _terms(flow, np.array(body["baseline"])[None])
    contributions = np.array(body["contributions"])
    np.testing.assert_allclose(contributions, expected, rtol=1e-4, atol=1e-3)
    gap = np.array(body["score"]) - body["baseline_score"]
    np.testing.assert_allclose(contributions.sum(axis=1), gap, rtol=1e-6, atol=1e-4)
    assert np.argmax(contributions[0]) == 1  # the shifted feature carries the anomaly


def test_explain_sampled_above_ten_features_and_a_named_baseline(client, repo) -> None:
    _, _, wide = repo
    x = wide.sample(2, seed=2)
    baseline = dict(zip(wide.feature_names, wide.sample(1, seed=3)[0].tolist(), strict=True))
    body = client.post(
        "/models/wide/explain",
        json={"inputs": x.tolist(), "baseline": baseline, "permutations": 4, "seed": 7},
    ).json()
    assert body["kind"] == "shapley_sampled" and body["permutations"] == 4
    b = np.array([baseline[n] for n in wide.feature_names])
    # additive: every order gives each feature the same gain, so even a sample is exact
    expected = _terms(wide, x) - _terms(wide, b[None])
    np.testing.assert_allclose(body["contributions"], expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"inputs": [[0.0, 0.0, 0.0]], "baseline": [1.0]}, 422, "baseline"),
        ({"inputs": [[0.0, 0.0, 0.0]], "baseline": [0.0, float("nan"), 0.0]}, 422, "baseline"),
        ({"inputs": [[0.0, 0.0, 0.0]], "permutations": 0}, 422, "permutations"),
        ({"inputs": [[0.0, 0.0, 0.0]], "seed": -1}, 422, "seed"),
        ({"inputs": [[0.0, 0.0, 0.0]], "fpr": 0.1}, 422, "unknown fields"),
    ],
)
def test_explain_rejects_bad_options(client: TestClient, payload, status, needle) -> None:
    import json

    r = client.post(
        "/explain",
        content=json.dumps(payload, allow_nan=True),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == status and needle in r.json()["error"]["message"], r.text


def test_explain_bounds_the_work_of_one_request(client: TestClient, repo) -> None:
    _, _, wide = repo
    rows = wide.sample(160, seed=4).tolist()  # 160 x 2 x 256 x 13 hybrids > 2**20
    r = client.post("/models/wide/explain", json={"inputs": rows, "permutations": 256})
    assert r.status_code == 413 and "fewer permutations" in r.json()["error"]["message"]


def test_client_explain(client: TestClient, repo) -> None:
    _, flow, _ = repo
    x = flow.sample(3, seed=5)
    with fc.FlowClient("http://testserver", transport=client._transport) as fs:
        e = fs.explain(x, baseline=np.zeros(3))
    assert isinstance(e, fc.Explanation) and len(e) == 3 and e.kind == "shapley_exact"
    np.testing.assert_allclose(e.baseline, 0.0)
    np.testing.assert_allclose(
        e.contributions, _terms(flow, x) - _terms(flow, np.zeros((1, 3))), rtol=1e-4, atol=1e-3
    )
    assert list(e.to_frame().columns) == flow.feature_names

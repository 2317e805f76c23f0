"""Circle, torus and sphere through the whole pipeline: train(), export, the served ONNX graphs
and the HTTP service.

The integrals run through the served graphs (``load_flow_model``, what the service executes) on
periodic grids. The trained densities are continuous and piecewise smooth (rational-quadratic
splines, C1 at the knots), so the midpoint rule converges as O(h^2): each test also checks that
halving the step changes the integral by less than 2e-3, which bounds the error of the finer grid
well below the 1% the check allows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from flowserve.artifact import load_manifest
from flowserve.models.data import DataError
from flowserve.models.training import train
from flowserve.service.runtime import FlowModel, load_flow_model
from tests.service_fixtures import service_client

TRAIN: dict[str, Any] = {
    "epochs": 8,
    "lr": 1e-2,
    "layers": 2,
    "hidden": 16,
    "val_fraction": 0.1,
    "progress": False,
}


def _angles(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres, kappas = [1.0, -2.0][:dim], [4.0, 2.0][:dim]
    return np.stack([rng.vonmises(c, k, n) for c, k in zip(centres, kappas, strict=True)], 1)


def _unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, 3)) + np.array([0.0, 0.0, 2.0])
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("manifold")
    train(_angles(600, 1, 0), family="circle", name="circle", out=out, **TRAIN)
    train(_angles(600, 2, 1), family="circle", name="torus", out=out, **TRAIN)
    train(_unit_vectors(600, 2), family="sphere", name="sphere", out=out, **TRAIN)
    return out


@pytest.fixture(scope="module")
def client(root: Path) -> Iterator[TestClient]:
    with service_client(root, default_model="sphere") as c:
        yield c


def _served(root: Path, name: str) -> FlowModel:
    return load_flow_model(root / name / "1")


def _midpoints(n: int, lo: float, hi: float) -> np.ndarray:
    return lo + (np.arange(n) + 0.5) * (hi - lo) / n


def _torus_integral(model: FlowModel, n: int) -> tuple[float, np.ndarray]:
    g = _midpoints(n, -math.pi, math.pi)
    if model.dim == 1:
        p = np.exp(model.log_prob(g[:, None]).astype(np.float64))
        return float(p.sum() * (2 * math.pi / n)), p
    a, b = np.meshgrid(g, g, indexing="ij")
    p = np.exp(model.log_prob(np.stack([a.ravel(), b.ravel()], 1)).astype(np.float64))
    return float(p.sum() * (2 * math.pi / n) ** 2), p


def _sphere_integral(model: FlowModel, n: int) -> tuple[float, np.ndarray]:
    # Archimedes: (phi, h) -> (sqrt(1 - h^2) cos phi, sqrt(1 - h^2) sin phi, h) preserves area,
    # so dA = dphi dh on [-pi, pi) x [-1, 1].
    phi, h = np.meshgrid(_midpoints(n, -math.pi, math.pi), _midpoints(n, -1.0, 1.0))
    r = np.sqrt(1 - h * h)
    rows = np.stack([r * np.cos(phi), r * np.sin(phi), h], -1).reshape(-1, 3)
    p = np.exp(model.log_prob(rows).astype(np.float64))
    return float(p.sum() * (2 * math.pi / n) * (2.0 / n)), p


@pytest.mark.parametrize("name", ["circle", "torus"])
def test_torus_density_integrates_to_one_through_served_graphs(root: Path, name: str) -> None:
    model = _served(root, name)
    n = 4096 if model.dim == 1 else 384
    coarse, _ = _torus_integral(model, n // 2)
    fine, p = _torus_integral(model, n)
    assert p.max() / p.min() > 3.0  # trained: far from the uniform base
    assert abs(fine - coarse) < 2e-3
    assert fine == pytest.approx(1.0, abs=0.01)


def test_sphere_density_integrates_to_one_through_served_graphs(root: Path) -> None:
    model = _served(root, "sphere")
    coarse, _ = _sphere_integral(model, 192)
    fine, p = _sphere_integral(model, 384)
    assert p.max() / p.min() > 3.0
    assert abs(fine - coarse) < 2e-3
    assert fine == pytest.approx(1.0, abs=0.01)


def test_manifests_declare_data_kind_and_base(root: Path) -> None:
    for name, kind, base in [
        ("circle", "angle", "uniform"),
        ("torus", "angle", "uniform"),
        ("sphere", "unit_vector", "sphere"),
    ]:
        m = load_manifest(root / name / "1")
        assert (m.preprocessing.data_kind, m.base.kind) == (kind, base)
        assert m.preprocessing.standardize_mean is None  # never standardized
        assert set(m.parity.checked_rows) == {"heldout", "fresh", "ood"}


def test_angles_are_equal_mod_two_pi(root: Path) -> None:
    model = _served(root, "torus")
    x = _angles(50, 2, 7)
    shifted = x + 2 * math.pi * np.array([[3.0, -2.0]])
    np.testing.assert_allclose(model.log_prob(shifted), model.log_prob(x), atol=2e-3)


def test_off_sphere_rows_are_refused_and_scored_impossible(root: Path, client: TestClient) -> None:
    v = _unit_vectors(3, 5)
    ok = client.post("/log_prob", json={"inputs": v.tolist()})
    assert ok.status_code == 200
    for bad in (1e4 * v[0], np.zeros(3), 1.01 * v[0]):
        rows = [v[1].tolist(), bad.tolist()]
        for path in ("/log_prob", "/score", "/encode"):
            r = client.post(path, json={"inputs": rows})
            assert r.status_code == 422, path
            err = r.json()["error"]
            assert err["rows"] == [1] and "off the sphere" in err["message"]
    # In-process and bulk callers get -inf (zero density on the sphere) from the graph itself.
    lp = _served(root, "sphere").log_prob(np.stack([v[0], 1e4 * v[0], np.zeros(3)]))
    assert np.isfinite(lp[0]) and np.all(lp[1:] == -np.inf)
    # Within the documented tolerance (|norm - 1| <= 1e-3) a row is scored as its projection.
    near = client.post("/log_prob", json={"inputs": [(v[0] * (1 + 5e-4)).tolist()]})
    assert near.json()["log_prob"][0] == pytest.approx(ok.json()["log_prob"][0], abs=1e-3)


def test_sphere_encode_log_det_uses_the_sphere_base(client: TestClient) -> None:
    v = _unit_vectors(4, 6).tolist()
    lp = np.array(client.post("/log_prob", json={"inputs": v}).json()["log_prob"])
    enc = client.post("/encode", json={"inputs": v}).json()
    np.testing.assert_allclose(np.linalg.norm(enc["z"], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(enc["log_det"], lp + math.log(4 * math.pi), atol=1e-4)
    back = client.post("/decode", json={"inputs": enc["z"]}).json()["x"]
    np.testing.assert_allclose(back, v, atol=1e-4)


@pytest.mark.parametrize("name", ["sphere", "circle", "torus"])
def test_compact_bases_refuse_a_temperature(client: TestClient, name: str) -> None:
    url = f"/models/{name}/sample"
    r = client.post(url, json={"n": 2, "temperature": 0.5})
    assert r.status_code == 422 and r.json()["error"]["field"] == "temperature"
    samples = np.array(client.post(url, json={"n": 200, "seed": 3}).json()["samples"])
    if name == "sphere":
        np.testing.assert_allclose(np.linalg.norm(samples, axis=1), 1.0, atol=1e-5)
    else:
        assert np.all((samples >= -math.pi) & (samples < math.pi))


def test_training_refuses_rows_off_the_sphere(tmp_path: Path) -> None:
    v = _unit_vectors(100, 0)
    v[[3, 10]] *= 2.0
    with pytest.raises(DataError, match=r"2 of 100 rows are not unit vectors.*rows 3, 10"):
        train(v, family="sphere", name="bad", out=tmp_path, **TRAIN)

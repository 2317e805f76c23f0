"""Served-score drift: KS and PSI against the calibration law, and the service's drift metrics
moving when the served inputs shift (no torch needed)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from flowserve.artifact import Calibration
from flowserve.service.drift import DEFAULT_WINDOW, DriftWindow, ks_statistic, psi
from tests.service_fixtures import AffineFlow, affine_flow, build_affine_artifact, service_client


def _window_p(n_cal: int, rows: np.ndarray, cal_rows: np.ndarray) -> np.ndarray:
    return Calibration.from_log_probs(-(cal_rows[:n_cal] ** 2)).p_values(-(rows**2))


def test_ks_and_psi_are_small_without_drift_and_large_with_it() -> None:
    rng = np.random.default_rng(0)
    cal = rng.normal(size=500)
    same = _window_p(500, rng.normal(size=1000), cal)
    shifted = _window_p(500, rng.normal(size=1000) + 1.5, cal)
    crit = 1.358 * np.sqrt((500 + 1000) / (500 * 1000))
    assert ks_statistic(same, 500) < crit < ks_statistic(shifted, 500)
    assert psi(same, 500) < 0.1 and psi(shifted, 500) > 0.25


def test_ks_statistic_matches_the_two_sample_statistic() -> None:
    # p-values are a rank transform of the scores: KS against the calibration law of p-values
    # is the two-sample KS between served and calibration scores.
    rng = np.random.default_rng(1)
    cal, served = rng.normal(size=200), rng.normal(0.3, 1.0, size=300)
    p = Calibration.from_log_probs(-cal).p_values(-served)
    grid = np.sort(np.concatenate([cal, served]))
    two_sample = np.max(
        np.abs(
            np.searchsorted(np.sort(cal), grid, "right") / 200
            - np.searchsorted(np.sort(served), grid, "right") / 300
        )
    )
    assert ks_statistic(p, 200) == pytest.approx(two_sample, abs=1.5 / 201)


def test_window_keeps_the_last_rows_and_rates() -> None:
    cal = Calibration.from_log_probs(np.random.default_rng(2).normal(size=99))
    window = DriftWindow(cal, size=100)
    assert window.summary().status == "insufficient"
    window.observe(np.full(150, 0.5), np.zeros(150), 0.1)
    s = window.observe(np.full(40, 0.01), np.ones(40), 0.1)
    assert s.window_rows == 100 and s.flag_rate == pytest.approx(0.4)
    assert s.expected_flag_rate == pytest.approx(0.1)  # floor(0.1 * 100) / 100
    assert s.status == "drift"


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[TestClient, AffineFlow]]:
    _, flow = build_affine_artifact(tmp_path, "toy", 1, affine_flow(3, seed=0))
    with service_client(tmp_path) as client:
        yield client, flow


def _metric(text: str, name: str) -> float:
    m = re.search(rf'^{name}\{{model="toy",version="1"\}} (\S+)$', text, re.MULTILINE)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_drift_metrics_move_when_the_inputs_shift(served) -> None:
    client, flow = served
    assert client.get("/models/toy").json()["versions"][0]["drift"] is None
    for seed in range(4):  # 800 rows like the calibration rows
        rows = flow.sample(200, seed=seed).tolist()
        assert client.post("/score", json={"inputs": rows, "fpr": 0.05}).status_code == 200
    calm = client.get("/models/toy").json()["versions"][0]["drift"]
    metrics = client.get("/metrics").text
    assert calm["status"] == "ok" and calm["window_rows"] == 800
    assert calm["ks"] < calm["ks_critical"] and calm["psi"] < 0.1
    assert abs(calm["flag_rate"] - 0.05) < 0.03 and calm["expected_flag_rate"] == pytest.approx(
        0.05, abs=1e-3
    )
    assert _metric(metrics, "flowserve_drift_ks") == pytest.approx(calm["ks"])
    assert _metric(metrics, "flowserve_drift_alert") == 0.0

    shift = np.asarray(flow.std) * 1.0  # one standard deviation on every feature
    for seed in range(10, 10 + DEFAULT_WINDOW // 200):
        rows = (flow.sample(200, seed=seed) + shift).tolist()
        assert client.post("/score", json={"inputs": rows, "fpr": 0.05}).status_code == 200
    drifted = client.get("/models/toy").json()["versions"][0]["drift"]
    metrics = client.get("/metrics").text
    assert drifted["status"] == "drift" and drifted["window_rows"] == DEFAULT_WINDOW
    assert drifted["ks"] > 3 * calm["ks"] and drifted["ks"] > drifted["ks_critical"]
    assert drifted["psi"] > 0.25 and drifted["flag_rate"] > 0.2
    assert _metric(metrics, "flowserve_drift_ks") == pytest.approx(drifted["ks"])
    assert _metric(metrics, "flowserve_drift_psi") == pytest.approx(drifted["psi"])
    assert _metric(metrics, "flowserve_drift_flag_rate") == pytest.approx(drifted["flag_rate"])
    assert _metric(metrics, "flowserve_drift_alert") == 1.0

"""The committed default model (flowserve/default_model/sensors/1): intact, consistent, useful.

It is made by scripts/make_default_model.sh (``flowserve train --demo sensors ...``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import flowserve
from flowserve.artifact import FORWARD_GRAPH, INVERSE_GRAPH, Manifest, verify_artifact
from flowserve.models.datasets import SENSOR_FEATURES, sensor_anomalies, sensors

DEFAULT = Path(flowserve.__file__).parent / "default_model" / "sensors" / "1"


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    assert DEFAULT.is_dir(), "run scripts/make_default_model.sh and commit its output"
    return verify_artifact(DEFAULT)  # every checksum matches


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    # fresh rows from the same generator, never seen in training (another seed)
    return sensors(500, seed=12345).to_numpy()


def onnx_log_prob(x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(DEFAULT / FORWARD_GRAPH), providers=["CPUExecutionProvider"])
    _, lp = sess.run(["z", "log_prob"], {"x": x.astype(np.float32)})
    return lp


def test_manifest_describes_the_sensors_model(manifest: Manifest) -> None:
    assert (manifest.name, manifest.version, manifest.dim) == ("sensors", 1, 4)
    assert manifest.feature_names == SENSOR_FEATURES
    assert manifest.preprocessing.standardize_mean is not None
    assert manifest.training_config["family"] == manifest.family
    size = sum(p.stat().st_size for p in DEFAULT.iterdir())
    assert size < 2_000_000, f"the default model is {size} bytes; keep it under 2 MB"
    assert not any(p.suffix == ".ckpt" for p in DEFAULT.rglob("*"))


def test_metrics_are_sane(manifest: Manifest) -> None:
    m = manifest.metrics
    assert m.train_nll is not None and m.val_nll is not None and m.test_nll is not None
    assert all(math.isfinite(v) for v in (m.train_nll, m.val_nll, m.test_nll))
    # no gross over-fitting: held-out NLL within half a nat of training NLL
    assert abs(m.test_nll - m.train_nll) < 0.5 and abs(m.val_nll - m.train_nll) < 0.5
    assert m.epochs is not None and m.epochs >= 1
    assert m.train_rows is not None and m.train_rows >= 1000
    report = json.loads((DEFAULT / "metrics.json").read_text())
    assert report["test_nll"] == pytest.approx(m.test_nll)
    assert len(report["history"]) == m.epochs


def test_onnx_matches_torchscript(manifest: Manifest, rows: np.ndarray) -> None:
    lp = onnx_log_prob(rows)
    assert np.isfinite(lp).all()
    if manifest.torchscript is None:
        pytest.skip("the default model carries no TorchScript file")
    module = torch.jit.load(str(DEFAULT / manifest.torchscript), map_location="cpu")
    with torch.no_grad():
        _, lp_torch = module(torch.from_numpy(rows.astype(np.float32)))
    np.testing.assert_allclose(lp, lp_torch.numpy(), atol=manifest.parity.log_prob_tolerance)


def test_fresh_rows_score_like_the_test_split(manifest: Manifest, rows: np.ndarray) -> None:
    nll = -float(np.mean(onnx_log_prob(rows)))
    assert manifest.metrics.test_nll is not None
    assert abs(nll - manifest.metrics.test_nll) < 0.3


def test_round_trip_through_both_graphs(rows: np.ndarray) -> None:
    fwd = ort.InferenceSession(str(DEFAULT / FORWARD_GRAPH), providers=["CPUExecutionProvider"])
    inv = ort.InferenceSession(str(DEFAULT / INVERSE_GRAPH), providers=["CPUExecutionProvider"])
    x = rows.astype(np.float32)
    (z, _) = fwd.run(None, {"x": x})
    (x2,) = inv.run(None, {"z": z})
    # relative to each feature's scale (speed is in the thousands)
    assert np.max(np.abs(x2 - x) / x.std(0)) < 1e-3


def test_anomalies_are_less_likely(rows: np.ndarray) -> None:
    normal = onnx_log_prob(rows)
    odd = onnx_log_prob(sensor_anomalies(500, seed=7).to_numpy())
    # AUC of "anomaly has lower log-likelihood" (the model has never seen an anomaly)
    auc = float(np.mean(odd[:, None] < normal[None, :]))
    assert auc > 0.9, auc

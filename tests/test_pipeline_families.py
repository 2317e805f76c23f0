"""Every registered family through the pipeline: train() -> export -> the HTTP service, and a
guard that no family escapes the shared suites.

Real-valued families run here on two-moons rows; the manifold families (circle, torus, sphere)
run in tests/test_pipeline_manifold.py and the image families in tests/test_pipeline_image.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from flowserve.artifact import load_manifest
from flowserve.models import families
from flowserve.models.data import prepare_data
from flowserve.models.preprocess import FAMILY_DATA_KINDS, data_kind_of
from flowserve.models.training import train
from tests.flow_cases import EXPORT_FAMILIES, VECTOR_FAMILIES
from tests.helpers import two_moons
from tests.service_fixtures import service_client

# The families each pipeline suite trains, exports and serves.
PIPELINE_SUITES = {
    "tests/test_pipeline_families.py": set(VECTOR_FAMILIES),
    "tests/test_pipeline_manifold.py": {"circle", "sphere"},
    "tests/test_pipeline_image.py": {"glow_image", "realnvp_image"},
}
ROWS = two_moons(240, seed=0) * 3.0 + 10.0  # raw units: standardization must undo this


def test_every_family_is_in_the_flow_suites_and_a_pipeline_suite() -> None:
    registered = set(families())
    # Vector families get tests/test_flows.py (and the export suite) from VECTOR_FAMILIES; the
    # others model another kind of data and have their own suites (test_manifold, test_image).
    assert registered - set(VECTOR_FAMILIES) == set(FAMILY_DATA_KINDS)
    assert all(data_kind_of(f) == "real" for f in VECTOR_FAMILIES)
    assert set().union(*PIPELINE_SUITES.values()) == registered


@pytest.fixture(params=sorted(VECTOR_FAMILIES))
def served(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Path, TestClient]]:
    """One family trained (one epoch), exported and served from its own model root."""
    family = request.param
    hparams = EXPORT_FAMILIES[family]
    params = {k: v for k, v in hparams.items() if k not in ("layers", "hidden")}
    result = train(
        ROWS,
        family=family,
        name=family,
        out=tmp_path,
        epochs=1,
        layers=hparams.get("layers"),
        hidden=hparams.get("hidden"),
        params=params or None,
        progress=False,
        torchscript=False,
    )
    assert result is not None
    with service_client(tmp_path, default_model=family) as client:
        yield family, result.artifact_dir, client


def test_trained_family_serves_what_training_measured(
    served: tuple[str, Path, TestClient],
) -> None:
    family, artifact, client = served
    m = load_manifest(artifact)
    assert m.preprocessing.data_kind == "real" and m.base.kind == "normal"
    assert set(m.parity.checked_rows) == {"heldout", "fresh", "ood"}
    assert (m.parity.solver_error is not None) == (family == "ffjord")
    test = prepare_data(ROWS, val_fraction=None, seed=0).test
    r = client.post(f"/models/{family}/log_prob", json={"inputs": test.tolist()})
    lp = np.array(r.json()["log_prob"], dtype=np.float64)
    # The served graphs score raw rows exactly as training measured them in torch.
    assert -lp.mean() == pytest.approx(m.metrics.test_nll, abs=2e-3)
    enc = client.post(f"/models/{family}/encode", json={"inputs": test[:20].tolist()}).json()
    back = client.post(f"/models/{family}/decode", json={"inputs": enc["z"]}).json()["x"]
    np.testing.assert_allclose(back, test[:20], atol=3e-3 * float(ROWS.std()))
    samples = client.post(f"/models/{family}/sample", json={"n": 5, "seed": 1}).json()
    assert np.all(np.isfinite(samples["samples"]))
    # A small table is cross-fitted: /score answers from the score graph, whose served column
    # is the forward graph's log_prob, with cross-conformal p-values (far rows flagged).
    assert m.calibration.method == "cross-fit" and "score" in m.graphs
    far = test[:5] * 5.0
    scored = client.post(
        f"/models/{family}/score", json={"inputs": np.concatenate([test, far]).tolist()}
    ).json()
    np.testing.assert_allclose(scored["log_prob"][: len(test)], lp, atol=1e-3, rtol=1e-5)
    assert all(0.0 < p <= 1.0 for p in scored["p_value"])
    assert all(scored["is_anomaly"][len(test) :])
    assert m.metrics.bits_per_dim == pytest.approx(m.metrics.test_nll / (2 * math.log(2)))
    assert m.metrics.bits_per_dim_kind == "continuous_density"

"""Yeo-Johnson power transforms before standardizing: exact bijections of R with the right
log-derivative, fitted only where a column is clearly skewed, recorded in the manifest and
applied by the served graphs (train -> export -> serve on a skewed table)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from flowserve.artifact import (
    Manifest,
    PowerTransform,
    Preprocessing,
    load_manifest,
    needed_minor,
    verify_artifact,
)
from flowserve.models.autoregressive import ElementwiseAffine, MaskedAutoregressiveTransform
from flowserve.models.base import Chain, Flow, Standardize, StandardNormal
from flowserve.models.chain_rule import ChainRuleGraph
from flowserve.models.data import prepare_data
from flowserve.models.estimator import FlowDensityEstimator
from flowserve.models.export import _applied_preprocessing, _preprocessing
from flowserve.models.power import (
    PowerSpec,
    fit_yeo_johnson,
    yeo_johnson,
    yeo_johnson_inverse,
)
from flowserve.models.training import train
from tests.flow_cases import EXPORT_FAMILIES, VECTOR_FAMILIES
from tests.service_fixtures import service_client

LAMBDAS = torch.tensor([0.0, 0.05, 0.5, 1.0, 1.45, 1.95, 2.0], dtype=torch.float64)


def _skewed(n: int, seed: int = 0) -> pd.DataFrame:
    """A right-skewed (log-normal) column, a left-skewed one and a Gaussian one."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "latency_ms": np.exp(rng.normal(3.0, 0.8, n)),
            "uptime": 100.0 - np.exp(rng.normal(0.0, 0.7, n)),
            "temp": rng.normal(20.0, 3.0, n),
        }
    )


def test_the_map_is_a_bijection_of_r_with_its_exact_log_derivative() -> None:
    u = torch.linspace(-40.0, 40.0, 801, dtype=torch.float64)[:, None].repeat(1, len(LAMBDAS))
    u.requires_grad_(True)
    y, ld = yeo_johnson(u, LAMBDAS)
    (grad,) = torch.autograd.grad(y.sum(), u)
    torch.testing.assert_close(ld, grad.log(), atol=1e-10, rtol=1e-10)
    back, inverse_ld = yeo_johnson_inverse(y.detach(), LAMBDAS)
    torch.testing.assert_close(back, u.detach(), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(inverse_ld, -ld.detach(), atol=1e-10, rtol=1e-10)
    # signs are kept, lambda = 1 is the identity, and every real has a preimage (onto R)
    assert (y.detach() * u.detach() >= 0).all()
    torch.testing.assert_close(y[:, 3].detach(), u[:, 3].detach())
    far = torch.tensor([[-30.0] * 7, [30.0] * 7], dtype=torch.float64)
    assert torch.isfinite(yeo_johnson_inverse(far, LAMBDAS)[0]).all()


def test_a_transformed_density_integrates_to_one() -> None:
    # One log-normal-like column (lambda 0 above the centre, 2 - 0 = 2 below): the density of x
    # is N(z) |dz/dx|; integrated over x on a grid fine near the centre and geometric in the tail.
    power = PowerSpec(np.array([5.0]), np.array([2.0]), np.array([0.0]))
    flow = Flow(Chain([]), StandardNormal((1,)), family="test").set_preprocess(
        Standardize(torch.tensor([0.3]), torch.tensor([0.8]), power).double()
    )
    tail = 5.0 + np.geomspace(1e-3, 2e4, 20000)
    x = np.concatenate([5.0 - np.geomspace(1e-3, 60.0, 20000)[::-1], [5.0], tail])
    with torch.no_grad():
        density = flow.log_prob(torch.from_numpy(x[:, None])).exp().numpy()
    assert np.trapezoid(density, x) == pytest.approx(1.0, abs=1e-3)


def test_fit_transforms_skewed_columns_only() -> None:
    spec = fit_yeo_johnson(_skewed(2000).to_numpy())
    right, left, gaussian = spec.lambdas
    assert right < 0.6 and left > 1.4 and gaussian == 1.0
    assert ((spec.lambdas >= 0) & (spec.lambdas <= 2)).all()
    # the powers come from a seeded subsample on big tables: the same rows give the same fit
    rows = _skewed(12_000, seed=1).to_numpy()
    np.testing.assert_array_equal(fit_yeo_johnson(rows).lambdas, fit_yeo_johnson(rows).lambdas)
    # a Gaussian table, or policy none, gets no power transform at all
    assert prepare_data(np.random.default_rng(0).normal(size=(500, 3))).power is None
    assert prepare_data(_skewed(500), power_transform="none").power is None
    prepared = prepare_data(_skewed(500))
    assert prepared.power is not None
    z = Standardize(
        torch.from_numpy(prepared.mean), torch.from_numpy(prepared.scale), prepared.power
    )(torch.from_numpy(prepared.train))[0]
    # mean and scale are those of the transformed training rows
    np.testing.assert_allclose(z.mean(0).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(0, unbiased=False).numpy(), 1.0, atol=1e-4)


def _power_maf() -> Flow:
    torch.manual_seed(0)
    order = torch.tensor([2, 3, 1])
    transform = MaskedAutoregressiveTransform(3, ElementwiseAffine(3.0), 16, 2, order)
    flow = Flow(Chain([transform]), StandardNormal((3,)), family="maf", hparams={"layers": 1})
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    prepared = prepare_data(_skewed(400))
    assert prepared.power is not None
    pre = Standardize(
        torch.from_numpy(prepared.mean), torch.from_numpy(prepared.scale), prepared.power
    )
    return flow.set_preprocess(pre).float().eval()


def test_standardize_with_a_power_transform_round_trips_and_decomposes() -> None:
    flow = _power_maf()
    x = torch.from_numpy(_skewed(64, seed=3).to_numpy().copy()).float()
    x[0, 0] *= 50.0  # far out in the long tail
    with torch.no_grad():
        z, ld = flow.preprocess(x)
        back, inverse_ld = flow.preprocess.inverse(z)
        torch.testing.assert_close(back, x, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(inverse_ld, -ld, rtol=1e-4, atol=1e-4)
        # per-feature terms of the chain-rule explanation still sum to log_prob
        terms = ChainRuleGraph(flow).eval()(x)
        torch.testing.assert_close(terms.sum(1), flow.log_prob(x), atol=1e-3, rtol=1e-5)
    jac = torch.autograd.functional.jacobian(lambda r: flow.preprocess(r[None])[0][0], x[1])
    assert ld[1].item() == pytest.approx(torch.linalg.slogdet(jac.double())[1].item(), abs=1e-4)


def test_export_records_what_the_graphs_apply() -> None:
    flow = _power_maf()
    applied = _applied_preprocessing(flow)
    assert applied.power_transform is not None
    assert applied.power_transform.lambdas == flow.preprocess.power_spec().lambdas.tolist()
    with pytest.raises(ValueError, match=r"power_transform\.lambdas does not match"):
        wrong = applied.power_transform.model_copy(update={"lambdas": [1.0, 1.0, 0.5]})
        _preprocessing(applied, applied.model_copy(update={"power_transform": wrong}))
    with pytest.raises(ValueError, match=r"power_transform\.center does not match"):
        _preprocessing(applied, applied.model_copy(update={"power_transform": None}))


def test_manifest_checks_the_lists_and_needs_minor_2(tmp_path: Path) -> None:
    result = train(
        _skewed(300), name="skew", out=tmp_path, progress=False, torchscript=False,
        family="maf", layers=2, hidden=8, epochs=2, batch_size=64,
    )  # fmt: skip
    manifest = verify_artifact(result.artifact_dir)
    power = manifest.preprocessing.power_transform
    assert power is not None and power.method == "yeo-johnson"
    assert needed_minor(manifest) == 2 == load_manifest(result.artifact_dir).schema_minor
    short = manifest.preprocessing.model_copy(
        update={"power_transform": PowerTransform(center=[0.0], spread=[1.0], lambdas=[0.5])}
    )
    data = manifest.model_dump()
    data["preprocessing"] = short.model_dump()
    with pytest.raises(ValueError, match="3 values per list"):
        Manifest.model_validate(data)
    with pytest.raises(ValueError):
        PowerTransform(center=[0.0], spread=[1.0], lambdas=[2.5])  # not onto R
    assert Preprocessing().power_transform is None


def test_a_skewed_table_through_train_export_and_serve(tmp_path: Path) -> None:
    data = _skewed(600)
    est = FlowDensityEstimator(
        "maf", layers=2, hidden=16, epochs=3, batch_size=64, calibration="split"
    ).fit(data)
    assert est.flow_.preprocess.power_spec() is not None
    plain = FlowDensityEstimator(
        "maf", layers=2, hidden=16, epochs=3, batch_size=64, calibration="split",
        power_transform="none",
    ).fit(data)  # fmt: skip
    assert plain.flow_.preprocess.power_spec() is None
    assert est.get_params()["power_transform"] == "auto"
    result = est.export(tmp_path, name="skew", version=1, torchscript=False)
    assert result.manifest.preprocessing.power_transform is not None
    rows = _skewed(40, seed=7).to_numpy().astype(np.float32)
    rows[:5] *= np.float32(30.0)  # out of distribution, deep in both tails
    with service_client(tmp_path, default_model="skew") as client:
        body = client.post("/models/skew/log_prob", json={"inputs": rows.tolist()}).json()
        served = np.array(body["log_prob"], dtype=np.float64)
        np.testing.assert_allclose(served, est.score_samples(rows), rtol=1e-4, atol=2e-3)
        assert np.all(served[:5] < np.median(served[5:]))
        z = client.post("/models/skew/encode", json={"inputs": rows[5:].tolist()}).json()["z"]
        back = client.post("/models/skew/decode", json={"inputs": z}).json()["x"]
        np.testing.assert_allclose(back, rows[5:], rtol=1e-3, atol=1e-2)
        info = client.get("/models/skew/versions/1").json()
        assert info["power_transformed"] == ["latency_ms", "uptime"]  # not the Gaussian temp
        samples = np.array(client.post("/models/skew/sample", json={"n": 200}).json()["samples"])
        assert np.isfinite(samples).all() and np.median(samples[:, 0]) > 0


@pytest.mark.parametrize("family", sorted(VECTOR_FAMILIES))
def test_every_vector_family_serves_a_power_transformed_table(family: str, tmp_path: Path) -> None:
    """train() -> export -> service on a skewed table for each real-valued family: the served
    graphs score raw rows as training measured them in torch, and decode what they encode."""
    hparams = EXPORT_FAMILIES[family]
    params = {k: v for k, v in hparams.items() if k not in ("layers", "hidden")}
    data = _skewed(300)
    result = train(
        data, family=family, name=family, out=tmp_path, epochs=1,
        layers=hparams.get("layers"), hidden=hparams.get("hidden"), params=params or None,
        progress=False, torchscript=False, calibration="split",
    )  # fmt: skip
    assert result is not None
    m = result.manifest
    assert m.preprocessing.power_transformed(m.feature_names) == ["latency_ms", "uptime"]
    assert set(m.parity.checked_rows) == {"heldout", "fresh", "ood"}
    test = prepare_data(data, seed=0).test
    with service_client(tmp_path, default_model=family) as client:
        body = client.post(f"/models/{family}/log_prob", json={"inputs": test.tolist()}).json()
        enc = client.post(f"/models/{family}/encode", json={"inputs": test[:20].tolist()}).json()
        back = client.post(f"/models/{family}/decode", json={"inputs": enc["z"]}).json()["x"]
    lp = np.array(body["log_prob"], dtype=np.float64)
    assert -lp.mean() == pytest.approx(m.metrics.test_nll, abs=2e-3)
    np.testing.assert_allclose(back, test[:20], rtol=3e-3, atol=3e-3 * float(data.std().min()))

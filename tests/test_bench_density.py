"""The pieces of ``benchmarks/bench_density.py``: its known densities are normalized and agree
with their samplers, the real tables load, dequantization and the raw-space conversion are right."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_density.py"
_spec = importlib.util.spec_from_file_location("bench_density", _PATH)
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_density"] = bench
_spec.loader.exec_module(bench)


def _grid_integral(log_prob, lo: float, hi: float, n: int) -> float:
    axis = np.linspace(lo, hi, n)
    step = axis[1] - axis[0]
    x1, x2 = np.meshgrid(axis, axis, indexing="ij")
    rows = np.column_stack([x1.ravel(), x2.ravel()])
    return float(np.exp(log_prob(rows)).sum() * step**2)


@pytest.mark.parametrize(
    ("dist", "lo", "hi", "n"),
    [
        (bench.banana(), -90.0, 90.0, 1801),
        (bench.gaussian_mixture(2), -10.0, 10.0, 1001),
    ],
    ids=["banana", "gmm2"],
)
def test_two_dimensional_densities_integrate_to_one(dist, lo: float, hi: float, n: int) -> None:
    assert _grid_integral(dist.log_prob, lo, hi, n) == pytest.approx(1.0, abs=2e-3)


def test_funnel_integrates_to_one() -> None:
    # On a grid in (v, u) with x = exp(v / 2) u, where the density is smooth at every scale:
    # the integral of p(v, x) dx dv is that of p(v, e^{v/2} u) e^{v/2} du dv.
    dist = bench.funnel(2)
    v, u = np.meshgrid(np.linspace(-18, 18, 1201), np.linspace(-8, 8, 801), indexing="ij")
    x = np.exp(v / 2) * u
    rows = np.column_stack([v.ravel(), x.ravel()])
    step = (36 / 1200) * (16 / 800)
    total = float((np.exp(dist.log_prob(rows)) * np.exp(v.ravel() / 2)).sum() * step)
    assert total == pytest.approx(1.0, abs=2e-3)


def test_funnel_density_is_the_product_of_its_conditionals() -> None:
    dist = bench.funnel(5)
    rows = dist.sample(50, np.random.default_rng(0))
    v = rows[:, 0]
    expected = stats.norm.logpdf(v, scale=3.0) + stats.norm.logpdf(
        rows[:, 1:], scale=np.exp(v / 2)[:, None]
    ).sum(1)
    np.testing.assert_allclose(dist.log_prob(rows), expected, rtol=1e-10)


@pytest.mark.parametrize("dim", [8, 16])
def test_mixture_density_matches_scipy(dim: int) -> None:
    dist = bench.gaussian_mixture(dim)
    means, chol, weights = bench.mixture_parameters(dim)
    rows = dist.sample(40, np.random.default_rng(1))
    per = [
        stats.multivariate_normal(m, c @ c.T).logpdf(rows) + math.log(w)
        for m, c, w in zip(means, chol, weights, strict=True)
    ]
    np.testing.assert_allclose(dist.log_prob(rows), np.logaddexp.reduce(per, axis=0), rtol=1e-9)


@pytest.mark.parametrize("dim", [8, 16])
def test_mixture_sampler_has_the_mixture_moments(dim: int) -> None:
    dist = bench.gaussian_mixture(dim)
    means, chol, weights = bench.mixture_parameters(dim)
    rows = dist.sample(200_000, np.random.default_rng(2))
    mean = weights @ means
    second = sum(
        w * (c @ c.T + np.outer(m, m)) for m, c, w in zip(means, chol, weights, strict=True)
    )
    np.testing.assert_allclose(rows.mean(0), mean, atol=0.05)
    np.testing.assert_allclose(np.cov(rows.T), second - np.outer(mean, mean), atol=0.15)


def test_dequantize_spreads_only_discrete_columns_within_their_grid() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(size=500), rng.integers(0, 2, 500) * 0.5, np.zeros(500)])
    out, changed = bench.dequantize(x, np.random.default_rng(1))
    assert changed == [1, 2]
    np.testing.assert_array_equal(out[:, 0], x[:, 0])
    assert np.all(np.abs(out[:, 1] - x[:, 1]) <= 0.25)  # half the gap between 0 and 0.5
    assert np.all(np.abs(out[:, 2]) <= 0.5) and np.unique(out[:, 2]).size == 500


@pytest.mark.parametrize("name", bench.DATASETS)
def test_every_data_set_loads(name: str) -> None:
    data = bench.load_dataset(name, seed=0, n_train=300, n_test=200)
    assert data.train.ndim == 2 and data.train.shape[1] == data.test.shape[1]
    assert np.isfinite(data.train).all() and np.isfinite(data.test).all()
    assert (data.train.std(0) > 0).all()  # nothing constant is left for a flow to collapse on
    if name in bench.SYNTHETIC:
        assert data.train.shape[0] == 300 and data.test.shape[0] == 200
        assert data.true_log_prob is not None and np.isfinite(data.true_log_prob).all()
    else:
        assert data.true_log_prob is None
        total = len(data.train) + len(data.test)
        assert len(data.test) == round(bench.REAL_TEST_SHARE * total)


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b = bench.load_dataset("wine", 3), bench.load_dataset("wine", 3)
    np.testing.assert_array_equal(a.train, b.train)
    assert not np.array_equal(a.train, bench.load_dataset("wine", 4).train)


def test_standardizer_constant_gives_raw_space_densities() -> None:
    # A standard normal in standardized units is N(mean, scale^2) per column in raw units.
    train = np.random.default_rng(0).normal(loc=[5.0, -2.0], scale=[3.0, 0.1], size=(400, 2))
    mean, scale, log_det = bench.standardizer(train)
    rows = train[:10]
    std_lp = stats.norm.logpdf((rows - mean) / scale).sum(1)
    raw_lp = stats.norm.logpdf(rows, loc=mean, scale=scale).sum(1)
    np.testing.assert_allclose(std_lp + log_det, raw_lp, rtol=1e-12)


def test_a_peer_trains_and_scores_every_test_row() -> None:
    pytest.importorskip("zuko")
    data = bench.load_dataset("gmm2", seed=0, n_train=256, n_test=64)
    fit = bench.train_peer("zuko-maf", data.train, budget=0.5, seed=0)
    log_prob = fit.score(data.test)
    assert log_prob.shape == (64,) and np.isfinite(log_prob).all()
    assert fit.epochs >= 0 and fit.params > 0 and fit.cpu_seconds > 0


def _run(method: str, nll: float, excess: float | None = None, share: float = 1.0):
    r = bench.RunResult("gmm2", method, 0, dim=2, train_rows=100, test_rows=50, nll=nll, se=0.01)
    r.excess, r.excess_se, r.true_nll = excess, 0.01, None if excess is None else nll - excess
    r.seconds, r.cpu_seconds = 5.0, 5.0 * share
    r.family = "nsf 4x64" if method == "flowserve" else ""
    return r


def test_report_compares_flowserve_with_the_best_peer_of_the_run() -> None:
    runs = [_run("flowserve", 3.5, 0.1), _run("zuko-maf", 3.7, 0.3), _run("zuko-nsf", 3.6, 0.2)]
    summaries = {(r.dataset, r.method): bench.Summary(r.dataset, r.method, [r]) for r in runs}
    table = bench._table(summaries, ["gmm2"])
    (mine,) = [line for line in table if "| flowserve |" in line]
    assert "-0.100 (0.50x excess)" in mine and "nsf 4x64" in mine
    (verdict,) = bench._verdict(summaries, ["gmm2"], budget=5.0)
    assert "best peer zuko-nsf" in verdict and "at or below" in verdict and "(<= 0.5)" in verdict


def test_a_starved_run_makes_the_report_warn() -> None:
    assert bench._busy_warning([_run("zuko-maf", 3.7), _run("flowserve", 3.5)]) == []
    warning = bench._busy_warning([_run("zuko-maf", 3.7, share=0.3), _run("flowserve", 3.5)])
    assert warning and "30% of a CPU" in warning[0]


def test_bench_power_pairs_the_policies_by_seed() -> None:
    path = _PATH.parent / "bench_power.py"
    spec = importlib.util.spec_from_file_location("bench_power", path)
    assert spec is not None and spec.loader is not None
    power = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(power)
    base = {"data": "gmm2", "excess": 0.1, "transformed": 1, "dim": 2, "family": "nsf 4x128"}
    results = [
        {**base, "policy": "auto", "seed": 0, "nll": 3.40},
        {**base, "policy": "none", "seed": 0, "nll": 3.45},
        {**base, "policy": "auto", "seed": 1, "nll": 3.50},
        {**base, "policy": "none", "seed": 1, "nll": 3.40},
    ]
    row = power.report(results, ["gmm2", "wine"]).splitlines()[-1]
    assert row.startswith("| gmm2 | 1 of 2 | 3.450 | 3.425 | -0.050, +0.100 |")

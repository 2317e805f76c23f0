"""One suite every flow family goes through (families are listed in flow_cases.py).

Shapes, gradients, round trips and inverse log-dets run on every registered family, with inputs
of the kind of data it models; the checks written for real-valued rows (Jacobians in ambient
coordinates, integrals over the plane, fits to two moons) run on the vector families, and the
manifold and image families have their own in tests/test_manifold.py and tests/test_image.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowserve.models import build_flow, families
from flowserve.models.base import Flow
from tests.flow_cases import (
    ALL_FAMILIES,
    DEFAULT_FIT_STEPS,
    FIT_STEPS,
    LOGDET_ATOL,
    ROUNDTRIP_ATOL32,
    UNTEMPERED,
    VECTOR_FAMILIES,
    family_hparams,
    family_inputs,
)
from tests.helpers import randomize, two_moons

FAMILIES = sorted(VECTOR_FAMILIES)
EVERY_FAMILY = sorted(ALL_FAMILIES)


def make(family: str, dim: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> Flow:
    torch.manual_seed(seed)
    flow = build_flow(family, **family_hparams(family, dim)).to(dtype)
    randomize(flow, seed=seed)
    return flow


def test_every_registered_family_is_in_the_shared_suite() -> None:
    assert families() == EVERY_FAMILY


@pytest.mark.parametrize("family", EVERY_FAMILY)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(family: str, dtype: torch.dtype) -> None:
    flow = make(family, dim=5, dtype=dtype)
    x = family_inputs(family, 7, 5, dtype)
    d = x[0].numel()  # latents are flat rows, whatever the data's shape
    z, lp = flow(x)
    assert z.shape == (7, d) and lp.shape == (7,)
    assert z.dtype == dtype and lp.dtype == dtype
    assert flow.log_prob(x).shape == (7,)
    assert flow.encode(x).shape == (7, d)
    assert flow.decode(z).dtype == dtype
    s = flow.sample(4, seed=1)
    assert s.shape == (4, *x.shape[1:]) and s.dtype == dtype
    assert torch.equal(s, flow.sample(4, seed=1)), "same seed must give the same samples"
    temperature = 1.0 if family in UNTEMPERED else 0.5
    assert torch.isfinite(flow.sample(4, temperature=temperature, seed=2)).all()


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_gradients_reach_every_parameter(family: str) -> None:
    flow = make(family, dim=4)
    x = family_inputs(family, 16, 4)
    flow.log_prob(x).mean().backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} gets a zero gradient"


@pytest.mark.parametrize("family", EVERY_FAMILY)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roundtrip(family: str, dtype: torch.dtype) -> None:
    flow = make(family, dim=5, dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    x = family_inputs(family, 64, 5, dtype, generator=gen, spread=1.5)
    with torch.no_grad():
        z = flow.encode(x)
        x2 = flow.decode(z)
        z2 = flow.encode(flow.decode(torch.randn_like(z)))
    atol = 1e-6 if dtype == torch.float64 else ROUNDTRIP_ATOL32.get(family, 1e-4)
    assert torch.allclose(x2, x, atol=atol, rtol=0), (x2 - x).abs().max()
    assert torch.isfinite(z2).all()


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_inverse_logdet_is_negative_forward(family: str) -> None:
    flow = make(family, dim=3, dtype=torch.float64)
    x = family_inputs(family, 10, 3, torch.float64)
    with torch.no_grad():
        z, ld = flow.transform(x)
        _, ld_inv = flow.transform.inverse(z)
    assert torch.allclose(ld, -ld_inv, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_logdet_matches_autograd_jacobian(family: str) -> None:
    flow = make(family, dim=3, dtype=torch.float64)
    xs = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    _, ld = flow.transform(xs)
    for i in range(xs.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: flow.transform(v[None])[0][0], xs[i])
        _, expected = torch.linalg.slogdet(jac)
        assert ld[i].item() == pytest.approx(expected.item(), abs=LOGDET_ATOL.get(family, 1e-6))


@pytest.mark.parametrize("family", FAMILIES)
def test_density_integrates_to_one_in_2d(family: str) -> None:
    flow = make(family, dim=2, dtype=torch.float64)
    lim, n = 8.0, 321
    g = torch.linspace(-lim, lim, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    with torch.no_grad():
        p = torch.exp(flow.log_prob(pts)).reshape(n, n).numpy()
    cell = (2 * lim / (n - 1)) ** 2
    mass = float(np.trapezoid(np.trapezoid(p, dx=1.0), dx=1.0) * cell)
    assert mass == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("family", FAMILIES)
def test_short_fit_beats_best_gaussian(family: str) -> None:
    train, test = two_moons(1024, seed=0), two_moons(512, seed=1)
    mean, cov = train.mean(0), np.cov(train.T)
    gauss = torch.distributions.MultivariateNormal(
        torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(cov, dtype=torch.float32)
    )
    gauss_nll = -gauss.log_prob(torch.as_tensor(test)).mean().item()

    torch.manual_seed(0)
    flow = build_flow(family, dim=2, **VECTOR_FAMILIES[family])
    xtr, xte = torch.as_tensor(train), torch.as_tensor(test)
    opt = torch.optim.Adam(flow.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(FIT_STEPS.get(family, DEFAULT_FIT_STEPS)):
        batch = xtr[torch.randint(0, len(xtr), (128,), generator=gen)]
        loss = -flow.log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 5.0)
        opt.step()
    with torch.no_grad():
        flow_nll = -flow.log_prob(xte).mean().item()
    assert math.isfinite(flow_nll)
    if family == "gaussian":  # it is the best Gaussian, reached by maximum likelihood
        assert flow_nll == pytest.approx(gauss_nll, abs=0.02)
    else:
        assert flow_nll < gauss_nll, (flow_nll, gauss_nll)


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(
        st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False),
        min_size=4,
        max_size=4,
    )
)
def test_extreme_inputs_give_finite_log_prob(family: str, values: list[float]) -> None:
    flow = _extreme_flow(family)
    x = torch.tensor([values, [1e4, -1e4, 1e4, -1e4], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float32)
    with torch.no_grad():
        z, lp = flow(x)
    assert torch.isfinite(lp).all(), lp
    assert torch.isfinite(z).all(), z


_EXTREME: dict[str, Flow] = {}


def _extreme_flow(family: str) -> Flow:
    if family not in _EXTREME:
        _EXTREME[family] = make(family, dim=4)
    return _EXTREME[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_extreme_latents_decode_finite(family: str) -> None:
    """Sampling at high temperature (large latents) must not produce NaN."""
    flow = make(family, dim=4)
    z = torch.tensor([[50.0, -50.0, 20.0, -20.0], [0.0, 0.0, 0.0, 0.0]])
    with torch.no_grad():
        x = flow.decode(z)
    assert not torch.isnan(x).any()


def test_gaussian_round_trips_nearly_collinear_columns_in_float32() -> None:
    """A radius, its perimeter and its area (breast_cancer's columns) whiten to large entries
    of W (about 90 here); the map computes in float64 inside, and float32 rows come back."""
    gen = torch.Generator().manual_seed(0)
    radius = 1.0 + 0.1 * torch.randn(400, 1, generator=gen)
    noise = 1e-3 * torch.randn(400, 3, generator=gen)
    rows = torch.cat([radius, 2 * math.pi * radius, math.pi * radius**2], dim=1) + noise
    rows = (rows - rows.mean(0)) / rows.std(0)
    flow = build_flow("gaussian", dim=3).eval()
    layer = flow.transform
    # where maximum likelihood takes it: whitening by the sample covariance, unshrunk
    cholesky = torch.linalg.cholesky(torch.cov(rows.T.double()))
    weight = torch.linalg.inv(cholesky)
    with torch.no_grad():
        layer.log_diag.copy_(torch.log(weight.diagonal()))
        layer.lower.copy_(weight.tril(-1))
        layer.shift.copy_(-(weight @ rows.double().mean(0)))
    assert float(layer.weight().abs().max()) > 50  # badly conditioned on purpose
    with torch.no_grad():
        back = flow.decode(flow.encode(rows))
    assert back.dtype == torch.float32
    assert float((back - rows).abs().max()) < 1e-5

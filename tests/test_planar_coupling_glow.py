"""Behaviour specific to the planar, radial, NICE, RealNVP and Glow layers (the shared checks
live in test_flows.py): invertibility parametrizations, numerical inverses in hard regimes,
actnorm's one-time data-dependent initialization, the scale budget of deep couplings."""

from __future__ import annotations

import pytest
import torch

from flowserve.models import build_flow
from flowserve.models.coupling import SCALE_BUDGET, AffineCoupling, layer_scale_bound
from flowserve.models.glow import ActNorm, LULinear
from flowserve.models.planar import PlanarTransform, RadialTransform
from tests.helpers import randomize


@pytest.mark.parametrize("family", ["nice", "realnvp", "glow"])
def test_couplings_reject_one_feature_by_name(family: str) -> None:
    with pytest.raises(ValueError, match=r"dim >= 2.*dim=1"):
        build_flow(family, dim=1)


@pytest.mark.parametrize("family", ["planar", "radial"])
def test_planar_and_radial_work_in_one_dimension(family: str) -> None:
    torch.manual_seed(0)
    flow = build_flow(family, dim=1, layers=3)
    randomize(flow, seed=0)
    x = torch.linspace(-5, 5, 11, dtype=torch.float64)[:, None]
    flow = flow.double()
    with torch.no_grad():
        assert torch.allclose(flow.decode(flow.encode(x)), x, atol=1e-10)
        assert torch.isfinite(flow.log_prob(x)).all()


@pytest.mark.parametrize("family", ["nice", "realnvp", "glow"])
def test_alternating_masks_transform_every_feature_of_odd_dim(family: str) -> None:
    flow = build_flow(family, dim=5, layers=2, hidden=8)
    changed = set()
    for t in flow.transform.transforms:
        if hasattr(t, "changed"):
            changed |= set(t.changed.tolist())
    assert changed == set(range(5))


def _planar(dim: int, w_scale: float, wu: float, b: float, seed: int) -> PlanarTransform:
    """A planar layer with ``|w| = w_scale`` and ``w.u = wu`` (so ``w.u_hat = softplus(wu)-1``)."""
    gen = torch.Generator().manual_seed(seed)
    t = PlanarTransform(dim).double()
    with torch.no_grad():
        w = torch.randn(dim, generator=gen, dtype=torch.float64)
        w = w_scale * w / w.norm()
        u = torch.randn(dim, generator=gen, dtype=torch.float64)
        u = u - (u @ w) * w / (w @ w) + wu * w / (w @ w)
        t.w.copy_(w)
        t.u.copy_(u)
        t.b.fill_(b)
    return t


# (|w|, w.u, b): near-degenerate (w.u_hat -> -1), strongly expanding, tiny and huge w.
PLANAR_REGIMES = [(1.0, -4.0, 0.3), (1.0, 0.0, 0.0), (3.0, 60.0, -1.0), (0.05, 5.0, 2.0)]
PLANAR_REGIMES += [(20.0, 150.0, 0.5), (0.7, -2.0, -3.0)]


@pytest.mark.parametrize(("w_scale", "wu", "b"), PLANAR_REGIMES)
def test_planar_inverse_converges_in_hard_regimes(w_scale: float, wu: float, b: float) -> None:
    t = _planar(4, w_scale, wu, b, seed=1)
    gen = torch.Generator().manual_seed(2)
    # Rows from the origin out to |x| ~ 1e3, where tanh saturates.
    x = torch.randn(512, 4, generator=gen, dtype=torch.float64)
    x = x * torch.exp(3 * torch.rand(512, 1, generator=gen, dtype=torch.float64)) ** 2
    with torch.no_grad():
        z, ld = t(x)
        x2, ld2 = t.inverse(z)
    assert torch.allclose(t(x2)[0], z, atol=1e-9, rtol=1e-12)
    assert torch.allclose(ld2, -ld, atol=1e-9)


def test_planar_float32_inverse_of_large_latents_is_accurate() -> None:
    t = _planar(3, 2.0, 10.0, 0.5, seed=3).float()
    z = torch.tensor([[50.0, -50.0, 20.0], [0.0, 0.0, 0.0], [-1e4, 1e4, 3.0]])
    with torch.no_grad():
        x, _ = t.inverse(z)
        z2, _ = t(x)
    assert torch.allclose(z2, z, atol=1e-4, rtol=1e-6)


def test_planar_keeps_invertibility_condition() -> None:
    t = _planar(3, 1.0, -50.0, 0.0, seed=4)  # w.u far below -1: u_hat is corrected
    u_hat, _ = t._u_hat()
    assert (t.w @ u_hat).item() > -1.0
    _, ld = t(torch.zeros(1, 3, dtype=torch.float64))
    assert torch.isfinite(ld).all()


def test_radial_inverse_is_exact_at_and_around_the_centre() -> None:
    torch.manual_seed(0)
    t = RadialTransform(3).double()
    with torch.no_grad():
        t.beta_raw.fill_(-6.0)  # beta close to -alpha: strongly contracting near x0
        t.alpha_raw.fill_(0.5)
        x = t.x0.detach() + torch.tensor(
            [[0.0, 0.0, 0.0], [1e-9, 0.0, 0.0], [0.1, -0.2, 0.3], [1e3, 1e3, -1e3]],
            dtype=torch.float64,
        )
        z, ld = t(x)
        x2, ld2 = t.inverse(z)
    assert torch.isfinite(ld).all()
    assert torch.allclose(x2, x, atol=1e-9, rtol=1e-12)
    assert torch.allclose(ld2, -ld, atol=1e-9)


def test_actnorm_initializes_once_from_the_first_training_batch() -> None:
    norm = ActNorm(3)
    x = torch.randn(256, 3) * torch.tensor([5.0, 0.1, 2.0]) + torch.tensor([1.0, -3.0, 0.0])
    with torch.no_grad():
        norm(x)  # no_grad (evaluation, export): no initialization
    assert not norm.initialized
    z, _ = norm(x)  # a training step
    assert norm.initialized
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(3), atol=1e-4)
    before = norm.log_scale.detach().clone()
    norm(x * 10)
    assert torch.equal(norm.log_scale.detach(), before), "must not re-initialize"


def test_actnorm_state_survives_save_and_load() -> None:
    torch.manual_seed(0)
    trained = build_flow("glow", dim=3, layers=2, hidden=8)
    trained.log_prob(torch.randn(64, 3) * 4 + 2).mean().backward()
    loaded = build_flow("glow", dim=3, layers=2, hidden=8)
    loaded.load_state_dict(trained.state_dict())
    x = torch.randn(16, 3)
    loaded.log_prob(x * 100)  # training mode, grad on: would re-init if the flag were lost
    assert torch.allclose(loaded.log_prob(x), trained.log_prob(x))


def test_actnorm_batch_of_one_row_keeps_scale_one() -> None:
    norm = ActNorm(2)
    z, ld = norm(torch.tensor([[3.0, -1.0]]))
    assert torch.isfinite(z).all() and torch.allclose(ld, torch.zeros(1))


def test_lu_linear_logdet_and_inverse_match_dense_linear_algebra() -> None:
    torch.manual_seed(0)
    t = LULinear(6).double()
    randomize(t, seed=0, scale=0.2)
    w = t.weight().detach()
    z = torch.randn(8, 6, dtype=torch.float64)
    with torch.no_grad():
        x, ld = t.inverse(z)
    assert torch.allclose(x, torch.linalg.solve(w, z.T).T, atol=1e-10)
    assert ld[0].item() == pytest.approx(-torch.linalg.slogdet(w)[1].item(), abs=1e-10)


def test_scale_bound_keeps_deep_couplings_within_budget() -> None:
    for layers in (1, 8, 64, 1000):
        assert layer_scale_bound(3.0, layers) * layers <= max(SCALE_BUDGET, 3.0)
    flow = build_flow("realnvp", dim=4, layers=64, hidden=8)
    bounds = {t.scale_bound for t in flow.transform.transforms if isinstance(t, AffineCoupling)}
    assert bounds == {SCALE_BUDGET / 32}


@pytest.mark.parametrize("family", ["nice", "realnvp", "planar", "radial"])
def test_deep_flows_stay_finite_on_extreme_inputs(family: str) -> None:
    torch.manual_seed(0)
    hp = {"layers": 48} if family in ("planar", "radial") else {"layers": 48, "hidden": 8}
    flow = build_flow(family, dim=4, **hp)
    randomize(flow, seed=0, scale=0.5)
    x = torch.tensor([[1e4, -1e4, 1e4, -1e4], [1e4] * 4, [0.0] * 4, [-1e4, 1e-4, 3.0, 7e3]])
    with torch.no_grad():
        z, lp = flow(x)
        back = flow.decode(torch.tensor([[50.0, -50.0, 50.0, -50.0]]))
    assert torch.isfinite(z).all() and torch.isfinite(lp).all()
    assert torch.isfinite(back).all()

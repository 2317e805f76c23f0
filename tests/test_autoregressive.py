"""MADE masks and the autoregressive / spline families beyond the shared suite: dim 1, deep
stacks at extreme inputs, and clear errors for bad hyper-parameters."""

from __future__ import annotations

import pytest
import torch

from flowserve.models import build_flow
from flowserve.models.made import MADE
from flowserve.models.spline import RationalQuadraticSpline, SplineCoupling
from tests.helpers import randomize

AR_FAMILIES = ["maf", "iaf", "nsf", "nsf_ar"]


@pytest.mark.parametrize("order", [[1, 2, 3, 4, 5], [3, 5, 1, 4, 2]])
def test_made_outputs_depend_only_on_earlier_inputs(order: list[int]) -> None:
    torch.manual_seed(0)
    made = MADE(5, params=3, hidden=16, order=torch.tensor(order))
    randomize(made, seed=0, scale=1.0)
    x = torch.randn(5, dtype=torch.float64)
    made = made.double()
    jac = torch.autograd.functional.jacobian(lambda v: made(v[None])[0], x)  # [5, 3, 5]
    rank = torch.tensor(order)
    allowed = rank[:, None] > rank[None, :]  # output i may see input j iff order_j < order_i
    depends = jac.abs().sum(dim=1) > 0
    assert not (depends & ~allowed).any()
    assert depends[allowed].all(), "a wide enough MADE uses every allowed connection"


def test_made_starts_at_zero_and_rejects_bad_orders() -> None:
    made = MADE(3, params=2, hidden=8)
    assert made(torch.randn(4, 3)).abs().sum() == 0
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, params=2, order=torch.tensor([1, 1, 2]))


@pytest.mark.parametrize("family", AR_FAMILIES)
def test_dim_one_works(family: str) -> None:
    torch.manual_seed(0)
    flow = build_flow(family, dim=1, layers=2, hidden=8).double()
    randomize(flow, seed=0)
    x = torch.linspace(-4, 4, 9, dtype=torch.float64)[:, None]
    z, lp = flow(x)
    assert torch.isfinite(lp).all()
    assert torch.allclose(flow.decode(z), x, atol=1e-10)
    flow.log_prob(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())


def test_spline_coupling_needs_two_features() -> None:
    with pytest.raises(ValueError, match="dim >= 2"):
        SplineCoupling(1, RationalQuadraticSpline(4))


@pytest.mark.parametrize("family", AR_FAMILIES)
@pytest.mark.parametrize("hparams", [{"layers": 0}, {"hidden": -1}, {"dim": 0}])
def test_bad_hyper_parameters_are_named(family: str, hparams: dict[str, int]) -> None:
    kwargs = {"dim": 2, **hparams}
    name = next(iter(hparams))
    with pytest.raises(ValueError, match=name):
        build_flow(family, **kwargs)


def test_bad_spline_settings_are_named() -> None:
    with pytest.raises(ValueError, match="bins"):
        build_flow("nsf", dim=2, bins=0)
    with pytest.raises(ValueError, match="bound"):
        build_flow("nsf_ar", dim=2, bound=-1.0)


@pytest.mark.parametrize("family", AR_FAMILIES)
def test_deep_stacks_stay_finite_at_extreme_inputs(family: str) -> None:
    """Scales and shifts must not compound to an overflow across many layers."""
    torch.manual_seed(0)
    flow = build_flow(family, dim=4, layers=20, hidden=32)
    randomize(flow, seed=0, scale=0.5)
    x = torch.tensor([[1e4, -1e4, 1e4, -1e4], [1e4, 1e4, 1e4, 1e4], [0.0, 0.0, 0.0, 0.0]])
    with torch.no_grad():
        z, lp = flow(x)
        decoded = flow.decode(torch.tensor([[50.0, -50.0, 50.0, -50.0], [1e3, 1e3, 1e3, 1e3]]))
    assert torch.isfinite(z).all() and torch.isfinite(lp).all()
    assert torch.isfinite(decoded).all()

"""Every 2-D family integrates to one, sharp densities included, on a grid that follows the flow.

A fixed box grid in data space cannot resolve a density that puts its mass in a thin region
(a trained flow, or one with non-trivial weights and a small scale): the box misses mass or the
step skips the peak. Here the grid lives in the latent space, where the base density is smooth,
and is mapped into data space by the flow's own inverse; the volume of each mapped cell comes
from a central-difference Jacobian of ``decode`` (computed here, independent of the flow's
log-determinant). Then

    integral p(x) dx = integral p(decode(u)) |det d decode / du| du

is a smooth integrand over a box of the latent space, which the trapezoid rule resolves; it
equals the base mass of the box (1 - 2e-11 for [-7, 7]^2) only if ``log_prob`` is the exact
density of the map ``decode`` realises.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flowserve.models import build_flow
from flowserve.models.base import Flow, Standardize
from tests.flow_cases import VECTOR_FAMILIES
from tests.helpers import randomize

LIMIT, POINTS, STEP = 7.0, 101, 1e-5


def _flow(family: str, sharp: bool) -> Flow:
    torch.manual_seed(0)
    flow = build_flow(family, dim=2, **VECTOR_FAMILIES[family]).double()
    randomize(flow, seed=3, scale=0.3)
    if sharp:  # a density 50x narrower on one axis, off-centre: its peak is ~50x higher
        flow.set_preprocess(
            Standardize(torch.tensor([3.0, -2.0]).double(), torch.tensor([0.02, 1.0]).double())
        )
    return flow.eval()


def _mass(flow: Flow) -> float:
    g = torch.linspace(-LIMIT, LIMIT, POINTS, dtype=torch.float64)
    uu, vv = torch.meshgrid(g, g, indexing="ij")
    u = torch.stack([uu.reshape(-1), vv.reshape(-1)], dim=1)
    with torch.no_grad():
        x = flow.decode(u)
        cols = []
        for k in range(2):  # central differences of decode along each latent axis
            e = torch.zeros(2, dtype=torch.float64)
            e[k] = STEP
            cols.append((flow.decode(u + e) - flow.decode(u - e)) / (2 * STEP))
        jac = torch.stack(cols, dim=2)  # [n, x_i, u_k]
        volume = torch.linalg.det(jac).abs()
        density = torch.exp(flow.log_prob(x)) * volume
    field = density.reshape(POINTS, POINTS).numpy()
    cell = (2 * LIMIT / (POINTS - 1)) ** 2
    return float(np.trapezoid(np.trapezoid(field, dx=1.0), dx=1.0) * cell)


@pytest.mark.parametrize("sharp", [False, True], ids=["plain", "sharp"])
# FFJORD (an ODE solve per decode) is left to its own solver-error check in the export gate.
@pytest.mark.parametrize("family", sorted(set(VECTOR_FAMILIES) - {"ffjord"}))
def test_density_integrates_to_one_on_a_transformed_grid(family: str, sharp: bool) -> None:
    flow = _flow(family, sharp)
    box = math.erf(LIMIT / math.sqrt(2)) ** 2
    assert _mass(flow) == pytest.approx(box, abs=2e-3)


def test_a_wrong_log_determinant_is_caught() -> None:
    # The check is not circular: a flow whose log_prob is off by a constant fails it.
    flow = _flow("realnvp", sharp=True)
    original = flow.log_prob
    flow.log_prob = lambda x: original(x) + 0.01  # type: ignore[method-assign]
    assert abs(_mass(flow) - 1.0) > 5e-3

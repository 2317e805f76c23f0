"""Circle/torus and sphere flows: normalization on the manifold, round trips, log-dets, fits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from flowserve.models import build_flow
from flowserve.models.base import Chain, Flow
from flowserve.models.manifold import wrap_angle
from tests.helpers import randomize
from tests.test_continuous import onnx_parity


def _flow(family: str, dim: int, dtype: torch.dtype = torch.float64, scale: float = 0.5) -> Flow:
    torch.manual_seed(0)
    flow = build_flow(family, dim=dim, layers=2, bins=6, hidden=8).to(dtype)
    randomize(flow, seed=0, scale=scale)
    return flow.eval()


def _angles(n: int, dim: int, seed: int) -> torch.Tensor:
    u = torch.rand(n, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return (2 * u - 1) * math.pi


def _unit(n: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


def _grid(n: int) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 * math.pi - math.pi


def test_wrap_angle() -> None:
    x = torch.tensor([math.pi, -math.pi, 3 * math.pi, 0.5 - 2 * math.pi, 1e4])
    y = wrap_angle(x)
    assert ((y >= -math.pi) & (y < math.pi)).all()
    assert torch.allclose(torch.cos(y), torch.cos(x), atol=1e-3)
    assert torch.allclose(torch.sin(y), torch.sin(x), atol=1e-3)


@pytest.mark.parametrize("dim", [1, 2])
def test_circle_density_integrates_to_one(dim: int) -> None:
    flow = _flow("circle", dim)
    g = _grid(300)
    pts = torch.cartesian_prod(*[g] * dim).reshape(-1, dim)
    with torch.no_grad():
        mass = flow.log_prob(pts).exp().sum() * (2 * math.pi / 300) ** dim
    assert mass.item() == pytest.approx(1.0, abs=5e-3)


def test_sphere_density_integrates_to_one_over_area() -> None:
    flow = _flow("sphere", 3, scale=0.2)  # no spike sharper than the grid can resolve
    n = 300
    phi, h = torch.meshgrid(
        _grid(n), (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 - 1, indexing="ij"
    )
    r = torch.sqrt(1 - h * h)
    pts = torch.stack([r * torch.cos(phi), r * torch.sin(phi), h], dim=-1).reshape(-1, 3)
    with torch.no_grad():
        # dA = dphi dh on the sphere (Archimedes).
        mass = flow.log_prob(pts).exp().sum() * (2 * math.pi / n) * (2 / n)
    assert mass.item() == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize(("family", "dim"), [("circle", 1), ("circle", 3), ("sphere", 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roundtrip(family: str, dim: int, dtype: torch.dtype) -> None:
    # At scale 0.5 the random splines get steep enough that float32 inversion loses ~1e-3.
    flow = _flow(family, dim, dtype, scale=0.2)
    x = (_angles(256, dim, 1) if family == "circle" else _unit(256, 1)).to(dtype)
    with torch.no_grad():
        z, lp = flow(x)
        x2 = flow.decode(z)
        s = flow.sample(64, seed=0)
    assert torch.isfinite(lp).all() and torch.isfinite(s).all()
    assert (x2 - x).abs().max() < (1e-4 if dtype == torch.float32 else 1e-9)
    if family == "circle":
        assert ((z >= -math.pi) & (z < math.pi)).all()
    else:
        assert torch.allclose(s.norm(dim=1), torch.ones(64, dtype=dtype), atol=1e-5)


def test_circle_logdet_matches_autograd() -> None:
    flow = _flow("circle", 2)
    xs = _angles(4, 2, 2)
    _, ld = flow.transform(xs)
    _, ld_inv = flow.transform.inverse(flow.transform(xs)[0])
    assert torch.allclose(ld, -ld_inv, atol=1e-9)
    for i in range(4):
        # Rotations wrap by 2 pi: locally a translation, so the Jacobian is unaffected.
        jac = torch.autograd.functional.jacobian(lambda v: flow.transform(v[None])[0][0], xs[i])
        assert ld[i].item() == pytest.approx(torch.linalg.slogdet(jac)[1].item(), abs=1e-8)


def test_sphere_cylinder_logdet_matches_autograd() -> None:
    flow = _flow("sphere", 3)
    cylinder = Chain(list(flow.transform.transforms[1:-1]))
    pts = torch.stack([_angles(4, 1, 3)[:, 0], torch.rand(4, dtype=torch.float64) * 1.8 - 0.9], 1)
    _, ld = cylinder(pts)
    _, ld_full = flow.transform(_cyl_to_x(pts))
    assert torch.allclose(ld, ld_full, atol=1e-9), "the area-preserving charts add nothing"
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda v: cylinder(v[None])[0][0], pts[i])
        assert ld[i].item() == pytest.approx(torch.linalg.slogdet(jac)[1].item(), abs=1e-8)


def _cyl_to_x(pts: torch.Tensor) -> torch.Tensor:
    r = torch.sqrt(1 - pts[:, 1] ** 2)
    return torch.stack([r * torch.cos(pts[:, 0]), r * torch.sin(pts[:, 0]), pts[:, 1]], dim=1)


def _fit(flow: Flow, train: torch.Tensor, steps: int = 80) -> None:
    opt = torch.optim.Adam(flow.parameters(), lr=2e-2)
    gen = torch.Generator().manual_seed(0)
    flow.train()
    for _ in range(steps):
        batch = train[torch.randint(0, len(train), (128,), generator=gen)]
        loss = -flow.log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    flow.eval()


def test_torus_fit_beats_uniform_on_von_mises_data() -> None:
    vm = torch.distributions.VonMises(torch.tensor([2.5, -1.0]), torch.tensor([4.0, 2.0]))
    torch.manual_seed(0)
    train, test = vm.sample((1024,)), vm.sample((512,))
    flow = build_flow("circle", dim=2, layers=2, bins=8, hidden=16)
    _fit(flow, train)
    with torch.no_grad():
        nll = -flow.log_prob(test).mean().item()
    uniform = 2 * math.log(2 * math.pi)
    true = -vm.log_prob(test).sum(1).mean().item()
    assert nll < uniform - 0.5 and nll > true - 0.1, (nll, uniform, true)


def test_sphere_fit_beats_uniform_on_concentrated_data() -> None:
    gen = torch.Generator().manual_seed(0)
    mean = torch.tensor([0.3, -0.5, 0.8])
    raw = torch.randn(1536, 3, generator=gen) * 0.35 + mean / mean.norm()
    data = raw / raw.norm(dim=1, keepdim=True)  # a projected normal, von-Mises-Fisher-like
    torch.manual_seed(0)
    flow = build_flow("sphere", layers=2, bins=8, hidden=16)
    _fit(flow, data[:1024], steps=40)
    with torch.no_grad():
        nll = -flow.log_prob(data[1024:]).mean().item()
    assert nll < math.log(4 * math.pi) - 0.5, nll


def test_bad_hyperparameters_are_refused() -> None:
    with pytest.raises(ValueError, match="dim must be 3"):
        build_flow("sphere", dim=2)
    with pytest.raises(ValueError, match="circle needs"):
        build_flow("circle", dim=0)


@pytest.mark.parametrize(("family", "dim"), [("circle", 2), ("sphere", 3)])
def test_onnx_export_parity(family: str, dim: int, tmp_path: Path) -> None:
    flow = _flow(family, dim, torch.float32)
    x = (_angles(8, dim, 4) if family == "circle" else _unit(8, 4)).float()
    z = _angles(8, dim, 5).float() if family == "circle" else torch.randn(8, 3)
    errs = onnx_parity(flow, x, z, tmp_path)
    assert max(errs) < 1e-4, errs

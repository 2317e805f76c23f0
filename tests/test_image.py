"""Image flows and dequantization: exact round trips, log-dets, bits/dim, a short fit, ONNX."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from sklearn.datasets import load_digits

from flowserve.models import build_flow
from flowserve.models.base import Flow, StandardUniform
from flowserve.models.image import (
    ConvAffineCoupling,
    Squeeze,
    UniformDequantization,
    VariationalDequantization,
    bits_per_dim,
    dequantized_log_likelihood,
)
from tests.helpers import randomize
from tests.test_continuous import onnx_parity

FAMILIES = ["glow_image", "realnvp_image"]
K = 17  # load_digits: 8x8 images with gray levels 0..16


def _digits() -> torch.Tensor:
    return torch.as_tensor(load_digits().images, dtype=torch.float32).reshape(-1, 1, 8, 8)


def _flow(family: str, shape: tuple[int, int, int], dtype: torch.dtype, **kw: object) -> Flow:
    torch.manual_seed(0)
    flow = build_flow(family, shape=shape, levels=2, steps=2, hidden=8, num_values=K, **kw)
    flow = flow.to(dtype)
    randomize(flow, seed=0, scale=0.1)
    return flow.eval()


def test_squeeze_roundtrip_and_layout() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y, ld = Squeeze()(x)
    assert y.shape == (1, 4, 2, 2) and ld.item() == 0
    assert y[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]  # one 2x2 block -> 4 channels
    assert torch.equal(Squeeze().inverse(y)[0], x)


@pytest.mark.parametrize("prior", [False, True], ids=["standard_prior", "learned_prior"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_encode_returns_all_latents_and_roundtrips(
    family: str, dtype: torch.dtype, prior: bool
) -> None:
    flow = _flow(family, (1, 8, 8), dtype, learned_prior=prior)
    x = _digits()[:32].to(dtype) + 0.5
    with torch.no_grad():
        z = flow.encode(x)
        x2 = flow.decode(z)
        s = flow.sample(3, seed=0)
    assert z.shape == (32, 64), "every latent, factored-out ones too, in one flat tensor"
    assert (x2 - x).abs().max() < (1e-4 if dtype == torch.float32 else 1e-9)
    assert s.shape == (3, 1, 8, 8) and torch.isfinite(s).all()


@pytest.mark.parametrize("prior", [False, True], ids=["standard_prior", "learned_prior"])
@pytest.mark.parametrize("family", FAMILIES)
def test_logdet_matches_autograd_on_tiny_image(family: str, prior: bool) -> None:
    flow = _flow(family, (1, 4, 4), torch.float64, learned_prior=prior)
    xs = torch.rand(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    xs = xs * K
    _, ld = flow.transform(xs)
    _, ld_inv = flow.transform.inverse(flow.transform(xs)[0])
    assert torch.allclose(ld, -ld_inv, atol=1e-9)
    for i in range(xs.shape[0]):
        jac = torch.autograd.functional.jacobian(
            lambda v: flow.transform(v.reshape(1, 1, 4, 4))[0][0], xs[i].reshape(-1)
        )
        assert ld[i].item() == pytest.approx(torch.linalg.slogdet(jac)[1].item(), abs=1e-8)


def test_flat_rows_variant_matches_image_variant() -> None:
    img = _flow("glow_image", (1, 4, 4), torch.float64)
    flat = _flow("glow_image", (1, 4, 4), torch.float64, flat=True)  # same seed, same weights
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64) * K
    with torch.no_grad():
        assert torch.allclose(flat.log_prob(x.reshape(5, 16)), img.log_prob(x))
        assert torch.allclose(flat.decode(img.encode(x)), x.reshape(5, 16))


def test_bits_per_dim_of_uniform_model_is_log2_k() -> None:
    # A flow that is uniform on [0, K)^D: the dequantized likelihood is exactly K^-D.
    d = 6
    flow = Flow(_Identity(), StandardUniform((d,), low=0.0, high=float(K)))
    x = torch.randint(0, K, (10, d))
    ll = dequantized_log_likelihood(flow, UniformDequantization(), x)
    assert torch.allclose(bits_per_dim(ll, d), torch.full((10,), math.log2(K)))


def test_variational_bound_is_below_the_exact_likelihood() -> None:
    # Under the uniform model, log P(x) = -D log K, and the bound falls short by KL(q || U) >= 0.
    torch.manual_seed(0)
    d = 6
    flow = Flow(_Identity(), StandardUniform((d,), low=0.0, high=float(K)))
    deq = VariationalDequantization((d,), num_values=K, layers=2, hidden=8)
    randomize(deq, seed=0, scale=0.5)
    x = torch.randint(0, K, (200, d))
    v, log_q = deq(x)
    u = v - x
    assert ((u >= 0) & (u <= 1)).all()
    ll = flow.log_prob(v) - log_q
    assert ll.mean() < -d * math.log(K)


def test_variational_log_q_matches_autograd_density() -> None:
    # log q(u|x) = log N(e) - log|det du/de|: check against the Jacobian of e -> u.
    torch.manual_seed(0)
    deq = VariationalDequantization((1, 2, 2), num_values=K, layers=2, hidden=4).double()
    randomize(deq, seed=1, scale=0.3)
    x = torch.randint(0, K, (1, 1, 2, 2)).double()
    torch.manual_seed(5)
    v, log_q = deq(x)
    torch.manual_seed(5)
    e = torch.randn_like(x)

    def to_u(eps: torch.Tensor) -> torch.Tensor:
        context = x / K - 0.5
        out = eps.reshape(1, 1, 2, 2)
        for c in deq.couplings:
            out, _ = c(out, context)
        return torch.sigmoid(out).reshape(-1)

    jac = torch.autograd.functional.jacobian(to_u, e.reshape(-1))
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(e).sum()
    expected = expected - torch.linalg.slogdet(jac)[1]
    assert torch.allclose(to_u(e), (v - x).reshape(-1))
    assert log_q.item() == pytest.approx(expected.item(), abs=1e-9)


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_short_fit_lowers_bits_per_dim(dequantization: str) -> None:
    data = _digits()
    train, test = data[:1024], data[1500:1700]
    torch.manual_seed(0)
    flow = build_flow("glow_image", shape=(1, 8, 8), levels=2, steps=1, hidden=16, num_values=K)
    deq = (
        UniformDequantization()
        if dequantization == "uniform"
        else VariationalDequantization((1, 8, 8), num_values=K, layers=1, hidden=8)
    )
    opt = torch.optim.Adam([*flow.parameters(), *deq.parameters()], lr=1e-2)
    gen = torch.Generator().manual_seed(0)

    def test_bpd() -> float:
        flow.eval()
        with torch.no_grad():
            torch.manual_seed(1)
            bpd = bits_per_dim(dequantized_log_likelihood(flow, deq, test), 64).mean().item()
        flow.train()
        return bpd

    flow.train()
    flow.log_prob(train[:256] + 0.5)  # data-dependent actnorm initialization
    before = test_bpd()
    for _ in range(25):
        batch = train[torch.randint(0, len(train), (32,), generator=gen)]
        loss = -dequantized_log_likelihood(flow, deq, batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = test_bpd()
    assert math.isfinite(after)
    assert after < before - 0.3 and after < math.log2(K), (before, after)


@pytest.mark.parametrize("family", FAMILIES)
def test_extreme_inputs_are_finite(family: str) -> None:
    flow = _flow(family, (1, 4, 4), torch.float32)
    x = torch.full((2, 1, 4, 4), 1e4)
    x[1] = -1e4
    with torch.no_grad():
        z, lp = flow(x)
        back = flow.decode(torch.full((2, 16), 50.0))
    assert torch.isfinite(z).all() and torch.isfinite(lp).all() and torch.isfinite(back).all()


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="divisible"):
        build_flow("glow_image", shape=(1, 6, 6), levels=2)
    with pytest.raises(ValueError, match=r"shape=\(C, H, W\)"):
        build_flow("glow_image", shape=(8, 8))


@pytest.mark.parametrize("prior", [False, True], ids=["standard_prior", "learned_prior"])
@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_export_parity_on_flat_rows(family: str, tmp_path: Path, prior: bool) -> None:
    flow = _flow(family, (1, 8, 8), torch.float32, flat=True, learned_prior=prior)
    x = _digits()[:8].reshape(8, 64) + 0.5
    z = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    errs = onnx_parity(flow, x, z, tmp_path)
    assert max(errs) < 1e-3, errs


class _Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x.new_zeros(x.shape[0])

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z, z.new_zeros(z.shape[0])


def test_learned_prior_conditions_the_factored_out_half_on_the_kept_half() -> None:
    # Same weights everywhere else: the prior step is the only difference, and with non-trivial
    # weights it changes the density (identity at initialization would hide a missing step).
    plain = _flow("glow_image", (1, 8, 8), torch.float64)
    prior = _flow("glow_image", (1, 8, 8), torch.float64, learned_prior=True)
    x = _digits()[:16].double() + 0.5
    with torch.no_grad():
        assert not torch.allclose(plain.log_prob(x), prior.log_prob(x))
    steps = prior.transform.transforms[-1].top.steps.transforms
    assert isinstance(steps[-1], ConvAffineCoupling)
    assert steps[-1].kept.tolist() == [2, 3]  # conditioned on the channels the next level keeps


def test_variational_dequantize_is_a_valid_bound_on_every_cell() -> None:
    # A tiny image space (2x2 pixels, 2 levels: 16 integer images) where log P(x) is computable:
    # P(x) = E_{u ~ U[0,1)^4} p(x + u - 1/2). The variational bound E_q[log p(v) - log q(u|x)]
    # must stay below it (Jensen); a wrong sign on log q would put it above.
    from flowserve.models.preprocess import Dequantize, dequantized_nll, served_flow

    torch.manual_seed(0)
    shape = (1, 2, 2)
    flow = build_flow(
        "glow_image", shape=shape, levels=1, steps=1, hidden=4, num_values=2, flat=True
    )
    randomize(flow, seed=3, scale=0.3)
    noise = VariationalDequantization(shape, num_values=2, hidden=4)
    randomize(noise, seed=4, scale=0.3)
    flow.set_preprocess(Dequantize(noise=noise, shape=shape)).eval()
    cells = torch.cartesian_prod(*[torch.arange(2.0)] * 4)  # [16, 4]
    served = served_flow(flow)
    u = torch.rand(40000, 4, generator=torch.Generator().manual_seed(5)) - 0.5
    with torch.no_grad():
        log_p = torch.stack(
            [torch.logsumexp(served.log_prob(c + u).double(), 0) - math.log(len(u)) for c in cells]
        )
    assert float(log_p.exp().sum()) <= 1.01  # the mass of the cube [-1/2, 3/2)^4, at most 1
    for c, exact in zip(cells, log_p, strict=True):
        rows = c.reshape(1, 4).numpy().repeat(64, axis=0)
        assert -dequantized_nll(flow, rows, draws=8) <= float(exact) + 0.01
    # In evaluation mode, as served, it scores the cell centres, with no log q.
    with torch.no_grad():
        assert torch.equal(flow.preprocess(cells)[0], cells)
    assert flow.preprocess.kind == "variational" and Dequantize().kind == "uniform"

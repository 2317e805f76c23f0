"""FFJORD: exact trace vs autograd, Hutchinson unbiasedness, solver round trip, ONNX parity."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from flowserve.models import build_flow
from flowserve.models.base import Flow
from tests.helpers import randomize


class _Forward(nn.Module):
    """Flat rows -> (z, log_prob), as the exported forward graph computes."""

    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.flow(x)


class _Decode(nn.Module):
    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.flow.decode(z)


def onnx_parity(flow: nn.Module, x: torch.Tensor, z: torch.Tensor, tmp: Path) -> list[float]:
    """Export (z, log_prob) and decode with the TorchScript-based exporter, run both in
    onnxruntime on a batch size other than the traced one, return max abs errors vs torch."""
    errors = []
    for name, module, inp in [("fwd", _Forward(flow), x), ("dec", _Decode(flow), z)]:
        module.eval()  # the wrapper's mode is what export restores, so set it on the wrapper
        path = tmp / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (inp,),
                str(path),
                dynamo=False,
                input_names=["x"],
                dynamic_axes={"x": {0: "batch"}},
                opset_version=17,
            )
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        small = inp[: max(1, inp.shape[0] - 3)]
        outs = sess.run(None, {"x": small.numpy()})
        with torch.no_grad():
            ref = module(small)
        refs = ref if isinstance(ref, tuple) else (ref,)
        for o, r in zip(outs, refs, strict=True):
            assert np.isfinite(o).all()
            errors.append(float(np.abs(o - r.numpy()).max()))
    return errors


def _flow(dim: int = 3, dtype: torch.dtype = torch.float64, steps: int = 8) -> Flow:
    torch.manual_seed(0)
    flow = build_flow("ffjord", dim=dim, hidden=16, hidden_layers=2, steps=steps).to(dtype)
    randomize(flow, seed=0, scale=0.3)
    return flow.eval()


def test_exact_trace_logdet_matches_autograd() -> None:
    flow = _flow()
    xs = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, ld = flow.transform(xs)
    for i in range(xs.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: flow.transform(v[None])[0][0], xs[i])
        # RK4 quadrature of the trace vs the exact Jacobian of the discrete RK4 map: O(h^4).
        assert ld[i].item() == pytest.approx(torch.linalg.slogdet(jac)[1].item(), abs=1e-5)


def test_dynamics_jacobian_is_exact() -> None:
    dyn = _flow().transform.dynamics
    z = torch.randn(2, 3, dtype=torch.float64)
    t = torch.full((1, 1), 0.3, dtype=torch.float64)
    _, jac = dyn(z, t)
    for i in range(2):
        ref = torch.autograd.functional.jacobian(lambda v: dyn(v[None], t)[0][0], z[i])
        assert torch.allclose(jac[i], ref, atol=1e-12)


def test_hutchinson_is_unbiased_in_training_mode() -> None:
    flow = _flow().train()
    x = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        exact = flow.transform.eval()(x)[1]
        flow.train()
        est = torch.stack([flow.transform(x)[1] for _ in range(200)])
    assert not torch.allclose(est[0], est[1]), "training mode must use a stochastic estimate"
    assert torch.allclose(est.mean(0), exact, atol=4 * est.std(0).max() / 14 + 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roundtrip_and_inverse_logdet(dtype: torch.dtype) -> None:
    flow = _flow(dim=5, dtype=dtype)
    x = 1.5 * torch.randn(64, 5, dtype=dtype, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z, ld = flow.transform(x)
        x2, ld_inv = flow.transform.inverse(z)
    atol = 1e-4 if dtype == torch.float32 else 1e-7
    assert (x2 - x).abs().max() < atol
    assert torch.allclose(ld, -ld_inv, atol=atol)


def test_more_steps_shrink_roundtrip_error() -> None:
    x = 2 * torch.randn(32, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    errs = []
    for steps in (2, 8):
        flow = _flow(steps=steps)
        randomize(flow, seed=1, scale=1.0)  # stiffer dynamics than at init
        with torch.no_grad():
            errs.append((flow.decode(flow.encode(x)) - x).abs().max().item())
    assert errs[1] < errs[0] / 20, errs


def test_extreme_inputs_are_finite() -> None:
    flow = _flow(dim=4, dtype=torch.float32)
    x = torch.tensor([[1e4, -1e4, 1e4, -1e4], [0.0, 0.0, 0.0, 0.0]])
    with torch.no_grad():
        z, lp = flow(x)
        back = flow.decode(torch.full((2, 4), 50.0))
    assert torch.isfinite(z).all() and torch.isfinite(lp).all() and torch.isfinite(back).all()


def test_short_fit_lowers_nll() -> None:
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(512, 2, generator=gen) * torch.tensor([0.4, 1.5]) + torch.tensor([1.0, 0])
    torch.manual_seed(0)
    flow = build_flow("ffjord", dim=2, hidden=16, hidden_layers=1, steps=4)
    opt = torch.optim.Adam(flow.parameters(), lr=5e-2)
    flow.eval()
    with torch.no_grad():
        before = -flow.log_prob(data).mean().item()
    flow.train()
    for _ in range(15):
        loss = -flow.log_prob(data[torch.randint(0, 512, (64,), generator=gen)]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    flow.eval()
    with torch.no_grad():
        after = -flow.log_prob(data).mean().item()
    assert after < before - 0.3, (before, after)


def test_bad_hyperparameters_are_refused() -> None:
    with pytest.raises(ValueError, match="steps"):
        build_flow("ffjord", dim=2, steps=0)
    with pytest.raises(ValueError, match="estimator"):
        build_flow("ffjord", dim=2, estimator="bogus")


def test_onnx_export_parity(tmp_path: Path) -> None:
    flow = _flow(dim=3, dtype=torch.float32, steps=4)
    gen = torch.Generator().manual_seed(5)
    errs = onnx_parity(
        flow, torch.randn(8, 3, generator=gen), torch.randn(8, 3, generator=gen), tmp_path
    )
    assert max(errs) < 1e-4, errs

"""The rational-quadratic spline kernel: monotone, exactly invertible, exact log-det, never NaN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowserve.models.spline import _knots, rational_quadratic_spline

BOUND = 3.0
BINS = 5


def random_params(
    n: int, bins: int = BINS, scale: float = 1.0, dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        scale * torch.randn(n, bins, generator=gen, dtype=dtype),
        scale * torch.randn(n, bins, generator=gen, dtype=dtype),
        scale * torch.randn(n, bins - 1, generator=gen, dtype=dtype),
    )


def knots_bins_and_tails(widths: torch.Tensor, heights: torch.Tensor) -> torch.Tensor:
    """Per row: every x-knot, points inside each bin, the bounds, just past them, far tails."""
    xs = _knots(widths, BOUND, 1e-3)
    mids = 0.5 * (xs[:, 1:] + xs[:, :-1])
    eps = torch.finfo(widths.dtype).eps * BOUND
    n = widths.shape[0]
    extra = torch.tensor(
        [BOUND + eps, -BOUND - eps, BOUND + 1.0, -BOUND - 1.0, 1e4, -1e4, 0.0],
        dtype=widths.dtype,
    ).expand(n, -1)
    return torch.cat([xs, mids, extra], dim=1)


def apply(x: torch.Tensor, params: tuple[torch.Tensor, ...], inverse: bool = False):
    """Apply row-wise parameters ``[n, K]`` to a grid ``x`` of shape ``[n, m]``."""
    m = x.shape[1]
    w, h, d = (p[:, None, :].expand(-1, m, -1) for p in params)
    return rational_quadratic_spline(x, w, h, d, bound=BOUND, inverse=inverse)


def test_zero_parameters_give_the_identity() -> None:
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    zeros = torch.zeros(101, BINS, dtype=torch.float64)
    y, ld = rational_quadratic_spline(x, zeros, zeros, zeros[:, :-1], bound=BOUND)
    assert torch.allclose(y, x, atol=1e-12)
    assert torch.allclose(ld, torch.zeros_like(ld), atol=1e-12)


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_spline_is_strictly_monotone(scale: float) -> None:
    params = random_params(8, scale=scale)
    x = torch.linspace(-2 * BOUND, 2 * BOUND, 2001, dtype=torch.float64).expand(8, -1)
    y, ld = apply(x, params)
    assert (y.diff(dim=1) > 0).all()
    assert torch.isfinite(ld).all()


def test_knots_map_onto_knots_and_bounds_are_fixed() -> None:
    params = random_params(6)
    xs, ys = _knots(params[0], BOUND, 1e-3), _knots(params[1], BOUND, 1e-3)
    assert (xs[:, 0] == -BOUND).all() and (xs[:, -1] == BOUND).all()
    y, _ = apply(xs, params)
    assert torch.allclose(y, ys, atol=1e-12)


def test_boundary_derivatives_are_one_for_continuity_with_the_tails() -> None:
    params = random_params(6, scale=2.0)
    x = torch.tensor([-BOUND, BOUND], dtype=torch.float64).expand(6, -1)
    _, ld = apply(x, params)
    assert torch.allclose(ld, torch.zeros_like(ld), atol=1e-9)


@pytest.mark.parametrize(
    ("dtype", "atol"), [(torch.float64, 1e-10), (torch.float32, 1e-4)], ids=["f64", "f32"]
)
def test_inverse_of_forward_across_bins_knots_and_tails(dtype: torch.dtype, atol: float) -> None:
    params = random_params(16, scale=0.5, dtype=dtype, seed=1)
    x = knots_bins_and_tails(params[0], params[1])
    y, ld = apply(x, params)
    x2, ld2 = apply(y, params, inverse=True)
    assert torch.allclose(x2, x, atol=atol, rtol=0), (x2 - x).abs().max()
    assert torch.allclose(ld, -ld2, atol=atol * 10)
    # The tails are the identity with a zero log-det.
    outside = x.abs() > BOUND
    assert torch.equal(y[outside], x[outside]) and (ld[outside] == 0).all()


def test_inverse_at_y_knots_and_bounds_is_exact() -> None:
    params = random_params(16, seed=2)
    ys = _knots(params[1], BOUND, 1e-3)
    xs = _knots(params[0], BOUND, 1e-3)
    x, _ = apply(ys, params, inverse=True)
    assert torch.allclose(x, xs, atol=1e-10)


def test_log_det_matches_autograd_derivative() -> None:
    params = random_params(4, scale=1.5, seed=3)
    # 98 points miss the bounds, where the clamps make autograd's one-sided derivative 0.
    x = torch.linspace(-BOUND - 1, BOUND + 1, 98, dtype=torch.float64).expand(4, -1).clone()
    x.requires_grad_(True)
    y, ld = apply(x, params)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.allclose(ld, torch.log(grad), atol=1e-9)

    y = y.detach().requires_grad_(True)
    x2, ld2 = apply(y, params, inverse=True)
    (grad2,) = torch.autograd.grad(x2.sum(), y)
    assert torch.allclose(ld2, torch.log(grad2), atol=1e-8)


def test_gradients_reach_the_parameters_and_stay_finite_in_the_tails() -> None:
    params = [p.requires_grad_(True) for p in random_params(3)]
    x = torch.tensor([[-1e4, -1.0, 0.5, BOUND, 1e4]], dtype=torch.float64).expand(3, -1)
    y, ld = apply(x, params)
    (y.sum() + ld.sum()).backward()
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize("value", [1e4, -1e4, 80.0, 0.0])
def test_degenerate_parameters_stay_finite(value: float) -> None:
    """Saturated softmaxes and huge or tiny derivatives: no NaN, no inf, no assert."""
    n = 4
    w = torch.full((n, BINS), 0.0)
    w[:, 0] = value
    h = torch.full((n, BINS), -value)
    d = torch.full((n, BINS - 1), value)
    x = torch.tensor([[-BOUND, -1.0, 0.0, 1e-7, BOUND, 2.0 * BOUND, 1e4]]).expand(n, -1)
    y, ld = apply(x, (w, h, d))
    x2, ld2 = apply(y, (w, h, d), inverse=True)
    assert torch.isfinite(torch.stack([y, ld, x2, ld2])).all()


finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    params=st.lists(finite, min_size=3 * BINS - 1, max_size=3 * BINS - 1),
    inputs=st.lists(finite, min_size=1, max_size=8),
)
def test_random_parameters_and_inputs_never_give_nan(
    params: list[float], inputs: list[float]
) -> None:
    p = torch.tensor(params, dtype=torch.float32)
    x = torch.tensor(inputs, dtype=torch.float32)
    n = x.shape[0]
    w, h, d = (t.expand(n, -1) for t in (p[:BINS], p[BINS : 2 * BINS], p[2 * BINS :]))
    for inverse in (False, True):
        y, ld = rational_quadratic_spline(x, w, h, d, bound=BOUND, inverse=inverse)
        assert torch.isfinite(y).all() and torch.isfinite(ld).all(), (y, ld)
        assert (y.diff() * x.diff() >= 0).all(), "monotone"


def test_kernel_exports_to_onnx_with_parity(tmp_path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")

    class Kernel(torch.nn.Module):
        def forward(self, x, w, h, d):
            y, _ = rational_quadratic_spline(x, w, h, d, bound=BOUND)
            return rational_quadratic_spline(y, w, h, d, bound=BOUND, inverse=True)

    params = random_params(7, dtype=torch.float32, seed=4)
    x = knots_bins_and_tails(params[0], params[1]).float()
    w, h, d = (p[:, None, :].expand(-1, x.shape[1], -1).contiguous() for p in params)
    path = tmp_path / "kernel.onnx"
    names = ["x", "w", "h", "d"]
    torch.onnx.export(
        Kernel(),
        (x[:2], w[:2], h[:2], d[:2]),
        str(path),
        input_names=names,
        output_names=["x2", "ld"],
        dynamic_axes={k: {0: "batch"} for k in [*names, "x2", "ld"]},
        dynamo=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in zip(names, (x, w, h, d), strict=True)})
    want = Kernel()(x, w, h, d)
    # float32 rounding differs between the runtimes; log-dets near knots are the most sensitive.
    for g, e, atol in zip(got, want, (1e-5, 1e-4), strict=True):
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, e.numpy(), atol=atol, rtol=0)

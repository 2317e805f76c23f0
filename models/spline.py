"""Neural spline flows: the rational-quadratic spline kernel, its coupling and autoregressive use.

The kernel is branch-free (comparisons and a sum find the bin, ``gather`` reads its parameters,
``torch.where`` selects the identity tails, the inverse is a closed-form quadratic root), so it
traces and exports to ONNX, and it never asserts or returns NaN: inputs on knots, on the bounds,
far outside them, and degenerate parameters all give finite outputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from flowserve.models.autoregressive import (
    MaskedAutoregressiveTransform,
    autoregressive_stack,
    check_hparams,
)
from flowserve.models.base import Chain, Flow, StandardNormal, Transform, register_family
from flowserve.models.coupling import Coupling, mixing_mask
from flowserve.models.elementwise import ElementwiseTransform
from flowserve.models.nets import mlp, soft_clamp

__all__ = [
    "MIN_BIN_HEIGHT",
    "MIN_BIN_WIDTH",
    "MIN_DERIVATIVE",
    "RationalQuadraticSpline",
    "SplineCoupling",
    "build_nsf",
    "build_nsf_ar",
    "rational_quadratic_spline",
]

MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3
# softplus(0 + shift) + MIN_DERIVATIVE == 1: zero parameters give unit derivatives (identity).
_DERIVATIVE_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))


def _knots(unnormalized: Tensor, bound: float, minimum: float) -> Tensor:
    """``K + 1`` increasing knots from ``-bound`` to ``bound`` (exactly) with gaps of at least
    ``2 * bound * minimum``."""
    bins = unnormalized.shape[-1]
    fractions = minimum + (1.0 - minimum * bins) * F.softmax(unnormalized, dim=-1)
    inner = torch.cumsum(fractions, dim=-1)[..., :-1]
    edge = torch.ones_like(inner[..., :1])
    # Pinning both ends (rather than trusting the cumsum) makes the knots meet the tails exactly.
    return torch.cat([-edge, 2.0 * inner - 1.0, edge], dim=-1) * bound


def _log_derivative(xi: Tensor, slope: Tensor, d0: Tensor, d1: Tensor, denom: Tensor) -> Tensor:
    """``log dy/dx`` of a rational-quadratic bin at relative position ``xi``, in log space so that
    large derivatives cannot overflow when squared."""
    numer = d1 * xi.square() + 2.0 * slope * xi * (1.0 - xi) + d0 * (1.0 - xi).square()
    return 2.0 * torch.log(slope) + torch.log(numer) - 2.0 * torch.log(denom)


def rational_quadratic_spline(
    x: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    bound: float = 5.0,
    inverse: bool = False,
) -> tuple[Tensor, Tensor]:
    """A monotonic rational-quadratic spline on ``[-bound, bound]``, the identity outside.

    The ``K`` bins' widths and heights come from a softmax of the unnormalized parameters (at
    least :data:`MIN_BIN_WIDTH` / :data:`MIN_BIN_HEIGHT` of the interval each), the ``K - 1``
    interior knot derivatives from a shifted softplus (at least :data:`MIN_DERIVATIVE`); the
    derivatives at ``±bound`` are 1 so the spline joins the linear tails smoothly. All-zero
    parameters give the identity.

    Arguments:
        x: The inputs, shape ``[...]`` (the outputs ``y`` if ``inverse``).
        widths: Unnormalized bin widths, shape ``[..., K]``.
        heights: Unnormalized bin heights, shape ``[..., K]``.
        derivatives: Unnormalized interior knot derivatives, shape ``[..., K - 1]``.
        bound: The half-width of the interval the spline covers.
        inverse: Whether to apply the inverse map.

    Returns:
        The transformed values and the element-wise ``log|dy/dx|`` (``log|dx/dy|`` if
        ``inverse``), both shaped like ``x``.

    References:
        | Neural Spline Flows (Durkan et al., 2019)
        | https://arxiv.org/abs/1906.04032

    Example:
        >>> x = torch.tensor([-9.0, -1.0, 0.0, 2.5])
        >>> w, h, d = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 4)
        >>> y, ld = rational_quadratic_spline(x, w, h, d, bound=3.0)
        >>> x2, ld2 = rational_quadratic_spline(y, w, h, d, bound=3.0, inverse=True)
        >>> torch.allclose(x, x2, atol=1e-5), torch.allclose(ld, -ld2, atol=1e-5)
        (True, True)
    """
    xs = _knots(widths, bound, MIN_BIN_WIDTH)
    ys = _knots(heights, bound, MIN_BIN_HEIGHT)
    edge = torch.ones_like(derivatives[..., :1])
    inner = MIN_DERIVATIVE + F.softplus(derivatives + _DERIVATIVE_SHIFT)
    ds = torch.cat([edge, inner, edge], dim=-1)

    # Evaluate the spline on the clamped input everywhere (finite, so torch.where's discarded
    # branch cannot poison gradients) and take the identity outside the interval.
    inside = (x >= -bound) & (x <= bound)
    value = x.clamp(-bound, bound)
    knots = ys if inverse else xs
    # Bin index = number of interior knots at or below the value: torch.searchsorted exports
    # with neither ONNX exporter of torch 2.13, comparisons and a sum do.
    k = (value[..., None] >= knots[..., 1:-1]).sum(dim=-1, keepdim=True)

    x0, x1 = xs.gather(-1, k), xs.gather(-1, k + 1)
    y0, y1 = ys.gather(-1, k), ys.gather(-1, k + 1)
    d0, d1 = ds.gather(-1, k)[..., 0], ds.gather(-1, k + 1)[..., 0]
    width, height = (x1 - x0)[..., 0], (y1 - y0)[..., 0]
    x0, y0 = x0[..., 0], y0[..., 0]
    slope = height / width
    curvature = d0 + d1 - 2.0 * slope

    if inverse:
        dy = value - y0
        a = height * (slope - d0) + dy * curvature
        b = height * d0 - dy * curvature
        c = -slope * dy
        # The root is invariant to a common scale; normalizing keeps b^2 from overflowing.
        scale = torch.maximum(torch.maximum(a.abs(), b.abs()), c.abs())
        scale = scale.clamp_min(torch.finfo(x.dtype).tiny)
        a, b, c = a / scale, b / scale, c / scale
        disc = (b.square() - 4.0 * a * c).clamp_min(0.0)
        # 2c / (-b - sqrt(disc)): no cancellation for b >= 0 and no division by a ~ 0.
        denom = (-b - torch.sqrt(disc)).clamp_max(-torch.finfo(x.dtype).tiny)
        xi = (2.0 * c / denom).clamp(0.0, 1.0)
        out = x0 + xi * width
    else:
        xi = ((value - x0) / width).clamp(0.0, 1.0)
        t = xi * (1.0 - xi)
        out = y0 + height * (slope * xi.square() + d0 * t) / (slope + curvature * t)

    denom_rq = slope + curvature * xi * (1.0 - xi)
    logdet = _log_derivative(xi, slope, d0, d1, denom_rq)
    if inverse:
        logdet = -logdet
    return torch.where(inside, out, x), torch.where(inside, logdet, torch.zeros_like(logdet))


class RationalQuadraticSpline(ElementwiseTransform):
    """The element-wise rational-quadratic spline, parametrized by ``3 * bins - 1`` numbers
    (widths, heights, interior derivatives), for use in coupling and autoregressive layers.

    Arguments:
        bins: The number of bins ``K``.
        bound: The half-width of the interval ``[-bound, bound]``; identity outside.

    References:
        | Neural Spline Flows (Durkan et al., 2019)
        | https://arxiv.org/abs/1906.04032
    """

    def __init__(self, bins: int = 8, bound: float = 5.0) -> None:
        super().__init__()
        check_hparams(bins=bins)
        if not bound > 0 or not math.isfinite(bound):
            raise ValueError(f"spline bound must be a positive finite number, got {bound!r}")
        self.bins, self.bound = bins, float(bound)
        self.num_params = 3 * bins - 1

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k = self.bins
        return params[..., :k], params[..., k : 2 * k], params[..., 2 * k :]

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return rational_quadratic_spline(x, *self._split(params), bound=self.bound)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return rational_quadratic_spline(y, *self._split(params), bound=self.bound, inverse=True)


class SplineCoupling(Coupling):
    """A rational-quadratic spline coupling: the features where ``mask`` is False, splined
    element-wise with parameters predicted by an MLP from the others, which pass unchanged.

    Arguments:
        dim: The number of features (at least 2).
        spline: The element-wise spline.
        hidden: The width of the conditioner's hidden layers.
        hidden_layers: The number of conditioner hidden layers.
        mask: Boolean mask over the features, True for the kept (conditioning) ones (default:
            the first ``dim // 2``; build_nsf uses ``mixing_mask`` from the coupling module).

    References:
        | Neural Spline Flows (Durkan et al., 2019)
        | https://arxiv.org/abs/1906.04032
    """

    def __init__(
        self,
        dim: int,
        spline: RationalQuadraticSpline,
        hidden: int = 64,
        hidden_layers: int = 2,
        mask: Tensor | None = None,
    ) -> None:
        if dim < 2:
            raise ValueError(f"a coupling layer needs dim >= 2 to split, got dim={dim}")
        mask = torch.arange(dim) < dim // 2 if mask is None else mask
        if torch.as_tensor(mask).numel() != dim:
            raise ValueError(f"a coupling mask over {dim} features needs {dim} entries")
        super().__init__(mask)
        self.spline = spline
        self.n_target = int(self.changed.numel())
        self.net = mlp(self.kept.numel(), self.n_target * spline.num_params, hidden, hidden_layers)

    def _couple(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        cond, target = self._split(x)
        # Bounded conditioner inputs: rows far outside the spline's interval cannot push the
        # network into saturated (near-zero derivative) splines.
        params = self.net(soft_clamp(cond, self.spline.bound))
        params = params.reshape(x.shape[0], self.n_target, self.spline.num_params)
        f = self.spline.inverse if inverse else self.spline.forward
        out, ld = f(target, params)
        return self._merge(cond, out), ld.sum(dim=1)


@register_family("nsf")
def build_nsf(
    dim: int,
    layers: int = 5,
    hidden: int = 64,
    bins: int = 8,
    bound: float = 5.0,
    hidden_layers: int = 2,
) -> Flow:
    """A neural spline flow with coupling layers: closed form and one pass in both directions.

    Layers alternate which half of the features is transformed. With ``dim == 1`` there is no
    half to condition on, so each layer is an unconditional (learned) spline instead.

    Arguments:
        dim: The number of features.
        layers: The number of coupling layers.
        hidden: The width of the conditioners' hidden layers.
        bins: The number of spline bins ``K``.
        bound: The spline covers ``[-bound, bound]``; the identity outside.
        hidden_layers: The number of hidden layers per conditioner.

    References:
        | Neural Spline Flows (Durkan et al., 2019)
        | https://arxiv.org/abs/1906.04032

    Example:
        >>> flow = build_nsf(2, layers=2, hidden=8, bins=4)
        >>> flow.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """
    check_hparams(dim=dim, layers=layers, hidden=hidden, bins=bins, hidden_layers=hidden_layers)
    transforms: list[Transform] = []
    for i in range(layers):
        spline = RationalQuadraticSpline(bins, bound)
        if dim == 1:
            transforms.append(MaskedAutoregressiveTransform(1, spline, hidden, hidden_layers))
        else:
            coupling = SplineCoupling(dim, spline, hidden, hidden_layers, mask=mixing_mask(dim, i))
            transforms.append(coupling)
    return Flow(Chain(transforms), StandardNormal((dim,)))


@register_family("nsf_ar")
def build_nsf_ar(
    dim: int,
    layers: int = 5,
    hidden: int = 64,
    bins: int = 8,
    bound: float = 5.0,
    hidden_layers: int = 2,
) -> Flow:
    """An autoregressive neural spline flow: density in one MADE pass, sampling in ``dim``.

    Each layer is a :class:`MaskedAutoregressiveTransform` whose MADE outputs ``3 * bins - 1``
    spline parameters per feature; the order is reversed between layers
    (:func:`~flowserve.models.autoregressive.autoregressive_stack`). Arguments are those of
    :func:`build_nsf`, the conditioners being MADEs.

    References:
        | Neural Spline Flows (Durkan et al., 2019)
        | https://arxiv.org/abs/1906.04032

    Example:
        >>> flow = build_nsf_ar(2, layers=2, hidden=8, bins=4)
        >>> flow.sample(3, seed=0).shape
        torch.Size([3, 2])
    """
    check_hparams(bins=bins)
    return autoregressive_stack(
        dim, lambda: RationalQuadraticSpline(bins, bound), layers, hidden, hidden_layers
    )

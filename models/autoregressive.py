"""Autoregressive flows: MAF and IAF (affine), and the machinery the spline variant reuses.

A :class:`MaskedAutoregressiveTransform` applies an element-wise bijection to each ``x_i`` whose
parameters a :class:`~flowserve.models.made.MADE` predicts from ``x_<i``. Its ``forward`` is one
MADE pass; its ``inverse`` is exactly ``dim`` passes (a fixed count, so it traces and exports).
MAF uses it as is (density in one pass); IAF wraps it in
:class:`~flowserve.models.base.Invert` (sampling in one pass).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowserve.models.base import Chain, Flow, Invert, StandardNormal, Transform, register_family
from flowserve.models.made import MADE

__all__ = [
    "LOG_SCALE_BUDGET",
    "ElementwiseAffine",
    "ElementwiseTransform",
    "MaskedAutoregressiveTransform",
    "affine_bound",
    "alternating_order",
    "build_iaf",
    "build_maf",
    "check_hparams",
]


def check_hparams(**values: int) -> None:
    """Raise a ValueError naming every hyper-parameter that is not a positive integer."""
    bad = [f"{k}={v!r}" for k, v in values.items() if not isinstance(v, int) or v < 1]
    if bad:
        raise ValueError(f"hyper-parameters must be positive integers, got {', '.join(bad)}")


class ElementwiseTransform(nn.Module):
    """A family of scalar bijections ``y = f(x; params)`` applied element-wise.

    ``forward(x, params)`` and ``inverse(y, params)`` take ``x`` of shape ``[...]`` and ``params``
    of shape ``[..., num_params]`` and return the output and the element-wise ``log|dy/dx|`` (resp.
    ``log|dx/dy|``). All-zero parameters must give the identity.
    """

    num_params: int

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError


class ElementwiseAffine(ElementwiseTransform):
    """``y = x * exp(s) + t`` with the log-scale soft-clamped to ``(-bound, bound)``.

    The clamp (``bound * tanh(s / bound)``) keeps every layer's scale within ``exp(±bound)``, so
    stacked layers cannot compound to an overflow, and keeps gradients alive near the limits.

    Arguments:
        bound: The largest absolute log-scale.
    """

    num_params = 2

    def __init__(self, bound: float = 3.0) -> None:
        super().__init__()
        self.bound = float(bound)

    def _shift_log_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = params[..., 0], params[..., 1]
        return shift, self.bound * torch.tanh(raw / self.bound)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_log_scale(params)
        return x * torch.exp(log_scale) + shift, log_scale

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_log_scale(params)
        return (y - shift) * torch.exp(-log_scale), -log_scale


class MaskedAutoregressiveTransform(Transform):
    """An autoregressive transform: ``z_i = f(x_i; MADE(x)_i)`` with ``f`` element-wise.

    ``forward`` (data to latent) is one MADE pass. ``inverse`` is the exact sequential inverse:
    ``dim`` passes, each fixing one more coordinate in the autoregressive order.

    The MADE sees ``squash * tanh(x / squash)`` rather than ``x``: a smooth bijective
    re-coding of its input (nearly the identity on standardized data) that keeps the predicted
    parameters bounded for inputs far outside the data, so shifts cannot grow with ``|x|`` and
    compound across layers.

    Arguments:
        dim: The number of features.
        univariate: The element-wise bijection (its parameters come from the MADE).
        hidden: The width of the MADE's hidden layers.
        hidden_layers: The number of MADE hidden layers.
        order: The autoregressive order, a permutation of ``1..dim`` (default ``1..dim``).
        squash: The soft limit on the MADE's inputs (``None`` feeds ``x`` as is).

    References:
        | Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017)
        | https://arxiv.org/abs/1705.07057

    Example:
        >>> t = MaskedAutoregressiveTransform(3, ElementwiseAffine(), hidden=8)
        >>> z, ld = t(torch.randn(4, 3))
        >>> z.shape, ld.shape
        (torch.Size([4, 3]), torch.Size([4]))
    """

    def __init__(
        self,
        dim: int,
        univariate: ElementwiseTransform,
        hidden: int = 64,
        hidden_layers: int = 2,
        order: Tensor | None = None,
        squash: float | None = 10.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.univariate = univariate
        self.made = MADE(dim, univariate.num_params, hidden, hidden_layers, order)
        self.squash = None if squash is None else float(squash)

    def _params(self, x: Tensor) -> Tensor:
        if self.squash is not None:
            x = self.squash * torch.tanh(x / self.squash)
        return self.made(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, ld = self.univariate(x, self._params(x))
        return z, ld.sum(dim=-1)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        # After pass k the first k coordinates (in the order) are exact, so dim passes suffice;
        # the fixed count unrolls when traced. The last pass's log-det uses exact parameters.
        x = torch.zeros_like(z)
        ld = z.new_zeros(z.shape)
        for _ in range(self.dim):
            x, ld = self.univariate.inverse(z, self._params(x))
        return x, ld.sum(dim=-1)


# The log-scales of a whole stack stay within ±LOG_SCALE_BUDGET (at most ±3 per layer): even
# |x| = 1e4 then maps to |z| < 1e15, whose square is far from float32's overflow (3e38).
LOG_SCALE_BUDGET = 24.0


def affine_bound(layers: int) -> float:
    """The per-layer log-scale bound of an affine stack of ``layers`` layers."""
    return min(3.0, LOG_SCALE_BUDGET / layers)


def alternating_order(dim: int, layer: int) -> Tensor:
    """The order of layer ``layer``: ``1..dim``, reversed on odd layers so that every feature
    is conditioned on every other one somewhere in the stack."""
    order = torch.arange(1, dim + 1)
    return order.flip(0) if layer % 2 else order


@register_family("maf")
def build_maf(dim: int, layers: int = 5, hidden: int = 64, hidden_layers: int = 2) -> Flow:
    """A masked autoregressive flow: density (data to latent) in one pass, sampling in ``dim``.

    Each layer is an affine :class:`MaskedAutoregressiveTransform` (soft-clamped log-scales,
    identity at initialization); the autoregressive order is reversed between layers. The
    log-scale bound per layer is ``min(3, 24 / layers)`` so that the scales of the whole stack
    cannot compound past ``exp(±24)``.

    Arguments:
        dim: The number of features.
        layers: The number of autoregressive layers.
        hidden: The width of each MADE's hidden layers.
        hidden_layers: The number of hidden layers per MADE.

    References:
        | Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017)
        | https://arxiv.org/abs/1705.07057

    Example:
        >>> flow = build_maf(2, layers=2, hidden=8)
        >>> flow.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """
    check_hparams(dim=dim, layers=layers, hidden=hidden, hidden_layers=hidden_layers)
    transforms = [
        MaskedAutoregressiveTransform(
            dim,
            ElementwiseAffine(affine_bound(layers)),
            hidden,
            hidden_layers,
            alternating_order(dim, i),
        )
        for i in range(layers)
    ]
    return Flow(Chain(transforms), StandardNormal((dim,)))


@register_family("iaf")
def build_iaf(dim: int, layers: int = 5, hidden: int = 64, hidden_layers: int = 2) -> Flow:
    """An inverse autoregressive flow: sampling (latent to data) in one pass, density in ``dim``.

    Each layer is an inverted affine :class:`MaskedAutoregressiveTransform`, so
    ``x_i = z_i * exp(s_i(z_<i)) + t_i(z_<i)`` in one MADE pass; ``log_prob`` runs the exact
    sequential inverse. The autoregressive order is reversed between layers, and the log-scale
    bound per layer is ``min(3, 24 / layers)`` as in :func:`build_maf`.

    Arguments:
        dim: The number of features.
        layers: The number of autoregressive layers.
        hidden: The width of each MADE's hidden layers.
        hidden_layers: The number of hidden layers per MADE.

    References:
        | Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016)
        | https://arxiv.org/abs/1606.04934

    Example:
        >>> flow = build_iaf(2, layers=2, hidden=8)
        >>> flow.sample(3, seed=0).shape
        torch.Size([3, 2])
    """
    check_hparams(dim=dim, layers=layers, hidden=hidden, hidden_layers=hidden_layers)
    transforms = [
        Invert(
            MaskedAutoregressiveTransform(
                dim,
                ElementwiseAffine(affine_bound(layers)),
                hidden,
                hidden_layers,
                alternating_order(dim, i),
            )
        )
        for i in range(layers)
    ]
    return Flow(Chain(transforms), StandardNormal((dim,)))

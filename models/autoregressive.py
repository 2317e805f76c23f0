"""Autoregressive flows: one masked autoregressive stack, and MAF and IAF built on it.

A :class:`MaskedAutoregressiveTransform` applies an element-wise bijection to each ``x_i`` whose
parameters a :class:`~flowserve.models.made.MADE` predicts from ``x_<i``. Its ``forward`` is one
MADE pass; its ``inverse`` is exactly ``dim`` passes (a fixed count, so it traces and exports).
:func:`autoregressive_stack` chains such layers, parametrized by the element-wise bijection (as
zuko builds NSF from MAF): MAF uses the affine map (density in one pass), IAF the same stack
inverted (sampling in one pass), and ``nsf_ar`` (:mod:`flowserve.models.spline`) the spline.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from flowserve.models.base import Chain, Flow, Invert, StandardNormal, Transform, register_family
from flowserve.models.elementwise import ElementwiseAffine, ElementwiseTransform
from flowserve.models.made import MADE
from flowserve.models.nets import layer_scale_bound

__all__ = [
    "ElementwiseAffine",
    "ElementwiseTransform",
    "MaskedAutoregressiveTransform",
    "alternating_order",
    "autoregressive_stack",
    "build_iaf",
    "build_maf",
    "check_hparams",
]


def check_hparams(**values: int) -> None:
    """Raise a ValueError naming every hyper-parameter that is not a positive integer."""
    bad = [f"{k}={v!r}" for k, v in values.items() if not isinstance(v, int) or v < 1]
    if bad:
        raise ValueError(f"hyper-parameters must be positive integers, got {', '.join(bad)}")


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

    @property
    def ranks(self) -> tuple[int, ...]:
        """Each feature's 1-based position in the autoregressive order."""
        return tuple(int(r) for r in self.made.order.tolist())

    def per_feature(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log|dz_i/dx_i|)`` per feature, ``[batch, dim]`` each (the Jacobian's diagonal)."""
        return self.univariate(x, self._params(x))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, ld = self.per_feature(x)
        return z, ld.sum(dim=-1)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        # After pass k the first k coordinates (in the order) are exact, so dim passes suffice;
        # the fixed count unrolls when traced. The last pass's log-det uses exact parameters.
        x = torch.zeros_like(z)
        ld = z.new_zeros(z.shape)
        for _ in range(self.dim):
            x, ld = self.univariate.inverse(z, self._params(x))
        return x, ld.sum(dim=-1)


def alternating_order(dim: int, layer: int) -> Tensor:
    """The order of layer ``layer``: ``1..dim``, reversed on odd layers so that every feature
    is conditioned on every other one somewhere in the stack."""
    order = torch.arange(1, dim + 1)
    return order.flip(0) if layer % 2 else order


def autoregressive_stack(
    dim: int,
    univariate: Callable[[], ElementwiseTransform],
    layers: int = 5,
    hidden: int = 64,
    hidden_layers: int = 2,
    inverted: bool = False,
) -> Flow:
    """``layers`` masked autoregressive layers over a standard normal, the order reversed
    between layers: the one stack of MAF, IAF and the autoregressive spline flow.

    Arguments:
        dim: The number of features.
        univariate: Makes each layer's element-wise bijection (called once per layer).
        layers: The number of autoregressive layers.
        hidden: The width of each MADE's hidden layers.
        hidden_layers: The number of hidden layers per MADE.
        inverted: Whether every layer is inverted (IAF: sampling in one pass, density in ``dim``).

    Example:
        >>> flow = autoregressive_stack(2, ElementwiseAffine, layers=2, hidden=8)
        >>> flow.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """
    check_hparams(dim=dim, layers=layers, hidden=hidden, hidden_layers=hidden_layers)
    transforms: list[Transform] = []
    for i in range(layers):
        layer: Transform = MaskedAutoregressiveTransform(
            dim, univariate(), hidden, hidden_layers, alternating_order(dim, i)
        )
        transforms.append(Invert(layer) if inverted else layer)
    return Flow(Chain(transforms), StandardNormal((dim,)))


def _affine(layers: int, scale_bound: float) -> Callable[[], ElementwiseTransform]:
    # Every layer scales every feature, so the stack shares the scale budget over ``layers``.
    bound = layer_scale_bound(scale_bound, layers)
    return lambda: ElementwiseAffine(bound)


@register_family("maf")
def build_maf(
    dim: int, layers: int = 5, hidden: int = 64, hidden_layers: int = 2, scale_bound: float = 3.0
) -> Flow:
    """A masked autoregressive flow: density (data to latent) in one pass, sampling in ``dim``.

    Each layer is an affine :class:`MaskedAutoregressiveTransform` (soft-clamped log-scales,
    identity at initialization); the autoregressive order is reversed between layers. The
    log-scale bound per layer is lowered for deep stacks
    (:func:`~flowserve.models.nets.layer_scale_bound`) so that the scales of the whole stack
    cannot compound past ``exp(±24)``.

    Arguments:
        dim: The number of features.
        layers: The number of autoregressive layers.
        hidden: The width of each MADE's hidden layers.
        hidden_layers: The number of hidden layers per MADE.
        scale_bound: The largest per-layer log-scale.

    References:
        | Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017)
        | https://arxiv.org/abs/1705.07057

    Example:
        >>> flow = build_maf(2, layers=2, hidden=8)
        >>> flow.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """
    check_hparams(layers=layers)
    univariate = _affine(layers, scale_bound)
    return autoregressive_stack(dim, univariate, layers, hidden, hidden_layers)


@register_family("iaf")
def build_iaf(
    dim: int, layers: int = 5, hidden: int = 64, hidden_layers: int = 2, scale_bound: float = 3.0
) -> Flow:
    """An inverse autoregressive flow: sampling (latent to data) in one pass, density in ``dim``.

    The stack of :func:`build_maf` with every layer inverted, so
    ``x_i = z_i * exp(s_i(z_<i)) + t_i(z_<i)`` in one MADE pass; ``log_prob`` runs the exact
    sequential inverse.

    Arguments are those of :func:`build_maf`.

    References:
        | Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016)
        | https://arxiv.org/abs/1606.04934

    Example:
        >>> flow = build_iaf(2, layers=2, hidden=8)
        >>> flow.sample(3, seed=0).shape
        torch.Size([3, 2])
    """
    check_hparams(layers=layers)
    univariate = _affine(layers, scale_bound)
    return autoregressive_stack(dim, univariate, layers, hidden, hidden_layers, inverted=True)

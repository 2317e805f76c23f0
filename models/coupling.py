"""Coupling flows: NICE (additive couplings) and RealNVP (affine couplings).

A coupling layer splits the features with a binary ``mask``: the masked-in (kept) features pass
unchanged and condition a network that transforms the others, so both directions are closed form
and the Jacobian is triangular. Consecutive layers alternate the mask so every feature is
transformed. :class:`Coupling` holds the split and both directions; every coupling layer of the
library (additive, affine, spline, circular, image) is one and only says how it transforms.

Both directions are bounded: log-scales and shifts are soft-clamped, and the log-scale bound
shrinks with depth so that the total scale any feature can accumulate stays within
:data:`~flowserve.models.nets.SCALE_BUDGET` nats. ReLU networks are linear far from the data, so
extreme inputs drive every layer to its clamp; the budget is what keeps ``z`` (and ``z**2`` in
the log-density) inside float32 for inputs up to ``|x| = 1e4`` however deep the flow.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowserve.models.base import Chain, Flow, StandardNormal, Transform, register_family
from flowserve.models.elementwise import ElementwiseAffine, feature_affine
from flowserve.models.nets import SCALE_BUDGET, SHIFT_BOUND, layer_scale_bound, mlp, soft_clamp

__all__ = [
    "SCALE_BUDGET",
    "SHIFT_BOUND",
    "AdditiveCoupling",
    "AffineCoupling",
    "Coupling",
    "build_nice",
    "build_realnvp",
    "check_coupling_dim",
    "checkerboard_mask",
    "layer_scale_bound",
    "mixing_mask",
]


def check_coupling_dim(family: str, dim: int, layers: int = 1) -> None:
    """Raise a clear :class:`ValueError` unless ``dim`` can be split by a coupling layer and
    ``layers`` is at least one."""
    if int(dim) < 2:
        raise ValueError(
            f"{family} needs dim >= 2 (a coupling layer splits the features into two non-empty "
            f"parts), got dim={dim}; for 1-D data use 'planar', 'radial', 'maf' or 'nsf'"
        )
    if int(layers) < 1:
        raise ValueError(f"{family} needs layers >= 1, got {layers}")


def mixing_mask(dim: int, layer: int) -> Tensor:
    """The kept-feature mask of coupling layer ``layer`` in a stack: pairs of layers use
    complementary masks (so every feature is transformed by one layer of each pair), the first
    pair the checkerboard and every later pair a fixed, seeded random half of the features.

    With one fixed partition, features of the same half never condition on each other; new
    partitions let every pair of features interact within a few layers.

    Example:
        >>> mixing_mask(4, 0).tolist(), mixing_mask(4, 1).tolist()
        ([True, False, True, False], [False, True, False, True])
    """
    pair = layer // 2
    if pair == 0 or dim < 3:
        base = checkerboard_mask(dim, 0)
    else:
        order = torch.randperm(dim, generator=torch.Generator().manual_seed(1000 + pair))
        base = torch.zeros(dim, dtype=torch.bool)
        base[order[: dim // 2]] = True
    return base if layer % 2 == 0 else ~base


def checkerboard_mask(dim: int, layer: int) -> Tensor:
    """The kept-feature mask of coupling layer ``layer``: True on the even features for even
    layers, on the odd ones for odd layers.

    Example:
        >>> checkerboard_mask(3, 0).tolist(), checkerboard_mask(3, 1).tolist()
        ([True, False, True], [False, True, False])
    """
    return torch.arange(dim) % 2 == layer % 2


class Coupling(Transform):
    """Splitting and merging by a fixed mask (index buffers, so it exports as Gather).

    A subclass implements ``_couple(x, inverse)``, which ``forward`` and ``inverse`` call. The
    split is along dimension 1: features of rows, or channels of images.

    Arguments:
        mask: Boolean mask over the features, True for the kept (conditioning) ones.
        unconditional: Whether a mask that keeps nothing is allowed (the layer then transforms
            every feature with learned constants).
    """

    def __init__(self, mask: Tensor, unconditional: bool = False) -> None:
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool).reshape(-1)
        kept, changed = torch.nonzero(mask).reshape(-1), torch.nonzero(~mask).reshape(-1)
        if (kept.numel() == 0 and not unconditional) or changed.numel() == 0:
            raise ValueError(
                f"a coupling mask needs kept and transformed features, got {mask.tolist()}"
            )
        self.register_buffer("kept", kept)
        self.register_buffer("changed", changed)
        self.register_buffer("merge", torch.argsort(torch.cat([kept, changed])))

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.index_select(1, self.kept), x.index_select(1, self.changed)

    def _merge(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([a, b], dim=1).index_select(1, self.merge)

    def _couple(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:  # pragma: no cover
        """Transform the changed features of ``x`` (inversely if ``inverse``), keep the rest."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(x, inverse=False)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._couple(z, inverse=True)


class AdditiveCoupling(Coupling):
    """NICE's additive coupling ``z_b = x_b + t(x_a)``: volume preserving (log-det 0).

    Arguments:
        mask: Boolean mask over the features, True for the kept (conditioning) ones.
        hidden: The width of the shift network.
        hidden_layers: The number of hidden layers of the shift network.

    References:
        | NICE: Non-linear Independent Components Estimation (Dinh et al., 2014)
        | https://arxiv.org/abs/1410.8516
    """

    def __init__(self, mask: Tensor, hidden: int = 64, hidden_layers: int = 2) -> None:
        super().__init__(mask)
        self.net = mlp(self.kept.numel(), self.changed.numel(), hidden, hidden_layers)

    def _shift(self, xa: Tensor) -> Tensor:
        return soft_clamp(self.net(xa), SHIFT_BOUND)

    def _couple(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        xa, xb = self._split(x)
        shift = self._shift(xa)
        return self._merge(xa, xb - shift if inverse else xb + shift), x.new_zeros(x.shape[0])


class AffineCoupling(Coupling):
    """RealNVP's affine coupling ``z_b = x_b * exp(s(x_a)) + t(x_a)``, identity at init.

    The log-scale is soft-clamped, ``s = c * tanh(s_raw / c)``, and the shift to
    :data:`~flowserve.models.nets.SHIFT_BOUND` (an
    :class:`~flowserve.models.elementwise.ElementwiseAffine`); the network's last layer starts at
    zero, so the layer starts as the identity.

    Arguments:
        mask: Boolean mask over the features, True for the kept (conditioning) ones.
        hidden: The width of the conditioner network.
        hidden_layers: The number of hidden layers of the conditioner network.
        scale_bound: The bound ``c`` on the log-scale.

    References:
        | Density estimation using Real NVP (Dinh et al., 2016)
        | https://arxiv.org/abs/1605.08803
    """

    def __init__(
        self, mask: Tensor, hidden: int = 64, hidden_layers: int = 2, scale_bound: float = 3.0
    ) -> None:
        super().__init__(mask)
        self.affine = ElementwiseAffine(scale_bound, shift_bound=SHIFT_BOUND)
        self.net = mlp(self.kept.numel(), 2 * self.changed.numel(), hidden, hidden_layers)

    @property
    def scale_bound(self) -> float:
        """The bound on the log-scale."""
        assert self.affine.scale_bound is not None
        return self.affine.scale_bound

    def _couple(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        xa, xb = self._split(x)
        s, t = self.net(xa).chunk(2, dim=1)
        params = torch.stack([t, s], dim=-1)
        yb, ld = (self.affine.inverse if inverse else self.affine)(xb, params)
        return self._merge(xa, yb), ld.sum(dim=1)


@register_family("nice")
def build_nice(dim: int, layers: int = 4, hidden: int = 64, hidden_layers: int = 2) -> Flow:
    """NICE: additive couplings with alternating masks, then a diagonal scaling.

    Arguments:
        dim: The number of features (at least 2).
        layers: The number of coupling layers.
        hidden: The width of each shift network.
        hidden_layers: The number of hidden layers of each shift network.

    References:
        | NICE: Non-linear Independent Components Estimation (Dinh et al., 2014)
        | https://arxiv.org/abs/1410.8516

    Example:
        >>> flow = build_nice(3, layers=2, hidden=8)
        >>> flow.log_prob(torch.zeros(2, 3)).shape
        torch.Size([2])
    """
    check_coupling_dim("nice", dim, layers)
    couplings = [
        AdditiveCoupling(checkerboard_mask(dim, i), hidden, hidden_layers) for i in range(layers)
    ]
    return Flow(Chain([*couplings, feature_affine(dim, shift=False)]), StandardNormal((dim,)))


@register_family("realnvp")
def build_realnvp(
    dim: int, layers: int = 8, hidden: int = 64, hidden_layers: int = 2, scale_bound: float = 3.0
) -> Flow:
    """RealNVP: affine couplings with alternating masks over a standard normal.

    Arguments:
        dim: The number of features (at least 2).
        layers: The number of coupling layers.
        hidden: The width of each conditioner network.
        hidden_layers: The number of hidden layers of each conditioner network.
        scale_bound: The largest per-layer log-scale (lowered for deep flows, see
            :func:`~flowserve.models.nets.layer_scale_bound`).

    References:
        | Density estimation using Real NVP (Dinh et al., 2016)
        | https://arxiv.org/abs/1605.08803

    Example:
        >>> flow = build_realnvp(3, layers=2, hidden=8)
        >>> flow.log_prob(torch.zeros(2, 3)).shape
        torch.Size([2])
    """
    check_coupling_dim("realnvp", dim, layers)
    # Complementary masks in pairs: each feature is transformed by every other layer.
    bound = layer_scale_bound(scale_bound, math.ceil(layers / 2))
    couplings = [
        AffineCoupling(mixing_mask(dim, i), hidden, hidden_layers, scale_bound=bound)
        for i in range(layers)
    ]
    return Flow(Chain(couplings), StandardNormal((dim,)))

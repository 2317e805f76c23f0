"""Coupling flows: NICE (additive couplings) and RealNVP (affine couplings).

A coupling layer splits the features with a binary mask: the masked-in features pass unchanged
and condition a network that transforms the others, so both directions are closed form and the
Jacobian is triangular. Consecutive layers alternate the mask so every feature is transformed.

Both directions are bounded: log-scales and shifts are soft-clamped, and the log-scale bound
shrinks with depth so that the total scale any feature can accumulate stays within
:data:`SCALE_BUDGET` nats. ReLU networks are linear far from the data, so extreme inputs drive
every layer to its clamp; the budget is what keeps ``z`` (and ``z**2`` in the log-density)
inside float32 for inputs up to ``|x| = 1e4`` however deep the flow.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowserve.models.base import Chain, Flow, StandardNormal, Transform, register_family
from flowserve.models.nets import mlp, soft_clamp

__all__ = [
    "SCALE_BUDGET",
    "SHIFT_BOUND",
    "AdditiveCoupling",
    "AffineCoupling",
    "ElementwiseAffine",
    "build_nice",
    "build_realnvp",
    "check_coupling_dim",
    "checkerboard_mask",
    "layer_scale_bound",
    "mixing_mask",
]

# Total |log-scale| (nats) the couplings of one flow may apply to a feature: e^24 * 1e4 ~ 3e14,
# whose square (the Gaussian log-density term) is far from the float32 limit of 3e38.
SCALE_BUDGET = 24.0
# Bound on each predicted shift; typical shifts on standardized data are a few units.
SHIFT_BOUND = 100.0


def check_coupling_dim(family: str, dim: int) -> None:
    """Raise a clear :class:`ValueError` unless ``dim`` can be split by a coupling layer."""
    if int(dim) < 2:
        raise ValueError(
            f"{family} needs dim >= 2 (a coupling layer splits the features into two non-empty "
            f"parts), got dim={dim}; for 1-D data use 'planar', 'radial', 'maf' or 'nsf'"
        )


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


def checkerboard_mask(dim: int, parity: int) -> Tensor:
    """Boolean mask over ``dim`` features, True where the feature index has ``parity`` (0 or 1).

    True marks the features a coupling layer keeps (and conditions on).
    """
    return torch.arange(dim) % 2 == parity % 2


def layer_scale_bound(clamp: float, transforms_per_feature: int) -> float:
    """The per-layer log-scale bound: ``clamp``, shrunk so the total stays in the budget."""
    return min(float(clamp), SCALE_BUDGET / max(1, int(transforms_per_feature)))


class ElementwiseAffine(Transform):
    """Learnable per-feature affine map ``z = x * exp(log_scale) + shift``, identity at init.

    With ``shift=False`` it is NICE's final diagonal scaling layer.

    Arguments:
        dim: The number of features.
        shift: Whether to learn a shift as well as a scale.

    Example:
        >>> t = ElementwiseAffine(3)
        >>> z, ld = t(torch.randn(2, 3))
        >>> ld
        tensor([0., 0.], grad_fn=<ExpandBackward0>)
    """

    def __init__(self, dim: int, shift: bool = True) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.shift = nn.Parameter(torch.zeros(dim)) if shift else None

    def _shift(self, x: Tensor) -> Tensor:
        return x if self.shift is None else x + self.shift

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self._shift(x * torch.exp(self.log_scale))
        return z, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if self.shift is not None:
            z = z - self.shift
        return z * torch.exp(-self.log_scale), -self.log_scale.sum().expand(z.shape[0])


class _Coupling(Transform):
    """Splitting and merging by a fixed mask (index buffers, so it exports as Gather)."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool).reshape(-1)
        kept, changed = torch.nonzero(mask).reshape(-1), torch.nonzero(~mask).reshape(-1)
        if kept.numel() == 0 or changed.numel() == 0:
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


class AdditiveCoupling(_Coupling):
    """NICE's additive coupling ``z_b = x_b + t(x_a)``: volume preserving (log-det 0).

    Arguments:
        mask: Boolean mask over the features, True for the kept (conditioning) ones.
        hidden: The width of the shift network.
        depth: The number of hidden layers of the shift network.

    References:
        | NICE: Non-linear Independent Components Estimation (Dinh et al., 2014)
        | https://arxiv.org/abs/1410.8516
    """

    def __init__(self, mask: Tensor, hidden: int = 64, depth: int = 2) -> None:
        super().__init__(mask)
        self.net = mlp(self.kept.numel(), self.changed.numel(), hidden, depth)

    def _shift(self, xa: Tensor) -> Tensor:
        return soft_clamp(self.net(xa), SHIFT_BOUND)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        xa, xb = self._split(x)
        return self._merge(xa, xb + self._shift(xa)), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        za, zb = self._split(z)
        return self._merge(za, zb - self._shift(za)), z.new_zeros(z.shape[0])


class AffineCoupling(_Coupling):
    """RealNVP's affine coupling ``z_b = x_b * exp(s(x_a)) + t(x_a)``, identity at init.

    The log-scale is soft-clamped, ``s = c * tanh(s_raw / c)``, and the shift to
    :data:`SHIFT_BOUND`; the network's last layer starts at zero, so the layer starts as the
    identity.

    Arguments:
        mask: Boolean mask over the features, True for the kept (conditioning) ones.
        hidden: The width of the conditioner network.
        depth: The number of hidden layers of the conditioner network.
        scale_bound: The bound ``c`` on the log-scale.

    References:
        | Density estimation using Real NVP (Dinh et al., 2016)
        | https://arxiv.org/abs/1605.08803
    """

    def __init__(
        self, mask: Tensor, hidden: int = 64, depth: int = 2, scale_bound: float = 3.0
    ) -> None:
        super().__init__(mask)
        if not scale_bound > 0:
            raise ValueError(f"scale_bound must be positive, got {scale_bound}")
        self.scale_bound = float(scale_bound)
        self.net = mlp(self.kept.numel(), 2 * self.changed.numel(), hidden, depth)

    def _params(self, xa: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.net(xa).chunk(2, dim=1)
        return soft_clamp(s, self.scale_bound), soft_clamp(t, SHIFT_BOUND)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        xa, xb = self._split(x)
        s, t = self._params(xa)
        return self._merge(xa, xb * torch.exp(s) + t), s.sum(dim=1)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        za, zb = self._split(z)
        s, t = self._params(za)
        return self._merge(za, (zb - t) * torch.exp(-s)), -s.sum(dim=1)


def _check_layers(family: str, layers: int) -> None:
    if int(layers) < 1:
        raise ValueError(f"{family} needs layers >= 1, got {layers}")


@register_family("nice")
def build_nice(dim: int, layers: int = 4, hidden: int = 64, depth: int = 2) -> Flow:
    """NICE: additive couplings with alternating masks, then a diagonal scaling.

    Arguments:
        dim: The number of features (at least 2).
        layers: The number of coupling layers.
        hidden: The width of each shift network.
        depth: The number of hidden layers of each shift network.

    References:
        | NICE: Non-linear Independent Components Estimation (Dinh et al., 2014)
        | https://arxiv.org/abs/1410.8516

    Example:
        >>> flow = build_nice(3, layers=2, hidden=8)
        >>> flow.log_prob(torch.zeros(2, 3)).shape
        torch.Size([2])
    """
    check_coupling_dim("nice", dim)
    _check_layers("nice", layers)
    couplings = [AdditiveCoupling(checkerboard_mask(dim, i), hidden, depth) for i in range(layers)]
    return Flow(Chain([*couplings, ElementwiseAffine(dim, shift=False)]), StandardNormal((dim,)))


@register_family("realnvp")
def build_realnvp(
    dim: int, layers: int = 8, hidden: int = 64, depth: int = 2, clamp: float = 3.0
) -> Flow:
    """RealNVP: affine couplings with alternating masks over a standard normal.

    Arguments:
        dim: The number of features (at least 2).
        layers: The number of coupling layers.
        hidden: The width of each conditioner network.
        depth: The number of hidden layers of each conditioner network.
        clamp: The largest per-layer log-scale (lowered for deep flows, see
            :func:`layer_scale_bound`).

    References:
        | Density estimation using Real NVP (Dinh et al., 2016)
        | https://arxiv.org/abs/1605.08803

    Example:
        >>> flow = build_realnvp(3, layers=2, hidden=8)
        >>> flow.log_prob(torch.zeros(2, 3)).shape
        torch.Size([2])
    """
    check_coupling_dim("realnvp", dim)
    _check_layers("realnvp", layers)
    # Complementary masks in pairs: each feature is transformed by every other layer.
    bound = layer_scale_bound(clamp, math.ceil(layers / 2))
    couplings = [
        AffineCoupling(mixing_mask(dim, i), hidden, depth, scale_bound=bound) for i in range(layers)
    ]
    return Flow(Chain(couplings), StandardNormal((dim,)))

"""Flows for images and other integer data: dequantization, bits/dim, multi-scale Glow/RealNVP.

Integer data ``x in {0..K-1}^D`` has no density; a flow models the continuous ``v = x + u`` with
``u in [0, 1)^D`` drawn by a *dequantizer*, and ``log p(v) - log q(u | x)`` is a lower bound on the
discrete log-likelihood ``log P(x)`` (Theis et al., 2016; Ho et al., 2019). Uniform dequantization
has ``log q = 0``; variational dequantization learns ``q(u | x)`` with a conditional flow.
Dequantizers are training-time pieces: the exported graphs score the rows they are given.

The multi-scale flows (Dinh et al., 2016; Kingma & Dhariwal, 2018) take ``[N, C, H, W]`` images
(``H`` and ``W`` divisible by ``2 ** levels``) scaled from ``[0, K)`` to ``[-0.5, 0.5)``. Each level
squeezes (space to channels), runs ``steps`` flow steps and factors half of the channels out;
``encode`` returns ALL latents, the factored-out ones too, flattened and concatenated into one
``[N, C*H*W]`` tensor, so ``decode(encode(x)) == x`` up to float rounding. With ``flat=True`` the
flow takes and returns flat rows ``[N, C*H*W]`` (row-major ``C, H, W``), as the exported graphs do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from flowserve.models.base import (
    Chain,
    Flow,
    Standardize,
    StandardNormal,
    Transform,
    register_family,
    sum_except_batch,
)
from flowserve.models.coupling import Coupling
from flowserve.models.elementwise import ElementwiseAffine
from flowserve.models.glow import ActNorm, LULinear
from flowserve.models.nets import mlp

__all__ = [
    "ConvAffineCoupling",
    "MultiScale",
    "PerPixel",
    "Squeeze",
    "Unflatten",
    "UniformDequantization",
    "VariationalDequantization",
    "bits_per_dim",
    "build_glow_image",
    "build_realnvp_image",
    "dequantized_log_likelihood",
]

# Bounds of the couplings' log-scale and shift (soft-clamped): finite outputs for any input.
_SCALE_BOUND = 2.0
_SHIFT_BOUND = 10.0


def _check_shape(shape: Sequence[int], levels: int) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ValueError(f"image flows need shape=(C, H, W) with positive sizes, got {shape}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    c, h, w = (int(s) for s in shape)
    k = 2**levels
    if h % k or w % k:
        raise ValueError(f"H and W must be divisible by 2**levels = {k}, got shape {shape}")
    return c, h, w


class Unflatten(Transform):
    """Reshape flat rows ``[N, prod(shape)]`` to ``[N, *shape]`` (log-det 0); inverse flattens."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.reshape(-1, *self.shape), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z.reshape(z.shape[0], -1), z.new_zeros(z.shape[0])


class Squeeze(Transform):
    """Space to channels: ``[N, C, H, W] -> [N, 4C, H/2, W/2]`` (a permutation, log-det 0)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _, c, h, w = x.shape
        x = x.reshape(-1, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(-1, 4 * c, h // 2, w // 2), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        _, c, h, w = z.shape
        z = z.reshape(-1, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return z.reshape(-1, c // 4, 2 * h, 2 * w), z.new_zeros(z.shape[0])


class PerPixel(Transform):
    """Apply a transform of channel vectors at every pixel (e.g. actnorm, a 1x1 convolution).

    The vector transform sees ``[N*H*W, C]`` rows, so Glow's :class:`ActNorm` initializes from
    per-channel statistics over batch and space, and :class:`LULinear` becomes the invertible
    1x1 convolution; the log-determinant is summed over the pixels.

    Arguments:
        transform: A transform of ``[rows, C]`` vectors.
    """

    def __init__(self, transform: Transform) -> None:
        super().__init__()
        self.transform = transform

    def _map(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        _, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(-1, c)
        y, ld = (self.transform.inverse if inverse else self.transform)(rows)
        y = y.reshape(-1, h, w, c).permute(0, 3, 1, 2)
        return y, ld.reshape(-1, h * w).sum(dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._map(x, inverse=False)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._map(z, inverse=True)


def _conv_net(in_channels: int, out_channels: int, hidden: int) -> nn.Sequential:
    """3x3 -> 1x1 -> 3x3 convolutions with ReLU; the last starts at zero (identity coupling)."""
    last = nn.Conv2d(hidden, out_channels, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden, 1),
        nn.ReLU(),
        last,
    )


class ConvAffineCoupling(Coupling):
    """Affine coupling over channels with a small conv net, identity at init.

    ``z_b = x_b * exp(s(x_a)) + t(x_a)`` with soft-clamped ``s`` and ``t``; ``mask`` picks the
    channels that condition (alternate it between steps when no 1x1 convolution mixes channels).

    Arguments:
        mask: Boolean mask over the channels, True for the kept (conditioning) ones (at least
            one of each).
        hidden: The width of the conv net.

    References:
        | Density estimation using Real NVP (Dinh et al., 2016)
        | https://arxiv.org/abs/1605.08803
    """

    def __init__(self, mask: Tensor, hidden: int = 32) -> None:
        channels = torch.as_tensor(mask).numel()
        if channels < 2:
            raise ValueError(f"a channel coupling needs >= 2 channels, got {channels}")
        super().__init__(mask)  # the split indexes dim 1: the channels
        self.affine = ElementwiseAffine(_SCALE_BOUND, shift_bound=_SHIFT_BOUND)
        self.net = _conv_net(self.kept.numel(), 2 * self.changed.numel(), hidden)

    def _couple(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        xa, xb = self._split(x)
        s, t = self.net(xa).chunk(2, dim=1)
        yb, ld = (self.affine.inverse if inverse else self.affine)(xb, torch.stack([t, s], -1))
        return self._merge(xa, yb), sum_except_batch(ld)


def channel_halves(channels: int, layer: int) -> Tensor:
    """The kept-channel mask of step ``layer``: the first ``channels // 2`` channels on even
    steps, the last ``channels - channels // 2`` on odd ones.

    Example:
        >>> channel_halves(4, 0).tolist(), channel_halves(3, 1).tolist()
        ([True, True, False, False], [False, True, True])
    """
    first = torch.arange(channels) < channels // 2
    return first if layer % 2 == 0 else torch.arange(channels) >= channels // 2


class MultiScale(Transform):
    """One level of a multi-scale flow: squeeze, ``steps``, then factor half the channels out.

    ``forward`` maps ``[N, C, H, W]`` to flat latents ``[N, C*H*W]``: the factored-out half
    (flattened) followed by the latents of ``inner`` (the next level) for the other half. The last
    level (``inner=None``) factors everything out.

    Arguments:
        steps: The flow steps run after the squeeze.
        inner: The next level, or ``None`` for the last one.
    """

    def __init__(self, steps: Sequence[Transform], inner: MultiScale | None = None) -> None:
        super().__init__()
        self.squeeze = Squeeze()
        self.steps = Chain(steps)
        self.inner = inner

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x, _ = self.squeeze(x)
        x, ld = self.steps(x)
        if self.inner is None:
            return x.reshape(x.shape[0], -1), ld
        half = x.shape[1] // 2
        z_inner, ld_inner = self.inner(x[:, half:])
        return torch.cat([x[:, :half].reshape(x.shape[0], -1), z_inner], dim=1), ld + ld_inner

    def inverse(
        self, z: Tensor, shape: tuple[int, int, int] | None = None
    ) -> tuple[Tensor, Tensor]:
        # ``shape`` is this level's squeezed [C, H, W] (a flat latent does not carry it).
        assert shape is not None, "call the top level through a flow (it knows the shape)"
        c, h, w = shape
        if self.inner is None:
            x, ld = z.reshape(-1, c, h, w), z.new_zeros(z.shape[0])
        else:
            half = c // 2
            out = half * h * w
            x_inner, ld = self.inner.inverse(z[:, out:], (4 * (c - half), h // 2, w // 2))
            x = torch.cat([z[:, :out].reshape(-1, half, h, w), x_inner], dim=1)
        x, ld_steps = self.steps.inverse(x)
        x, _ = self.squeeze.inverse(x)
        return x, ld + ld_steps


class _MultiScaleFlow(Transform):
    """The top of a :class:`MultiScale` stack: knows the image shape, so inverse can unsqueeze."""

    def __init__(self, shape: tuple[int, int, int], top: MultiScale) -> None:
        super().__init__()
        self.shape = shape
        self.top = top

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.top(x)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        c, h, w = self.shape
        return self.top.inverse(z, (4 * c, h // 2, w // 2))


def split_prior(channels: int, hidden: int) -> ConvAffineCoupling:
    """Glow's learned prior at a split: the factored-out half (the first ``channels // 2``
    channels) is Gaussian with a mean and scale predicted from the kept half, instead of
    standard normal. Written as an affine coupling conditioned on the kept half,
    ``z = (x_out - mu(x_kept)) / sigma(x_kept)``, the base stays standard normal and the step
    exports and inverts like any other (identity at initialization).

    Example:
        >>> prior = split_prior(4, hidden=8)
        >>> x = torch.randn(2, 4, 3, 3)
        >>> torch.equal(prior(x)[0][:, 2:], x[:, 2:])  # the kept half passes unchanged
        True
    """
    kept = torch.arange(channels) >= channels // 2  # MultiScale keeps the second half
    return ConvAffineCoupling(kept, hidden)


def _build_multiscale(
    shape: Sequence[int],
    levels: int,
    steps: int,
    hidden: int,
    num_values: int,
    flat: bool,
    glow: bool,
    learned_prior: bool,
) -> Flow:
    c, h, w = _check_shape(shape, levels)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if num_values < 2:
        raise ValueError(f"num_values must be >= 2, got {num_values}")
    # Channels at each level after the squeeze: 4C, then 4 * (half of the kept channels), ...
    chans, channels = [], c
    for _ in range(levels):
        channels *= 4
        chans.append(channels)
        channels = channels - channels // 2
    inner: MultiScale | None = None
    for level, ch in reversed(list(enumerate(chans))):
        layer: list[Transform] = []
        for i in range(steps):
            # Glow's 1x1 convolutions mix the channels, so one fixed split suffices there.
            mask = channel_halves(ch, 0 if glow else i)
            layer.append(PerPixel(ActNorm(ch)))
            if glow:
                layer.append(PerPixel(LULinear(ch)))
            layer.append(ConvAffineCoupling(mask, hidden))
        if learned_prior and level < levels - 1:
            layer.append(split_prior(ch, hidden))
        inner = MultiScale(layer, inner)
    assert inner is not None
    # Integer levels [0, K) -> [-0.5, 0.5): log-det -D log K, so log_prob is the density of the
    # dequantized data on [0, K)^D and bits/dim follow directly.
    full = (c, h, w)
    scale = Standardize(torch.full(full, num_values / 2.0), torch.full(full, float(num_values)))
    parts: list[Transform] = [Unflatten(full)] if flat else []
    parts += [scale, _MultiScaleFlow(full, inner)]
    return Flow(Chain(parts), StandardNormal((c * h * w,)))


@register_family("glow_image")
def build_glow_image(
    shape: Sequence[int] = (1, 8, 8),
    levels: int = 2,
    steps: int = 4,
    hidden: int = 64,
    num_values: int = 256,
    flat: bool = False,
    learned_prior: bool = False,
) -> Flow:
    """Multi-scale Glow: per level squeeze, ``steps`` x (actnorm, 1x1 conv (LU), affine
    coupling), split.

    Arguments:
        shape: The image shape ``(C, H, W)``; ``H, W`` divisible by ``2 ** levels``.
        levels: The number of scales.
        steps: The number of flow steps per scale.
        hidden: The width of the couplings' conv nets.
        num_values: The number ``K`` of integer levels: data lie in ``[0, K)`` (dequantized).
        flat: Whether the flow takes flat rows ``[N, C*H*W]`` instead of ``[N, C, H, W]``.
        learned_prior: Whether each split's factored-out half gets a learned conditional
            Gaussian prior (:func:`split_prior`) instead of a standard normal.

    References:
        | Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018)
        | https://arxiv.org/abs/1807.03039

    Example:
        >>> flow = build_glow_image((1, 4, 4), levels=2, steps=1, hidden=8, num_values=17)
        >>> x = torch.randint(0, 17, (2, 1, 4, 4)).float()
        >>> flow.encode(x).shape
        torch.Size([2, 16])
    """
    return _build_multiscale(
        shape, levels, steps, hidden, num_values, flat, glow=True, learned_prior=learned_prior
    )


@register_family("realnvp_image")
def build_realnvp_image(
    shape: Sequence[int] = (1, 8, 8),
    levels: int = 2,
    steps: int = 4,
    hidden: int = 64,
    num_values: int = 256,
    flat: bool = False,
    learned_prior: bool = False,
) -> Flow:
    """Multi-scale RealNVP: per level squeeze, ``steps`` x (actnorm, affine coupling on
    alternating channel halves), split. Arguments as :func:`build_glow_image`.

    References:
        | Density estimation using Real NVP (Dinh et al., 2016)
        | https://arxiv.org/abs/1605.08803
    """
    return _build_multiscale(
        shape, levels, steps, hidden, num_values, flat, glow=False, learned_prior=learned_prior
    )


class UniformDequantization(nn.Module):
    """``v = x + u`` with ``u ~ U[0, 1)^D``; ``log q(u | x) = 0``.

    ``forward(x)`` returns ``(v, log_q)`` with ``log_q`` of shape ``[N]``.

    References:
        | A note on the evaluation of generative models (Theis et al., 2016)
        | https://arxiv.org/abs/1511.01844
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.to(torch.get_default_dtype()) if not x.is_floating_point() else x
        return x + torch.rand_like(x), x.new_zeros(x.shape[0])


class _ConditionalAffine(nn.Module):
    """Affine coupling of the noise ``e`` (checkerboard ``mask``) conditioned on the data."""

    def __init__(self, shape: tuple[int, ...], mask: Tensor, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.affine = ElementwiseAffine(_SCALE_BOUND, shift_bound=_SHIFT_BOUND)
        if len(shape) == 3:
            self.net: nn.Module = _conv_net(2 * shape[0], 2 * shape[0], hidden)
        else:
            d = math.prod(shape)
            self.net = nn.Sequential(mlp(2 * d, 2 * d, hidden), nn.Unflatten(1, (2, *shape)))

    def forward(self, e: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.cat([e * self.mask, context], dim=1)
        out = self.net(h)
        s, t = out.chunk(2, dim=1) if out.dim() == 4 else out.unbind(1)
        # Zero parameters where the mask keeps the noise: the identity there (clamp(0) = 0).
        free = 1 - self.mask
        y, ld = self.affine(e, torch.stack([t * free, s * free], dim=-1))
        return y, sum_except_batch(ld)


class VariationalDequantization(nn.Module):
    """``u = sigmoid(g(e; x))``, ``e ~ N(0, I)``, ``g`` a conditional affine-coupling flow.

    ``forward(x)`` returns ``(v = x + u, log q(u | x))``; train it jointly with the flow by
    maximizing :func:`dequantized_log_likelihood`, a lower bound on ``log P(x)``.

    Arguments:
        shape: The event shape of ``x``: ``(C, H, W)`` (conv conditioners) or ``(D,)`` (MLPs).
        num_values: The number ``K`` of integer levels (the context is ``x / K - 0.5``).
        layers: The number of conditional couplings (alternating checkerboards).
        hidden: The width of the conditioner networks.

    References:
        | Flow++: Improving Flow-Based Generative Models with Variational Dequantization and
        | Architecture Design (Ho et al., 2019)
        | https://arxiv.org/abs/1902.00275
    """

    def __init__(
        self, shape: Sequence[int], num_values: int = 256, layers: int = 2, hidden: int = 32
    ) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.num_values = int(num_values)
        grids = torch.meshgrid(*[torch.arange(s) for s in self.shape], indexing="ij")
        board = sum(grids, torch.zeros(self.shape, dtype=torch.long)) % 2
        self.couplings = nn.ModuleList(
            _ConditionalAffine(self.shape, (board == i % 2).float(), hidden) for i in range(layers)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.to(torch.get_default_dtype()) if not x.is_floating_point() else x
        context = x / self.num_values - 0.5
        e = torch.randn_like(x)
        log_q = -0.5 * sum_except_batch(e * e) - 0.5 * e[0].numel() * math.log(2 * math.pi)
        for coupling in self.couplings:
            e, ld = coupling(e, context)
            log_q = log_q - ld
        # Change of variables through the sigmoid: log sigmoid'(e) = logsig(e) + logsig(-e).
        log_q = log_q - sum_except_batch(F.logsigmoid(e) + F.logsigmoid(-e))
        return x + torch.sigmoid(e), log_q


def dequantized_log_likelihood(flow: Flow, dequantizer: nn.Module, x: Tensor) -> Tensor:
    """``log p(x + u) - log q(u | x)``, ``u ~ q``: a one-sample lower bound on ``log P(x)``."""
    v, log_q = dequantizer(x)
    return flow.log_prob(v) - log_q


def bits_per_dim(log_likelihood: Tensor, num_dims: int) -> Tensor:
    """``-log_likelihood / (D ln 2)``: nats per row to bits per dimension.

    Example:
        >>> bits_per_dim(torch.tensor([-64 * math.log(256)]), 64)
        tensor([8.])
    """
    return -log_likelihood / (num_dims * math.log(2))

"""Flows on manifolds: circles and tori (angles) and the 2-sphere (unit vectors in R^3).

"circle": rows of ``dim`` angles (a torus for ``dim > 1``). Every input is first wrapped to
``[-pi, pi)`` (angles are equal mod ``2 pi``), then layers of circular rational-quadratic splines
followed by a rotation (Rezende et al., 2020) map it to the uniform base on ``[-pi, pi)^dim``. The
spline fixes ``±pi`` with slope 1 at both ends, so with the rotation (mod ``2 pi``) it is a smooth
bijection of the circle. On a torus, each layer transforms alternate angles conditioned on
``(cos, sin)`` of the others. ``log_prob`` is the density with respect to the product arc-length
measure (Lebesgue on ``[-pi, pi)^dim``, total mass ``(2 pi)^dim``).

"sphere": unit vectors ``x in S^2``. The cylinder chart ``x -> (phi, h) = (atan2(x2, x1), x3)`` is
area-preserving (Archimedes), so a flow on the cylinder ``[-pi, pi) x [-1, 1]`` (a circular spline
for ``phi`` given ``h`` and an interval spline for ``h`` given ``phi``, alternating) carries over
with the same log-determinant. The latent is again a unit vector, uniform on ``S^2`` (density
``1 / (4 pi)``). ``log_prob`` is the density with respect to the surface-area measure of ``S^2``
(total mass ``4 pi``). The chart projects its input onto the sphere (``x / |x|``); trained through
the pipeline, rows off the sphere are scored as impossible first
(:class:`flowserve.models.preprocess.OnUnitSphere`). ``decode`` projects its input too, so
standard normal noise in ``R^3`` pushed through ``decode`` samples the flow exactly.

Both inverses are closed form (branch-free spline inversion).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from flowserve.models.base import Chain, Flow, Invert, StandardUniform, Transform, register_family
from flowserve.models.coupling import Coupling
from flowserve.models.nets import mlp
from flowserve.models.spline import rational_quadratic_spline

__all__ = [
    "CircularSplineCoupling",
    "CylinderSplineCoupling",
    "SphereChart",
    "UniformSphere",
    "WrapAngle",
    "build_circle",
    "build_sphere",
    "wrap_angle",
]

_TWO_PI = 2 * math.pi


def wrap_angle(x: Tensor) -> Tensor:
    """Map any angle to ``[-pi, pi)`` in ``x``'s dtype (``pi`` itself goes to ``-pi``)."""
    y = x - _TWO_PI * torch.floor((x + math.pi) / _TWO_PI)
    # Rounding can land exactly on (or a hair past) the ends; both ends are the same point.
    y = torch.where(y >= math.pi, y - _TWO_PI, y)
    return torch.clamp(y, min=-math.pi)


class WrapAngle(Transform):
    """Wrap angles to ``[-pi, pi)``: the identity on the circle (log-det 0)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return wrap_angle(x), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return wrap_angle(z), z.new_zeros(z.shape[0])


def _circular_spline(
    theta: Tensor, params: Tensor, bins: int, inverse: bool
) -> tuple[Tensor, Tensor]:
    """Spline on ``[-pi, pi]`` then rotation (``params[..., -1]``), or the inverse of both."""
    w, h, d = params[..., :bins], params[..., bins : 2 * bins], params[..., 2 * bins : -1]
    rotation = params[..., -1]
    if inverse:
        theta = wrap_angle(theta - rotation)
        return rational_quadratic_spline(theta, w, h, d, bound=math.pi, inverse=True)
    y, ld = rational_quadratic_spline(theta, w, h, d, bound=math.pi)
    return wrap_angle(y + rotation), ld


class CircularSplineCoupling(Coupling):
    """Circular spline + rotation of the angles where ``mask`` is False, conditioned on
    ``(cos, sin)`` of the others (unconditional parameters when every angle is transformed).

    Arguments:
        mask: Boolean mask over the angles, True for the kept (conditioning) ones.
        bins: The number of spline bins.
        hidden: The width of the conditioner network.
        hidden_layers: The number of hidden layers of the conditioner network.

    References:
        | Normalizing Flows on Tori and Spheres (Rezende et al., 2020)
        | https://arxiv.org/abs/2002.02428
    """

    def __init__(
        self, mask: Tensor, bins: int = 8, hidden: int = 32, hidden_layers: int = 2
    ) -> None:
        super().__init__(mask, unconditional=True)
        self.bins = int(bins)
        per = 3 * self.bins  # widths, heights, K - 1 derivatives, rotation
        if self.kept.numel() == 0:
            self.free = nn.Parameter(torch.zeros(self.changed.numel(), per))
            self.net: nn.Module | None = None
        else:
            self.net = mlp(2 * self.kept.numel(), self.changed.numel() * per, hidden, hidden_layers)

    def _params(self, kept: Tensor, n: int) -> Tensor:
        if self.net is None:
            return self.free.expand(n, -1, -1)
        feats = torch.cat([torch.cos(kept), torch.sin(kept)], dim=1)
        return self.net(feats).reshape(n, self.changed.numel(), 3 * self.bins)

    def _couple(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        a, b = self._split(x)
        b, ld = _circular_spline(b, self._params(a, x.shape[0]), self.bins, inverse)
        return self._merge(a, b), ld.sum(dim=1)


@register_family("circle")
def build_circle(
    dim: int = 1, layers: int = 4, bins: int = 8, hidden: int = 32, hidden_layers: int = 2
) -> Flow:
    """Flow on the circle (``dim = 1``) or the torus of ``dim`` angles, uniform base.

    Arguments:
        dim: The number of angles per row.
        layers: The number of coupling layers.
        bins: The number of spline bins.
        hidden: The width of the conditioner networks (tori).
        hidden_layers: The number of hidden layers of the conditioner networks (tori).

    References:
        | Normalizing Flows on Tori and Spheres (Rezende et al., 2020)
        | https://arxiv.org/abs/2002.02428

    Example:
        >>> flow = build_circle(dim=2, layers=2)
        >>> flow.log_prob(torch.zeros(1, 2)).exp() * (2 * math.pi) ** 2
        tensor([1.], grad_fn=<MulBackward0>)
    """
    if dim < 1 or layers < 1 or bins < 2:
        raise ValueError(f"circle needs dim >= 1, layers >= 1, bins >= 2; got {dim, layers, bins}")
    parts: list[Transform] = [WrapAngle()]
    for i in range(layers):
        mask = (torch.arange(dim) % 2 == i % 2) if dim > 1 else torch.zeros(1, dtype=torch.bool)
        parts.append(CircularSplineCoupling(mask, bins, hidden, hidden_layers))
    return Flow(Chain(parts), StandardUniform((dim,)))


class SphereChart(Transform):
    """``S^2 -> cylinder``: ``x -> (phi, h) = (atan2(x2, x1), x3)`` after projecting ``x``.

    Area-preserving (Archimedes' theorem), so its log-determinant with respect to the area
    measures on both sides is 0. ``inverse`` maps ``(phi, h)`` back to a unit vector.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        # ONNX has no atan2: exported, it divides y / x, which is 0/0 at the poles; any angle is
        # right there, so use phi = 0.
        pole = (x[:, 0] == 0) & (x[:, 1] == 0)
        phi = torch.atan2(x[:, 1], torch.where(pole, torch.ones_like(x[:, 0]), x[:, 0]))
        h = x[:, 2].clamp(-1.0, 1.0)
        return torch.stack([wrap_angle(phi), h], dim=1), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        phi, h = z[:, 0], z[:, 1].clamp(-1.0, 1.0)
        r = torch.sqrt((1 - h * h).clamp_min(0.0))
        return torch.stack([r * torch.cos(phi), r * torch.sin(phi), h], dim=1), z.new_zeros(
            z.shape[0]
        )


class CylinderSplineCoupling(Transform):
    """On the cylinder ``(phi, h)``: the coordinate where ``mask`` is False, splined given the
    other: a circular spline + rotation of ``phi`` given ``h`` (``mask = [False, True]``) or an
    interval spline of ``h`` on ``[-1, 1]`` given ``phi`` (``mask = [True, False]``).

    Arguments:
        mask: Boolean mask over ``(phi, h)``, True for the kept (conditioning) coordinate.
        bins: The number of spline bins.
        hidden: The width of the conditioner network.
        hidden_layers: The number of hidden layers of the conditioner network.
    """

    def __init__(
        self, mask: Tensor, bins: int = 8, hidden: int = 32, hidden_layers: int = 2
    ) -> None:
        super().__init__()
        kept = torch.as_tensor(mask, dtype=torch.bool).reshape(-1).tolist()
        if len(kept) != 2 or kept[0] == kept[1]:
            raise ValueError(f"mask must keep exactly one of (phi, h), got {kept}")
        self.angle, self.bins = not kept[0], int(bins)
        if self.angle:
            self.net = mlp(1, 3 * self.bins, hidden, hidden_layers)
        else:
            self.net = mlp(2, 3 * self.bins - 1, hidden, hidden_layers)

    def _run(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        phi, h = x[:, 0], x[:, 1]
        k = self.bins
        if self.angle:
            phi, ld = _circular_spline(phi, self.net(h[:, None]), k, inverse)
        else:
            p = self.net(torch.stack([torch.cos(phi), torch.sin(phi)], dim=1))
            h, ld = rational_quadratic_spline(
                h, p[:, :k], p[:, k : 2 * k], p[:, 2 * k :], bound=1.0, inverse=inverse
            )
        return torch.stack([phi, h], dim=1), ld

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._run(x, inverse=False)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._run(z, inverse=True)


class UniformSphere(nn.Module):
    """Uniform distribution on the unit sphere ``S^2``: density ``1 / (4 pi)`` w.r.t. area.

    ``kind = "sphere"``: the artifact records it (``BaseSpec(kind="sphere")``), so the service
    samples unit vectors and ``/encode``'s ``log_det`` subtracts ``-log(4 pi)``. A temperature
    has no meaning on the sphere: :meth:`sample` refuses anything but 1.
    """

    kind = "sphere"

    def __init__(self) -> None:
        super().__init__()
        self.event_shape = (3,)
        self.register_buffer("_dummy", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        return z.new_full((z.shape[0],), -math.log(4 * math.pi))

    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        if temperature != 1.0:
            raise ValueError(f"temperature {temperature} has no meaning on the sphere; use 1")
        eps = torch.randn((n, 3), generator=generator, dtype=self._dummy.dtype)
        return (eps / eps.norm(dim=1, keepdim=True).clamp_min(1e-12)).to(self._dummy.device)


@register_family("sphere")
def build_sphere(
    dim: int = 3, layers: int = 4, bins: int = 8, hidden: int = 32, hidden_layers: int = 2
) -> Flow:
    """Flow on the unit sphere ``S^2`` (rows are 3-vectors), uniform base on the sphere.

    Arguments:
        dim: Must be 3.
        layers: The number of (angle, height) coupling pairs on the cylinder.
        bins: The number of spline bins.
        hidden: The width of the conditioner networks.
        hidden_layers: The number of hidden layers of the conditioner networks.

    References:
        | Normalizing Flows on Tori and Spheres (Rezende et al., 2020)
        | https://arxiv.org/abs/2002.02428

    Example:
        >>> flow = build_sphere(layers=1)
        >>> p = flow.log_prob(torch.tensor([[0.0, 0.0, 1.0]])).exp() * 4 * math.pi
        >>> round(p.item(), 4)  # the flow starts at the identity: uniform on the sphere
        1.0
    """
    if dim != 3:
        raise ValueError(f"the sphere family models unit vectors in R^3: dim must be 3, got {dim}")
    if layers < 1 or bins < 2:
        raise ValueError(f"sphere needs layers >= 1 and bins >= 2, got {layers, bins}")
    # Alternate: the height given the angle, then the angle given the height.
    height, angle = torch.tensor([True, False]), torch.tensor([False, True])
    parts: list[Transform] = [SphereChart()]
    for _ in range(layers):
        parts += [CylinderSplineCoupling(height, bins, hidden, hidden_layers)]
        parts += [CylinderSplineCoupling(angle, bins, hidden, hidden_layers)]
    parts.append(Invert(SphereChart()))
    return Flow(Chain(parts), UniformSphere())

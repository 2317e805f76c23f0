"""Planar and radial flows: closed-form data -> latent, 1-D solves for latent -> data.

Each layer is the map ``x -> f(x)`` of Rezende & Mohamed applied in the data -> latent direction,
so ``log_prob`` is one closed-form pass. Planar layers invert by a root find along ``w`` (a
monotone scalar equation, solved by bracketed Newton with a fixed iteration count, so it traces
and exports to ONNX); radial layers invert in closed form (the radius solves a quadratic).
Invertibility is enforced by the parametrization: ``w.u_hat > -1`` (planar), ``beta > -alpha``
(radial). Both families end with a learnable per-feature affine map so they can fit location and
scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowserve.models.base import Chain, Flow, StandardNormal, Transform, register_family
from flowserve.models.elementwise import feature_affine

__all__ = ["PlanarTransform", "RadialTransform", "build_planar", "build_radial"]

# Smallest value kept inside logs and divisions; far below anything the formulas produce.
_TINY = 1e-30


class PlanarTransform(Transform):
    """Planar layer ``z = x + u_hat * tanh(w.x + b)``.

    ``u_hat = u + (softplus(w.u) - 1 - w.u) w / |w|^2`` makes ``w.u_hat = softplus(w.u) - 1 > -1``,
    so the map is invertible. The log-determinant is written as
    ``log(tanh(a)^2 + softplus(w.u) * sech(a)^2)``, which equals ``log(1 + w.u_hat sech(a)^2)``
    but stays finite even where ``w.u_hat`` rounds to -1.

    The inverse solves ``a + m tanh(a) = w.z + b`` for ``a = w.x + b`` (``m = w.u_hat``): the left
    side is increasing, and the root lies in ``[w.z + b - |m|, w.z + b + |m|]``; Newton steps
    that leave the bracket are replaced by bisection, for a fixed number of iterations.

    Arguments:
        dim: The number of features.
        iterations: Newton/bisection iterations of the inverse (at least 1); 40 reaches float64
            precision (Newton converges quadratically once bracketed; bisection alone halves the
            bracket 40 times).

    References:
        | Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015)
        | https://arxiv.org/abs/1505.05770
    """

    def __init__(self, dim: int, iterations: int = 40) -> None:
        super().__init__()
        if int(iterations) < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.iterations = int(iterations)
        self.w = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.u = nn.Parameter(0.1 * torch.randn(dim))
        self.b = nn.Parameter(torch.zeros(()))

    def _u_hat(self) -> tuple[Tensor, Tensor]:
        """``(u_hat, softplus(w.u))``."""
        wu = torch.dot(self.w, self.u)
        sp = F.softplus(wu)
        u_hat = self.u + (sp - 1.0 - wu) * self.w / (torch.dot(self.w, self.w) + _TINY)
        return u_hat, sp

    @staticmethod
    def _log_det(a: Tensor, sp: Tensor) -> Tensor:
        t = torch.tanh(a)
        return torch.log(t * t + sp * (1.0 - t * t) + _TINY)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u_hat, sp = self._u_hat()
        a = x @ self.w + self.b
        return x + torch.tanh(a)[:, None] * u_hat, self._log_det(a, sp)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        u_hat, sp = self._u_hat()
        m = torch.dot(self.w, u_hat)
        c = z @ self.w + self.b
        lo, hi = _planar_bracket(c, m)
        # Exact for |c| << 1 (a = c / (1 + m)) and for |c| >> 1 (a = c - m sign(c)).
        a = torch.minimum(torch.maximum(c - m * torch.tanh(c / (1.0 + m)), lo), hi)
        step_old = hi - lo
        step = step_old
        for _ in range(self.iterations):
            t = torch.tanh(a)
            g = a + m * t - c
            slope = (t * t + sp * (1.0 - t * t)).clamp_min(_TINY)  # = 1 + m sech^2 > 0
            above = g > 0
            hi = torch.where(above, a, hi)
            lo = torch.where(above, lo, a)
            newton = a - g / slope
            # Newton only while it stays in the bracket and its steps shrink geometrically
            # (half the step before last); otherwise bisect. Plain Newton can cycle on tanh.
            ok = (newton >= lo) & (newton <= hi) & ((newton - a).abs() <= 0.5 * step_old)
            nxt = torch.where(ok, newton, 0.5 * (lo + hi))
            step_old, step = step, (nxt - a).abs()
            a = nxt
        return z - torch.tanh(a)[:, None] * u_hat, -self._log_det(a, sp)


def _planar_bracket(c: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    """Bounds on the root of ``a + m tanh(a) = c`` (``m > -1``): ``|a - c| <= |m|``, and the root
    lies between 0 and ``c`` when ``m >= 0``, between ``c`` and ``c - m sign(c)`` when ``m < 0``.
    """
    zero = torch.zeros_like(c)
    lo_pos = torch.maximum(c - m, torch.minimum(c, zero))
    hi_pos = torch.minimum(c + m, torch.maximum(c, zero))
    lo_neg = torch.where(c >= 0, c, c + m)
    hi_neg = torch.where(c >= 0, c - m, c)
    nonneg = m >= 0
    return torch.where(nonneg, lo_pos, lo_neg), torch.where(nonneg, hi_pos, hi_neg)


class RadialTransform(Transform):
    """Radial layer ``z = x + beta (x - x0) / (alpha + r)`` with ``r = |x - x0|``.

    ``alpha = softplus(.)`` and ``beta = softplus(.) - alpha > -alpha`` make it invertible. The
    inverse is closed form: with ``rho = |z - x0|``, the radius solves
    ``r^2 + (alpha + beta - rho) r - rho alpha = 0``, whose one non-negative root is taken in its
    cancellation-free form. Starts as the identity (``beta = 0``).

    Arguments:
        dim: The number of features.

    References:
        | Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015)
        | https://arxiv.org/abs/1505.05770
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = int(dim)
        self.x0 = nn.Parameter(torch.randn(dim))
        self.alpha_raw = nn.Parameter(torch.zeros(()))
        self.beta_raw = nn.Parameter(torch.zeros(()))

    def _params(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(alpha, beta, alpha + beta)``, the last computed without cancellation."""
        alpha = F.softplus(self.alpha_raw)
        gap = F.softplus(self.beta_raw)
        return alpha, gap - alpha, gap

    def _log_det(self, r: Tensor, alpha: Tensor, gap: Tensor) -> Tensor:
        # 1 + beta h = (r + gap) / (alpha + r) and 1 + beta h + beta h' r
        # = (r (2 alpha + r) + alpha gap) / (alpha + r)^2: sums of positive terms, no cancellation.
        log_ar = torch.log(alpha + r)
        radial = torch.log(r * (2.0 * alpha + r) + alpha * gap + _TINY) - 2.0 * log_ar
        return (self.dim - 1) * (torch.log(r + gap) - log_ar) + radial

    @staticmethod
    def _norm(d: Tensor) -> Tensor:
        # The gradient of sqrt is infinite at 0; route exact zeros around it.
        s = (d * d).sum(dim=1)
        nonzero = s > 0
        return torch.where(nonzero, torch.sqrt(torch.where(nonzero, s, torch.ones_like(s))), s)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        alpha, beta, gap = self._params()
        d = x - self.x0
        r = self._norm(d)
        z = x + (beta / (alpha + r))[:, None] * d
        return z, self._log_det(r, alpha, gap)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        alpha, beta, gap = self._params()
        dz = z - self.x0
        rho = self._norm(dz)
        b = gap - rho
        root = torch.sqrt(b * b + 4.0 * rho * alpha)
        # r = (-b + root) / 2, rewritten as 2 rho alpha / (b + root) where b > 0 would cancel.
        r = torch.where(b > 0, 2.0 * rho * alpha / (b + root).clamp_min(_TINY), 0.5 * (root - b))
        x = z - (beta / (r + gap))[:, None] * dz
        return x, -self._log_det(r, alpha, gap)


def _then_affine(family: str, dim: int, layers: int, layer: Callable[[], Transform]) -> Flow:
    """``layers`` layers made by ``layer``, then a per-feature affine map, over a normal."""
    if int(dim) < 1:
        raise ValueError(f"{family} needs dim >= 1, got {dim}")
    if int(layers) < 1:
        raise ValueError(f"{family} needs layers >= 1, got {layers}")
    steps = [layer() for _ in range(layers)]
    return Flow(Chain([*steps, feature_affine(dim)]), StandardNormal((dim,)))


@register_family("planar")
def build_planar(dim: int, layers: int = 16, iterations: int = 40) -> Flow:
    """Planar flow: ``layers`` planar layers, then a per-feature affine map.

    Arguments:
        dim: The number of features.
        layers: The number of planar layers.
        iterations: Fixed iteration count of each layer's numerical inverse.

    References:
        | Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015)
        | https://arxiv.org/abs/1505.05770

    Example:
        >>> flow = build_planar(2, layers=3)
        >>> x = torch.randn(4, 2)
        >>> torch.allclose(flow.decode(flow.encode(x)), x, atol=1e-5)
        True
    """
    return _then_affine("planar", dim, layers, lambda: PlanarTransform(dim, iterations))


@register_family("radial")
def build_radial(dim: int, layers: int = 16) -> Flow:
    """Radial flow: ``layers`` radial layers, then a per-feature affine map.

    Arguments:
        dim: The number of features.
        layers: The number of radial layers.

    References:
        | Variational Inference with Normalizing Flows (Rezende & Mohamed, 2015)
        | https://arxiv.org/abs/1505.05770

    Example:
        >>> flow = build_radial(2, layers=3)
        >>> flow.log_prob(torch.zeros(4, 2)).shape
        torch.Size([4])
    """
    return _then_affine("radial", dim, layers, lambda: RadialTransform(dim))

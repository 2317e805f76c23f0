"""Element-wise bijections: the one affine map of every family, and learned per-feature layers.

An :class:`ElementwiseTransform` is a family of scalar bijections ``y = f(x; params)``. Coupling
and autoregressive layers predict its parameters with a network (MAF, IAF, RealNVP, Glow, NSF);
:class:`Unconditional` learns one set per feature instead (NICE's diagonal scaling, the closing
affine map of the planar and radial flows, Glow's actnorm).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowserve.models.base import Transform
from flowserve.models.nets import soft_clamp

__all__ = ["ElementwiseAffine", "ElementwiseTransform", "Unconditional", "feature_affine"]


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
    """``y = x * exp(s) + t``, with the log-scale ``s`` and the shift ``t`` optionally
    soft-clamped (``bound * tanh(raw / bound)``).

    ``params[..., 0]`` is the shift and ``params[..., 1]`` the raw log-scale (with
    ``shift=False``, ``params[..., 0]`` is the raw log-scale). A clamp keeps every layer's scale
    within ``exp(±scale_bound)``, so stacked layers cannot compound to an overflow, and keeps
    gradients alive near the limits.

    Arguments:
        scale_bound: The largest absolute log-scale (``None``: unbounded).
        shift_bound: The largest absolute shift (``None``: unbounded).
        shift: Whether the map has a shift at all (``False``: a pure scaling).

    Example:
        >>> f = ElementwiseAffine(scale_bound=1.0)
        >>> y, ld = f(torch.tensor([2.0]), torch.tensor([[1.0, 100.0]]))
        >>> y.round(decimals=3), ld
        (tensor([6.4370]), tensor([1.]))
    """

    def __init__(
        self,
        scale_bound: float | None = 3.0,
        shift_bound: float | None = None,
        shift: bool = True,
    ) -> None:
        super().__init__()
        for name, bound in (("scale_bound", scale_bound), ("shift_bound", shift_bound)):
            if bound is not None and not bound > 0:
                raise ValueError(f"{name} must be positive, got {bound}")
        self.scale_bound = None if scale_bound is None else float(scale_bound)
        self.shift_bound = None if shift_bound is None else float(shift_bound)
        self.shift = bool(shift)
        self.num_params = 2 if shift else 1

    def _shift_log_scale(self, params: Tensor) -> tuple[Tensor | None, Tensor]:
        log_scale = params[..., -1]
        if self.scale_bound is not None:
            log_scale = soft_clamp(log_scale, self.scale_bound)
        if not self.shift:
            return None, log_scale
        shift = params[..., 0]
        if self.shift_bound is not None:
            shift = soft_clamp(shift, self.shift_bound)
        return shift, log_scale

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_log_scale(params)
        y = x * torch.exp(log_scale)
        return (y if shift is None else y + shift), log_scale

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_log_scale(params)
        if shift is not None:
            y = y - shift
        return y * torch.exp(-log_scale), -log_scale


class Unconditional(Transform):
    """An element-wise transform with learned parameters, one set per feature, identity at init.

    Arguments:
        univariate: The element-wise bijection.
        dim: The number of features.

    Example:
        >>> t = Unconditional(ElementwiseAffine(scale_bound=None), 3)
        >>> z, ld = t(torch.randn(2, 3))
        >>> ld
        tensor([0., 0.], grad_fn=<SumBackward1>)
    """

    def __init__(self, univariate: ElementwiseTransform, dim: int) -> None:
        super().__init__()
        self.univariate = univariate
        self.params = nn.Parameter(torch.zeros(int(dim), univariate.num_params))

    def _expanded(self, x: Tensor) -> Tensor:
        return self.params.expand(x.shape[0], *self.params.shape)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, ld = self.univariate(x, self._expanded(x))
        return z, ld.sum(dim=-1)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        x, ld = self.univariate.inverse(z, self._expanded(z))
        return x, ld.sum(dim=-1)


def feature_affine(dim: int, shift: bool = True) -> Unconditional:
    """A learned per-feature affine map ``z = x * exp(log_scale) + shift`` (unbounded), identity
    at init; with ``shift=False`` NICE's final diagonal scaling.

    Example:
        >>> feature_affine(3).params.shape
        torch.Size([3, 2])
    """
    return Unconditional(ElementwiseAffine(scale_bound=None, shift=shift), dim)

"""Small conditioner networks and numeric helpers shared by the flow families.

Coupling and autoregressive layers predict their transform's parameters with a network; this
module builds the plain multi-layer perceptron they share, and the soft clamp that keeps the
predicted parameters bounded (so that extreme inputs cannot overflow through many layers).
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor, nn

__all__ = ["mlp", "soft_clamp"]


def mlp(
    in_features: int,
    out_features: int,
    hidden: int,
    depth: int = 2,
    zero_last: bool = True,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """A multi-layer perceptron ``in_features -> hidden (x depth) -> out_features``.

    Arguments:
        in_features: The input width.
        out_features: The output width.
        hidden: The width of every hidden layer.
        depth: The number of hidden layers (0 gives a single linear map).
        zero_last: Whether the last layer starts at zero (weights and bias), so that a flow
            layer whose parameters it predicts starts at (or next to) the identity.
        activation: The non-linearity between layers.

    Example:
        >>> import torch
        >>> net = mlp(3, 4, hidden=8)
        >>> net(torch.randn(2, 3)).abs().sum().item()
        0.0
    """
    if in_features < 1 or out_features < 1 or hidden < 1:
        raise ValueError(
            f"mlp widths must be positive, got in={in_features}, out={out_features}, "
            f"hidden={hidden}"
        )
    if depth < 0:
        raise ValueError(f"mlp depth must be >= 0, got {depth}")
    widths = [in_features, *([hidden] * depth), out_features]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(activation())
    if zero_last:
        last = layers[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return nn.Sequential(*layers)


def soft_clamp(x: Tensor, bound: float) -> Tensor:
    """A smooth clamp to ``(-bound, bound)``: ``bound * tanh(x / bound)``.

    Close to the identity for ``|x| << bound`` and differentiable everywhere, unlike
    :func:`torch.clamp`, so training never sees a dead gradient at the edge.

    Arguments:
        x: The values to clamp.
        bound: The (positive) bound.

    Example:
        >>> soft_clamp(torch.tensor([0.0, 1e6]), 3.0)
        tensor([0., 3.])
    """
    return bound * torch.tanh(x / bound)

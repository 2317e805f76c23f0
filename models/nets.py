"""Small conditioner networks and numeric helpers shared by the flow families.

Coupling and autoregressive layers predict their transform's parameters with a network; this
module builds the plain multi-layer perceptron they share, the soft clamp that keeps the
predicted parameters bounded, and the one scale budget that shares a bound on the total
log-scale out between the layers of a flow (so that extreme inputs cannot overflow through many
layers).
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor, nn

__all__ = ["SCALE_BUDGET", "SHIFT_BOUND", "layer_scale_bound", "mlp", "soft_clamp"]

# Total |log-scale| (nats) the layers of one flow may apply to a feature: e^24 * 1e4 ~ 3e14,
# whose square (the Gaussian log-density term) is far from the float32 limit of 3e38.
SCALE_BUDGET = 24.0
# Bound on each predicted shift; typical shifts on standardized data are a few units.
SHIFT_BOUND = 100.0


def layer_scale_bound(scale_bound: float, transforms_per_feature: int) -> float:
    """The per-layer log-scale bound: ``scale_bound``, shrunk so that the layers that transform
    one feature stay within :data:`SCALE_BUDGET` together.

    Arguments:
        scale_bound: The largest per-layer log-scale a shallow flow may use.
        transforms_per_feature: How many layers of the flow scale any one feature.

    Example:
        >>> layer_scale_bound(3.0, 4), layer_scale_bound(3.0, 16)
        (3.0, 1.5)
    """
    return min(float(scale_bound), SCALE_BUDGET / max(1, int(transforms_per_feature)))


def mlp(
    in_features: int,
    out_features: int,
    hidden: int,
    hidden_layers: int = 2,
    zero_last: bool = True,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """A multi-layer perceptron ``in_features -> hidden (x hidden_layers) -> out_features``.

    Arguments:
        in_features: The input width.
        out_features: The output width.
        hidden: The width of every hidden layer.
        hidden_layers: The number of hidden layers (0 gives a single linear map).
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
    if hidden_layers < 0:
        raise ValueError(f"mlp hidden_layers must be >= 0, got {hidden_layers}")
    widths = [in_features, *([hidden] * hidden_layers), out_features]
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

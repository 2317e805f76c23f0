"""MADE: a masked multi-layer perceptron whose outputs are autoregressive in its inputs.

The masks give output ``i`` access to the inputs that come strictly before ``i`` in an ordering,
so one pass yields the parameters of every conditional ``p(x_i | x_<i)`` at once. The
autoregressive families (MAF, IAF, autoregressive splines) use it as their conditioner.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MADE", "MaskedLinear"]


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed binary mask.

    Arguments:
        mask: The ``[out_features, in_features]`` mask (1 keeps a connection, 0 cuts it).
    """

    def __init__(self, mask: Tensor) -> None:
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """A masked autoencoder for distribution estimation.

    ``made(x)`` has shape ``[batch, dim, params]``; its row ``i`` depends only on the inputs
    ``x_j`` with ``order[j] < order[i]``. The last layer starts at zero, so the transform it
    parametrizes starts at its zero-parameter point (the identity for the flows here).

    With ``dim == 1`` there is nothing to condition on: the output is a learned constant.

    Arguments:
        dim: The number of inputs.
        params: The number of outputs per input.
        hidden: The width of every hidden layer (at least ``dim - 1`` so that every degree
            is represented; smaller widths still give a valid, sparser autoregressive net).
        hidden_layers: The number of hidden layers.
        order: The autoregressive order, a permutation of ``1..dim`` (default ``1, 2, ..., dim``).
        activation: The non-linearity between layers.

    References:
        | MADE: Masked Autoencoder for Distribution Estimation (Germain et al., 2015)
        | https://arxiv.org/abs/1502.03509

    Example:
        >>> made = MADE(3, params=2, hidden=8)
        >>> made(torch.randn(5, 3)).shape
        torch.Size([5, 3, 2])
    """

    def __init__(
        self,
        dim: int,
        params: int,
        hidden: int = 64,
        hidden_layers: int = 2,
        order: Tensor | None = None,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if dim < 1 or params < 1 or hidden < 1 or hidden_layers < 1:
            raise ValueError(
                f"MADE needs dim, params, hidden and hidden_layers >= 1, got dim={dim}, "
                f"params={params}, hidden={hidden}, hidden_layers={hidden_layers}"
            )
        self.dim, self.params = dim, params
        order = torch.arange(1, dim + 1) if order is None else torch.as_tensor(order)
        if sorted(order.tolist()) != list(range(1, dim + 1)):
            raise ValueError(f"order must be a permutation of 1..{dim}, got {order.tolist()}")
        self.register_buffer("order", order.clone())

        if dim == 1:
            # No input precedes the only one: its parameters are unconditional.
            self.net: nn.Sequential | None = None
            self.constant = nn.Parameter(torch.zeros(params))
            return

        # Hidden degrees cycle through 1..dim-1 (a degree-dim unit would feed nothing).
        hidden_degrees = torch.arange(hidden) % (dim - 1) + 1
        layers: list[nn.Module] = []
        previous = order
        for _ in range(hidden_layers):
            layers += [MaskedLinear(hidden_degrees[:, None] >= previous[None, :]), activation()]
            previous = hidden_degrees
        # Output unit j belongs to input j // params: strict inequality makes it autoregressive.
        out_degrees = order.repeat_interleave(params)
        last = MaskedLinear(out_degrees[:, None] > previous[None, :])
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: Tensor) -> Tensor:
        if self.net is None:
            return self.constant.expand(x.shape[0], 1, self.params)
        return self.net(x).reshape(x.shape[0], self.dim, self.params)

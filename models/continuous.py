"""Continuous normalizing flows (FFJORD) with a fixed-step RK4 solver.

The dynamics ``f(z, t)`` is a time-conditioned MLP with ``tanh`` activations whose Jacobian is
computed in closed form by pushing tangents through the layers (forward mode, no autograd). This
gives, without ``torch.autograd`` and hence in a traced/exported graph:

- the EXACT trace ``sum_i df_i/dz_i`` (the full ``[dim, dim]`` Jacobian is propagated; the cost is
  ``dim`` tangents, fine for tabular widths), used in ``eval`` mode (serving, export);
- Hutchinson's estimate ``eps^T J eps`` with Rademacher ``eps`` (one tangent), used in training
  mode by default (``estimator="hutchinson"``), or the exact trace (``estimator="exact"``).

The solver is classical RK4 with ``steps`` equal steps on ``t in [0, 1]``: a fixed graph that traces
and exports to ONNX. ``inverse`` solves the same ODE backwards with the same solver. The discrete
map is therefore invertible only up to the solver error (``O(1/steps^4)``), and the log-determinant
is the RK4 quadrature of the trace along the RK4 path, not the log-determinant of the discrete
map: both errors shrink as ``steps`` grows (the export records the measured round trip). With
tiny dynamics nets and ``steps=8`` the float32 round trip is below ``1e-4``.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from flowserve.models.base import Chain, Flow, StandardNormal, Transform, register_family

__all__ = ["FFJORD", "ODEDynamics", "build_ffjord"]


class _ConcatSquash(nn.Module):
    """``(W h + b) * sigmoid(g t + c) + e t``: a time-gated linear layer (FFJORD's ConcatSquash)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(1, out_features)
        self.time_bias = nn.Linear(1, out_features, bias=False)

    def forward(self, h: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Return the output and the per-row gate (the output's Jacobian is ``gate * W``)."""
        gate = torch.sigmoid(self.gate(t))
        return self.linear(h) * gate + self.time_bias(t), gate


class ODEDynamics(nn.Module):
    """Time-conditioned ``tanh`` MLP ``f(z, t)`` with closed-form Jacobian-vector products.

    Arguments:
        dim: The number of features.
        hidden: The width of the hidden layers.
        hidden_layers: The number of hidden layers.
    """

    def __init__(self, dim: int, hidden: int = 64, hidden_layers: int = 2) -> None:
        super().__init__()
        if hidden_layers < 1:
            raise ValueError(f"hidden_layers must be >= 1, got {hidden_layers}")
        widths = [dim] + [hidden] * hidden_layers + [dim]
        self.net = nn.ModuleList(_ConcatSquash(a, b) for a, b in itertools.pairwise(widths))
        # Start close to the identity map: small last layer, so the initial flow is ~ the base.
        with torch.no_grad():
            self.net[-1].linear.weight.mul_(0.01)
            self.net[-1].linear.bias.zero_()
            self.net[-1].time_bias.weight.zero_()

    def forward(
        self, z: Tensor, t: Tensor, tangents: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Return ``f(z, t)`` and ``J @ tangents``.

        ``tangents`` is ``[batch, dim, k]`` (``k`` directions per row); ``None`` means the identity
        (``k = dim``), i.e. the full Jacobian ``[batch, dim, dim]``.
        """
        tt = t.expand(z.shape[0], 1)
        if tangents is None:
            n, d = z.shape
            tangents = torch.eye(d, dtype=z.dtype, device=z.device).expand(n, d, d)
        h, v = z, tangents
        last = len(self.net) - 1
        for i, layer in enumerate(self.net):
            h, gate = layer(h, tt)
            # d(out)/dh = diag(gate) W, applied to every tangent column.
            v = gate.unsqueeze(-1) * torch.matmul(layer.linear.weight, v)
            if i < last:
                h = torch.tanh(h)
                v = (1 - h * h).unsqueeze(-1) * v
        return h, v


class FFJORD(Transform):
    """Continuous-time flow ``dz/dt = f(z, t)`` on ``t in [0, 1]`` (data at 0, latent at 1).

    ``forward`` returns ``z(1)`` and ``log|det dz(1)/dz(0)| = int_0^1 tr(df/dz) dt``.

    Arguments:
        dynamics: The vector field ``f``.
        steps: The number of RK4 steps.
        estimator: The trace used in training mode, ``"hutchinson"`` or ``"exact"``; eval mode
            always uses the exact trace.

    References:
        | FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models
        | (Grathwohl et al., 2019)
        | https://arxiv.org/abs/1810.01367

        | Neural Ordinary Differential Equations (Chen et al., 2018)
        | https://arxiv.org/abs/1806.07366
    """

    def __init__(
        self, dynamics: ODEDynamics, steps: int = 8, estimator: str = "hutchinson"
    ) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if estimator not in ("hutchinson", "exact"):
            raise ValueError(f"estimator must be 'hutchinson' or 'exact', got {estimator!r}")
        self.dynamics = dynamics
        self.steps = int(steps)
        self.estimator = estimator

    def _field(self, z: Tensor, t: float, noise: Tensor | None) -> tuple[Tensor, Tensor]:
        """``f(z, t)`` and the (exact or estimated) trace of its Jacobian."""
        tt = z.new_full((1, 1), t)
        if noise is None:
            dz, jac = self.dynamics(z, tt)
            return dz, torch.diagonal(jac, dim1=1, dim2=2).sum(dim=1)
        dz, jv = self.dynamics(z, tt, noise.unsqueeze(-1))
        return dz, (noise * jv.squeeze(-1)).sum(dim=1)

    def _solve(self, z: Tensor, t0: float, t1: float) -> tuple[Tensor, Tensor]:
        noise = None
        if self.training and self.estimator == "hutchinson":
            # One Rademacher probe per row, shared by every stage so the estimate is unbiased.
            noise = torch.randint(0, 2, z.shape, device=z.device).to(z.dtype) * 2 - 1
        h = (t1 - t0) / self.steps
        logdet = z.new_zeros(z.shape[0])
        t = t0
        for _ in range(self.steps):
            k1, a1 = self._field(z, t, noise)
            k2, a2 = self._field(z + 0.5 * h * k1, t + 0.5 * h, noise)
            k3, a3 = self._field(z + 0.5 * h * k2, t + 0.5 * h, noise)
            k4, a4 = self._field(z + h * k3, t + h, noise)
            z = z + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
            logdet = logdet + (h / 6) * (a1 + 2 * a2 + 2 * a3 + a4)
            t = t + h
        return z, logdet

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._solve(x, 0.0, 1.0)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._solve(z, 1.0, 0.0)


@register_family("ffjord")
def build_ffjord(
    dim: int,
    layers: int = 1,
    hidden: int = 64,
    hidden_layers: int = 2,
    steps: int = 8,
    estimator: str = "hutchinson",
) -> Flow:
    """FFJORD continuous normalizing flow over a standard normal.

    Arguments:
        dim: The number of features.
        layers: The number of continuous-time blocks, each with its own dynamics net.
        hidden: The width of the dynamics nets.
        hidden_layers: The number of hidden layers of each dynamics net.
        steps: The number of fixed RK4 steps per block (more: smaller round-trip and log-det
            error).
        estimator: The training-mode trace, ``"hutchinson"`` (default) or ``"exact"``.

    Example:
        >>> flow = build_ffjord(dim=2, hidden=8).eval()
        >>> flow.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    blocks = [
        FFJORD(ODEDynamics(dim, hidden, hidden_layers), steps=steps, estimator=estimator)
        for _ in range(layers)
    ]
    # One block stands alone, so its parameters keep the names of a single-block flow.
    return Flow(blocks[0] if layers == 1 else Chain(blocks), StandardNormal((dim,)))

"""Glow for vector data: actnorm, an LU-parametrized invertible linear map, an affine coupling.

Each step is ``ActNorm -> LULinear -> AffineCoupling`` (data -> latent). The invertible linear map
replaces the fixed permutations of RealNVP; its inverse is two triangular substitutions written as
a fixed loop over the features (only slicing, products and sums: it traces and exports to ONNX,
which has no triangular solve).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowserve.models.base import Chain, Flow, StandardNormal, Transform, register_family
from flowserve.models.coupling import AffineCoupling, check_coupling_dim, checkerboard_mask
from flowserve.models.elementwise import ElementwiseAffine, Unconditional
from flowserve.models.nets import layer_scale_bound

__all__ = ["ActNorm", "LULinear", "build_glow", "substitute"]


def substitute(
    rhs: Tensor, strict: Tensor, diag: Tensor | None = None, upper: bool = False
) -> Tensor:
    """Each row ``x`` of the solution of ``T x = rhs_row`` for triangular ``T`` = ``strict``
    (its strictly lower, or with ``upper`` strictly upper, part) plus ``diag`` on the diagonal
    (``None``: ones). A fixed loop over the features that solves one column at a time and takes
    its contribution off the rest: only slicing, products and sums, so it traces and exports to
    ONNX, which has no triangular solve."""
    dim = rhs.shape[1]
    cols: list[Tensor] = [rhs[:, :0]] * dim
    for i in reversed(range(dim)) if upper else range(dim):
        x = rhs[:, i : i + 1] if diag is None else rhs[:, i : i + 1] / diag[i]
        cols[i] = x
        rhs = rhs - x * strict[:, i]
    return torch.cat(cols, dim=1)


class ActNorm(Unconditional):
    """Per-feature affine map whose first training batch sets it to standardize that batch.

    The initialization runs once, on the first ``forward`` in training mode with gradients
    enabled (a training step); evaluation, ``torch.no_grad`` calls and ``inverse`` never trigger
    it. The ``initialized`` buffer is saved in the state dict, so a loaded or exported model never
    re-initializes. Under data-parallel training, run one forward pass before wrapping the
    model so that every replica starts from the same statistics.

    Arguments:
        dim: The number of features.

    References:
        | Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018)
        | https://arxiv.org/abs/1807.03039

    Example:
        >>> norm = ActNorm(2)
        >>> z, _ = norm(torch.tensor([[1.0, 10.0], [3.0, 30.0]]))
        >>> z.detach().round()
        tensor([[-1., -1.],
                [ 1.,  1.]])
    """

    initialized: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__(ElementwiseAffine(scale_bound=None), dim)
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def log_scale(self) -> Tensor:
        """The per-feature log-scale (``z = x * exp(log_scale) + shift``)."""
        return self.params[:, 1]

    @property
    def shift(self) -> Tensor:
        """The per-feature shift."""
        return self.params[:, 0]

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        mean = x.mean(dim=0)
        std = x.std(dim=0, unbiased=False)
        # A constant feature (or a batch of one row) has no scale to learn from: keep scale 1.
        std = torch.where(torch.isfinite(std) & (std > 1e-6), std, torch.ones_like(std))
        # (shift, log-scale) per feature: z = x / std - mean / std.
        self.params.copy_(torch.stack([-mean / std, -torch.log(std)], dim=-1))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # Python-level flags first: export and evaluation never read the buffer's value.
        if self.training and torch.is_grad_enabled() and not bool(self.initialized):
            self._initialize(x)
        return super().forward(x)


class LULinear(Transform):
    """Invertible linear map ``z = W x`` with ``W = P L U`` (fixed permutation ``P``).

    ``L`` is unit lower triangular, ``U`` upper triangular with diagonal
    ``sign * exp(log_diag)`` (signs fixed), so ``log|det W| = sum(log_diag)`` and ``W`` stays
    invertible. Starts at a random rotation.

    Arguments:
        dim: The number of features.

    References:
        | Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018)
        | https://arxiv.org/abs/1807.03039
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        diag = upper.diagonal()
        self.register_buffer("perm", p.float())
        self.register_buffer("sign", torch.sign(diag).float())
        self.register_buffer("lower_mask", torch.ones(dim, dim).tril(-1))
        self.register_buffer("eye", torch.eye(dim))
        self.lower = nn.Parameter(lower.tril(-1).float())
        self.upper = nn.Parameter(upper.triu(1).float())
        self.log_diag = nn.Parameter(torch.log(diag.abs()).float())

    def _strict_lower(self) -> Tensor:
        return self.lower * self.lower_mask

    def _strict_upper(self) -> Tensor:
        return self.upper * self.lower_mask.T

    def _diag(self) -> Tensor:
        return self.sign * torch.exp(self.log_diag)

    def weight(self) -> Tensor:
        """The matrix ``W = P L U``."""
        lower = self._strict_lower() + self.eye
        # eye * diag rather than torch.diag: the TorchScript ONNX exporter lacks aten::diag.
        upper = self._strict_upper() + self.eye * self._diag()
        return self.perm @ lower @ upper

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x @ self.weight().T, self.log_diag.sum().expand(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        # Row form: x = z P (L U)^-T, i.e. solve L v = P^T z, then U x = v.
        v = substitute(z @ self.perm, self._strict_lower())
        x = substitute(v, self._strict_upper(), self._diag(), upper=True)
        return x, -self.log_diag.sum().expand(z.shape[0])


@register_family("glow")
def build_glow(
    dim: int, layers: int = 8, hidden: int = 64, hidden_layers: int = 2, scale_bound: float = 3.0
) -> Flow:
    """Glow for vectors: ``layers`` steps of actnorm, invertible linear map, affine coupling.

    Arguments:
        dim: The number of features (at least 2).
        layers: The number of steps.
        hidden: The width of each coupling's conditioner network.
        hidden_layers: The number of hidden layers of each conditioner network.
        scale_bound: The largest per-step log-scale of the couplings (lowered for deep flows,
            see :func:`~flowserve.models.nets.layer_scale_bound`).

    References:
        | Glow: Generative Flow with Invertible 1x1 Convolutions (Kingma & Dhariwal, 2018)
        | https://arxiv.org/abs/1807.03039

    Example:
        >>> flow = build_glow(3, layers=2, hidden=8)
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(flow.decode(flow.encode(x)), x, atol=1e-5)
        True
    """
    check_coupling_dim("glow", dim, layers)
    # The linear maps mix features, so any feature may be scaled by every step's coupling.
    bound = layer_scale_bound(scale_bound, layers)
    steps: list[Transform] = []
    for i in range(layers):
        steps += [
            ActNorm(dim),
            LULinear(dim),
            AffineCoupling(checkerboard_mask(dim, i), hidden, hidden_layers, scale_bound=bound),
        ]
    return Flow(Chain(steps), StandardNormal((dim,)))

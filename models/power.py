"""Yeo-Johnson power transforms: per-column bijections of R that take the skew out of a column
before the flow sees it (Yeo and Johnson 2000).

For a column centred and scaled to ``u = (x - center) / spread`` and a power ``lam`` in
``[0, 2]``::

    y = ((1 + u)^lam - 1) / lam                 u >= 0   (log(1 + u) at lam = 0)
    y = -((1 - u)^(2 - lam) - 1) / (2 - lam)    u < 0    (-log(1 - u) at lam = 2)

with ``log dy/du = (lam - 1) * sign(u) * log(1 + |u|)``. ``lam = 1`` is the identity; ``lam < 1``
pulls in a long right tail, ``lam > 1`` a long left one. Only ``lam`` in ``[0, 2]`` maps R onto
R (outside it one side has a bounded image and the density would integrate to less than one),
so the fit searches that interval only.

:func:`fit_yeo_johnson` picks each column's power on the training rows by the Gaussian profile
likelihood (what scikit-learn's ``PowerTransformer`` maximises), on a grid of step
:data:`LAMBDA_STEP`, and keeps the identity unless the likelihood-ratio test against it passes
at :data:`LR_THRESHOLD`. :func:`yeo_johnson` and :func:`yeo_johnson_inverse` are the torch maps
the exported graphs run (branch-free, and without ``expm1``, which the ONNX exporter lacks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FIT_ROWS",
    "LAMBDA_STEP",
    "LR_THRESHOLD",
    "POWER_FIELDS",
    "PowerSpec",
    "fit_yeo_johnson",
    "yeo_johnson",
    "yeo_johnson_inverse",
    "yeo_johnson_numpy",
]

LAMBDA_STEP = 0.05
FIT_ROWS = 5000
# chi-squared with one degree of freedom at 0.999: a column is transformed only when its power
# beats the identity clearly, so near-Gaussian and multimodal columns are left as they are.
LR_THRESHOLD = 10.83
_GRID = np.round(np.arange(0.0, 2.0 + LAMBDA_STEP / 2, LAMBDA_STEP), 10)
_IDENTITY = int(np.flatnonzero(_GRID == 1.0)[0])
# The per-column arrays of a PowerSpec (and of the manifest's PowerTransform), in order.
POWER_FIELDS = ("center", "spread", "lambdas")


@dataclass(frozen=True)
class PowerSpec:
    """Per-column ``center``, ``spread`` and ``lambdas`` (1.0: the column is left as it is)."""

    center: np.ndarray
    spread: np.ndarray
    lambdas: np.ndarray

    @property
    def active(self) -> bool:
        """Whether any column is transformed."""
        return bool(np.any(self.lambdas != 1.0))


def yeo_johnson_numpy(u: np.ndarray, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(y, log dy/du)`` elementwise in float64 (the fit's reference; the graphs use torch)."""
    y, ld = yeo_johnson(torch.from_numpy(np.asarray(u, np.float64)), torch.from_numpy(lam))
    return y.numpy(), ld.numpy()


def _profile_log_lik(u: np.ndarray, lam: float) -> np.ndarray:
    """Each column's Gaussian profile log-likelihood under power ``lam`` (``-inf`` where the
    transformed column is degenerate)."""
    y, ld = yeo_johnson_numpy(u, np.full(u.shape[1], lam))
    with np.errstate(all="ignore"):
        var = np.var(y, axis=0)
        out = -0.5 * len(u) * np.log(var) + ld.sum(axis=0)
    return np.where(np.isfinite(out) & (var > 0), out, -np.inf)


def fit_yeo_johnson(train: np.ndarray, max_rows: int = FIT_ROWS) -> PowerSpec:
    """Each column's power on ``train`` (rows x columns), as the module docstring says; the
    powers are fitted on at most ``max_rows`` rows (a seeded subsample), the centre and spread
    on all."""
    x = np.asarray(train, np.float64)
    center = x.mean(axis=0)
    spread = x.std(axis=0)
    spread = np.where(spread > 0, spread, 1.0)
    u = (x - center) / spread
    if len(u) > max_rows:
        u = u[np.sort(np.random.default_rng(0).choice(len(u), max_rows, replace=False))]
    scores = np.stack([_profile_log_lik(u, lam) for lam in _GRID])  # [grid, columns]
    best = scores.argmax(axis=0)
    gain = 2.0 * (scores.max(axis=0) - scores[_IDENTITY])
    lambdas = np.where(gain > LR_THRESHOLD, _GRID[best], 1.0)
    return PowerSpec(center, spread, lambdas)


def _exponents(lam: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The powers of the two sides (``lam``, ``2 - lam``), made safe to divide by, and where
    each side is a logarithm instead (``lam`` at 0 or 2 exactly: the grid holds both)."""
    pos, neg = lam, 2.0 - lam
    pos_log, neg_log = pos == 0, neg == 0
    return (
        torch.where(pos_log, torch.ones_like(pos), pos),
        torch.where(neg_log, torch.ones_like(neg), neg),
        pos_log,
        neg_log,
    )


def yeo_johnson(u: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """``(y, log dy/du)`` elementwise; ``lam`` broadcasts over the columns of ``u``."""
    lam = lam.to(u.dtype)
    p, q, p_log, q_log = _exponents(lam)
    a = torch.log1p(u.abs())
    up = torch.where(p_log, a, (torch.exp(p * a) - 1.0) / p)
    down = -torch.where(q_log, a, (torch.exp(q * a) - 1.0) / q)
    positive = u >= 0
    y = torch.where(lam == 1.0, u, torch.where(positive, up, down))
    sign = torch.where(positive, torch.ones_like(u), -torch.ones_like(u))
    return y, (lam - 1.0) * sign * a


def yeo_johnson_inverse(y: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """``(u, log du/dy)``: the inverse of :func:`yeo_johnson`, which keeps the sign."""
    lam = lam.to(y.dtype)
    p, q, p_log, q_log = _exponents(lam)
    b = y.abs()
    up = torch.where(p_log, torch.exp(b), torch.exp(torch.log1p(p * b) / p)) - 1.0
    down = 1.0 - torch.where(q_log, torch.exp(b), torch.exp(torch.log1p(q * b) / q))
    positive = y >= 0
    u = torch.where(lam == 1.0, y, torch.where(positive, up, down))
    sign = torch.where(positive, torch.ones_like(y), -torch.ones_like(y))
    return u, -(lam - 1.0) * sign * torch.log1p(u.abs())

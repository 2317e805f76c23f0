"""Small shared test utilities: data sets and parameter randomization."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def two_moons(n: int, seed: int, noise: float = 0.08) -> np.ndarray:
    """Two interleaved half circles, float32, shape [n, 2] (a classic non-Gaussian 2-D set)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    pts = np.stack([x, y], axis=1) + noise * rng.standard_normal((n, 2))
    return ((pts - [0.5, 0.25]) / [0.9, 0.5]).astype(np.float32)


@torch.no_grad()
def randomize(module: nn.Module, seed: int, scale: float = 0.1) -> None:
    """Perturb every parameter so that identity-initialized flows are tested away from identity."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))

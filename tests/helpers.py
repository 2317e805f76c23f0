"""Small shared test utilities: data sets and parameter randomization."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from flowserve.models import datasets


def two_moons(n: int, seed: int) -> np.ndarray:
    """The library's two-moons set, centred and scaled to about unit variance, float32 [n, 2]."""
    pts = datasets.two_moons(n, seed=seed).to_numpy()
    return ((pts - [0.5, 0.25]) / [0.9, 0.5]).astype(np.float32)


@torch.no_grad()
def randomize(module: nn.Module, seed: int, scale: float = 0.1) -> None:
    """Perturb every parameter so that identity-initialized flows are tested away from identity."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))

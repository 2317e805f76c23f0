"""flowserve's flow library: every family behind one contract, built by name.

Example:
    >>> from flowserve.models import build_flow
    >>> flow = build_flow("realnvp", dim=2, layers=2, hidden=8)
    >>> flow.log_prob(flow.sample(3, seed=0)).shape
    torch.Size([3])
"""

from flowserve.models import (  # noqa: F401  (importing registers each family)
    autoregressive,
    continuous,
    coupling,
    glow,
    image,
    manifold,
    planar,
    spline,
)
from flowserve.models.base import (
    Chain,
    Flow,
    Standardize,
    Transform,
    build_flow,
    families,
    register_family,
)

__all__ = [
    "Chain",
    "Flow",
    "Standardize",
    "Transform",
    "build_flow",
    "families",
    "register_family",
]

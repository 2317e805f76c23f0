"""flowserve's flow library: every family behind one contract, built by name.

The package imports lazily: ``flowserve.models.train_cli`` and other torch-free modules load
without torch; the names below (and the family registry, filled when
:mod:`flowserve.models.base` loads) come in on first use.

Example:
    >>> from flowserve.models import build_flow
    >>> flow = build_flow("realnvp", dim=2, layers=2, hidden=8)
    >>> flow.log_prob(flow.sample(3, seed=0)).shape
    torch.Size([3])
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Chain",
    "Flow",
    "Standardize",
    "Transform",
    "build_flow",
    "families",
    "register_family",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("flowserve.models.base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

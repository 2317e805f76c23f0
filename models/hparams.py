"""The one vocabulary of flow hyper-parameters: each name, what it means, and the old names.

Every family's builder takes its options under these names (``docs/models.md`` has the same
table; ``tests/test_hparams.py`` keeps the builders, this table and the docs in step). Names
that an earlier version used for the same thing are still accepted, with a
:class:`FutureWarning`, so that config files written before keep training. This module is
torch-free: the training config reads it too.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["HPARAMS", "RENAMED_HPARAMS", "canonical_hparams"]

# name -> meaning. Per-layer notions (``mask``, ``order``) belong to layers, not to builders.
HPARAMS: dict[str, str] = {
    "dim": "the number of features of a row",
    "shape": "the image shape (C, H, W)",
    "layers": "the number of flow layers (coupling, autoregressive, planar, ODE blocks...)",
    "hidden": "the width of the hidden layers of each conditioner network",
    "hidden_layers": "the number of hidden layers of each conditioner network",
    "scale_bound": "the largest per-layer log-scale, lowered for deep flows (SCALE_BUDGET)",
    "bins": "the number of spline bins",
    "bound": "the spline covers [-bound, bound]; the identity outside",
    "iterations": "the fixed iteration count of a numerical inverse",
    "steps": "image flows: flow steps per scale; ffjord: fixed RK4 steps per block",
    "estimator": "the trace estimator in training mode (hutchinson or exact)",
    "levels": "the number of scales of a multi-scale flow",
    "num_values": "the number of integer levels of the data",
    "flat": "whether an image flow takes flat rows",
    "learned_prior": "whether each split of a multi-scale flow has Glow's learned prior",
}

# old name -> today's name (same meaning).
RENAMED_HPARAMS: dict[str, str] = {"depth": "hidden_layers", "clamp": "scale_bound"}


def canonical_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """``hparams`` with every old name of :data:`RENAMED_HPARAMS` replaced by today's.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     canonical_hparams({"layers": 4, "depth": 3})
        {'layers': 4, 'hidden_layers': 3}
    """
    out: dict[str, Any] = {}
    for name, value in hparams.items():
        new = RENAMED_HPARAMS.get(name)
        if new is None:
            out[name] = value
            continue
        if new in hparams:
            raise ValueError(f"{name!r} is the old name of {new!r}; give only {new!r}")
        warnings.warn(
            f"the flow option {name!r} is now called {new!r}; {name!r} will stop working",
            FutureWarning,
            stacklevel=3,
        )
        out[new] = value
    return out

"""Every flow family, with tiny hyper-parameters, for the shared parametrized suites.

A new family gets every check in tests/test_flows.py (and the export parity suite) by adding a
line here; tests/test_flows.py fails while a registered family is missing. ``dim`` is filled in
by each test for the vector families; the others model data of a fixed size, stated here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from flowserve.models.preprocess import data_kind_of

# family -> tiny hyper-parameters (without dim)
VECTOR_FAMILIES: dict[str, dict[str, Any]] = {
    "gaussian": {},
    "planar": {"layers": 4},
    "radial": {"layers": 4},
    "nice": {"layers": 4, "hidden": 16},
    "realnvp": {"layers": 4, "hidden": 16},
    "glow": {"layers": 3, "hidden": 16},
    "maf": {"layers": 3, "hidden": 16},
    "iaf": {"layers": 3, "hidden": 16},
    "nsf": {"layers": 3, "hidden": 16, "bins": 6},
    "nsf_ar": {"layers": 2, "hidden": 16, "bins": 6},
    # exact trace in training too, so the suite's log-det checks are deterministic
    "ffjord": {"hidden": 16, "steps": 8, "estimator": "exact"},
}

GRAY_LEVELS = 17  # as in sklearn's 8x8 digits
IMAGE = {"shape": (1, 4, 4), "levels": 2, "steps": 2, "hidden": 8, "num_values": GRAY_LEVELS}
# The suites that export ONNX use smaller planar and ffjord flows: planar's numerical inverse and
# ffjord's solver steps unroll into the graphs, and export time grows with both.
EXPORT_FAMILIES: dict[str, dict[str, Any]] = {
    **VECTOR_FAMILIES,
    "planar": {**VECTOR_FAMILIES["planar"], "layers": 2},
    "ffjord": {**VECTOR_FAMILIES["ffjord"], "steps": 4},
}
# Adam steps of the short fit to two moons: 200 put every family at least 0.1 nats below the best
# Gaussian; ffjord's exact-trace solves make it the slowest, and 150 steps already do for it.
FIT_STEPS: dict[str, int] = {"ffjord": 150}
DEFAULT_FIT_STEPS = 200

# Families over angles, unit vectors or images: every hyper-parameter, the data's size included.
OTHER_FAMILIES: dict[str, dict[str, Any]] = {
    "circle": {"dim": 2, "layers": 2, "bins": 6, "hidden": 8},
    "sphere": {"dim": 3, "layers": 2, "bins": 6, "hidden": 8},
    "glow_image": IMAGE,
    "realnvp_image": IMAGE,
}
# Families whose base has no temperature: the uniform law on the sphere refuses one.
UNTEMPERED = {"sphere"}
# The shared suite: family -> hyper-parameters.
ALL_FAMILIES: dict[str, dict[str, Any]] = {**VECTOR_FAMILIES, **OTHER_FAMILIES}

# Families with an approximate log-det or numerical inverse can state looser tolerances here.
ROUNDTRIP_ATOL32: dict[str, float] = {}
# A fixed-step ODE solver integrates the trace along its path: close to, not exactly, the
# log-determinant of the discrete map.
LOGDET_ATOL: dict[str, float] = {"ffjord": 1e-5}


def family_hparams(family: str, dim: int) -> dict[str, Any]:
    """Hyper-parameters of ``family`` for :func:`~flowserve.models.build_flow`; ``dim`` sizes
    the vector families only."""
    if family in VECTOR_FAMILIES:
        return {"dim": dim, **VECTOR_FAMILIES[family]}
    return dict(OTHER_FAMILIES[family])


def family_inputs(
    family: str,
    n: int,
    dim: int,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
    spread: float = 1.0,
) -> Tensor:
    """``n`` rows of the data ``family`` models: standard normal reals (times ``spread``) of
    ``dim`` features, angles in [-pi, pi), unit vectors, or dequantized gray-level images."""
    kind = data_kind_of(family)
    if kind == "real":
        return torch.randn(n, dim, dtype=dtype, generator=generator) * spread
    hp = OTHER_FAMILIES[family]
    if kind == "angle":
        u = torch.rand(n, hp["dim"], dtype=dtype, generator=generator)
        return (2 * u - 1) * math.pi
    if kind == "unit_vector":
        x = torch.randn(n, hp["dim"], dtype=dtype, generator=generator)
        return x / x.norm(dim=1, keepdim=True)
    assert kind == "image", kind
    return torch.rand(n, *hp["shape"], dtype=dtype, generator=generator) * hp["num_values"]

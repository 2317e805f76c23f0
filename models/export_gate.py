"""The export gate's extra rows and checks: beyond held-out rows, ONNX Runtime must match torch
on *fresh* rows (drawn from the model itself) and *out-of-distribution* rows (chosen by the kind
of data), within per-family tolerances; ODE flows also state their solver error.

Why these rows: held-out rows sit where training put the density; a graph rewrite that goes
wrong in the tails (fused ops, reordered float32 sums) only shows on rows the model finds
unlikely, and those are exactly the rows anomaly scoring is about.

- ``fresh``: :data:`GATE_ROWS` samples of the model (seeded; integer pixels for images).
- ``ood``: real data: held-out rows pushed 3x further from their mean; angles: uniform angles on
  ``[-3 pi, 3 pi)`` (outside the canonical range too); unit vectors: uniform on the sphere;
  images: uniform random pixels.

:func:`solver_error` measures a fixed-step ODE flow (FFJORD) against the same flow solved with
:data:`SOLVER_REFINEMENT` times the steps in float64: the error the served graph carries in its
log-likelihood, recorded in the manifest and bounded by :data:`SOLVER_TOL`.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from flowserve.artifact import DataKind
from flowserve.models.base import Flow

__all__ = [
    "FAMILY_LOG_PROB_ATOL",
    "GATE_ROWS",
    "OOD_RTOL",
    "SOLVER_REFINEMENT",
    "SOLVER_ROWS",
    "SOLVER_TOL",
    "gate_rows",
    "log_prob_atol",
    "solver_error",
]

GATE_ROWS = 128
# Rows of the finer ODE solve (float64, 4x the steps: the slowest check of an FFJORD export).
SOLVER_ROWS = 64
# Absolute log_prob tolerances (nats) that differ from export's default, with the reason.
# Deep multi-scale flows sum thousands of float32 log-terms, and ONNX Runtime fuses and reorders
# them; glow's 1x1 convolutions add an LU product per pixel. Measured differences on fresh and
# out-of-distribution rows reached a few 1e-3 nats, far below any scoring decision.
FAMILY_LOG_PROB_ATOL: dict[str, float] = {"glow": 5e-3, "glow_image": 1e-2, "realnvp_image": 1e-2}
# Relative tolerance on out-of-distribution rows: there log_prob reaches -1e5 nats (uniform noise
# images under a trained image flow) and float32 sums of that size differ by a few 1e-5 of it
# between graph rewrites; any such row is an anomaly whichever value is served.
OOD_RTOL = 1e-4
SOLVER_REFINEMENT = 4
# A solver error above this (nats) means the served steps are too few for the learned dynamics.
SOLVER_TOL = 2e-2


def log_prob_atol(family: str, default: float) -> float:
    """The absolute log_prob tolerance for ``family`` (``default`` unless listed above)."""
    return FAMILY_LOG_PROB_ATOL.get(family, default)


def _ood(model: Flow, rows: np.ndarray, kind: DataKind, rng: np.random.Generator) -> np.ndarray:
    n, dim = min(GATE_ROWS, len(rows)), rows.shape[1]
    if kind == "angle":
        return rng.uniform(-3 * math.pi, 3 * math.pi, size=(GATE_ROWS, dim))
    if kind == "unit_vector":
        v = rng.standard_normal((GATE_ROWS, dim))
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    if kind == "image":
        levels = int(model.hparams.get("num_values", 256))
        return rng.integers(0, levels, size=(GATE_ROWS, dim)).astype(np.float64)
    x = rows[:n].astype(np.float64)
    mean = x.mean(axis=0)
    return mean + 3.0 * (x - mean)


@torch.no_grad()
def gate_rows(
    model: Flow, rows: np.ndarray, kind: DataKind = "real", seed: int = 0
) -> dict[str, np.ndarray]:
    """Fresh and out-of-distribution rows (float32, finite) for the export gate."""
    rng = np.random.default_rng(seed)
    fresh = model.sample(GATE_ROWS, seed=seed).reshape(GATE_ROWS, -1).double().numpy()
    if kind == "image":
        levels = int(model.hparams.get("num_values", 256))
        fresh = np.clip(np.rint(fresh), 0, levels - 1)
    sets = {"fresh": fresh, "ood": _ood(model, rows, kind, rng)}
    out = {}
    for name, x in sets.items():
        x = x.astype(np.float32)
        out[name] = x[np.isfinite(x).all(axis=1)]
    return out


def _ode_solvers(flow: Flow) -> list[torch.nn.Module]:
    return [m for m in flow.modules() if type(m).__name__ == "FFJORD" and hasattr(m, "steps")]


@torch.no_grad()
def solver_error(model: Flow, x: np.ndarray, served_log_prob: np.ndarray) -> float | None:
    """Max |served log_prob - log_prob with SOLVER_REFINEMENT x the steps, float64| (nats) on
    the first SOLVER_ROWS rows of ``x``; ``None`` for flows without an ODE solver."""
    if not _ode_solvers(model):
        return None
    x, served_log_prob = x[:SOLVER_ROWS], served_log_prob[:SOLVER_ROWS]
    fine = copy.deepcopy(model).double().eval()
    for solver in _ode_solvers(fine):
        solver.steps = int(solver.steps) * SOLVER_REFINEMENT
    ref = fine.log_prob(torch.from_numpy(np.asarray(x, np.float64))).numpy()
    diff = np.abs(np.asarray(served_log_prob, np.float64) - ref)
    return float(np.max(diff)) if np.all(np.isfinite(diff)) else math.inf

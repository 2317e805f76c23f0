"""Per-feature explanations of anomaly scores, from forward-graph calls only (numpy, no torch).

For a row ``x`` and a baseline row ``b``, the value of a set ``S`` of features is the anomaly score
``v(S) = -log p(h_S)`` of the hybrid row ``h_S`` that takes ``x``'s values on ``S`` and ``b``'s
elsewhere. A feature's contribution is its Shapley value for ``v``: how much taking that feature's
observed value (instead of the baseline's) raises the score, averaged over the orders in which the
features can be switched. Contributions always sum to ``score(x) - score(b)`` (Shapley's
efficiency property; it holds for every sampled order too, so also for the sampled estimate).

- ``chain_rule`` (flows whose density factorizes exactly in one variable order, exported with a
  ``chain_rule`` graph, see :mod:`flowserve.models.chain_rule`): feature ``i`` contributes
  ``-log p(x_i | x_j before i)``, an exact decomposition of the score (no baseline). Chosen by
  default where available.
- ``shapley_exact`` (up to :data:`EXACT_MAX_FEATURES` features): every one of the ``2**dim``
  hybrids is scored, the Shapley values are exact for ``v``.
- ``shapley_sampled`` (more features): ``permutations`` random orders, each with its reverse
  (antithetic), ``dim + 1`` hybrids per order; the estimate is unbiased and reproducible by seed.

The default baseline is the model's central row, the image of the base distribution's centre
(``z = 0`` for a normal base) through the inverse graph: a row the model finds typical.

Example:
    >>> import numpy as np
    >>> score = lambda rows: (rows ** 2).sum(axis=1)            # an additive score
    >>> shapley_exact(np.array([[1.0, 2.0]]), np.zeros(2), score).tolist()
    [[1.0, 4.0]]
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from .runtime import CHUNK_ROWS, onnx_session

__all__ = [
    "DEFAULT_PERMUTATIONS",
    "EXACT_MAX_FEATURES",
    "MAX_EVALUATIONS",
    "chain_rule_terms",
    "evaluations",
    "explain_rows",
    "has_chain_rule",
    "shapley_exact",
    "shapley_sampled",
]

EXACT_MAX_FEATURES = 10
DEFAULT_PERMUTATIONS = 16
# Hybrid rows scored per request at most: bounds the work one /explain call can ask for.
MAX_EVALUATIONS = 1 << 20

Score = Callable[[np.ndarray], np.ndarray]


def evaluations(rows: int, dim: int, permutations: int) -> int:
    """Hybrid rows scored to explain ``rows`` rows of ``dim`` features."""
    if dim <= EXACT_MAX_FEATURES:
        return rows * (1 << dim)
    return rows * 2 * permutations * (dim + 1)


def _masks(dim: int) -> np.ndarray:
    """Every subset of ``dim`` features as a boolean row, subset ``k`` holding bit ``j`` of k."""
    k = np.arange(1 << dim)[:, None]
    return ((k >> np.arange(dim)) & 1).astype(bool)


def shapley_exact(x: np.ndarray, baseline: np.ndarray, score: Score) -> np.ndarray:
    """Exact Shapley values ``[N, dim]`` of the hybrid-row score, all ``2**dim`` subsets."""
    x = np.asarray(x, dtype=np.float64)
    n, dim = x.shape
    masks = _masks(dim)
    hybrids = np.where(masks[None], x[:, None, :], baseline[None, None, :])
    v = np.asarray(score(hybrids.reshape(-1, dim)), dtype=np.float64).reshape(n, -1)
    sizes = masks.sum(axis=1)
    # weight of a subset S (not holding j) of size s: s! (dim - s - 1)! / dim!
    weight = np.array(
        [math.factorial(s) * math.factorial(dim - s - 1) / math.factorial(dim) for s in range(dim)]
    )
    out = np.empty((n, dim))
    for j in range(dim):
        without = np.flatnonzero(~masks[:, j])
        gain = v[:, without | (1 << j)] - v[:, without]
        out[:, j] = gain @ weight[sizes[without]]
    return out


def shapley_sampled(
    x: np.ndarray, baseline: np.ndarray, score: Score, permutations: int, seed: int
) -> np.ndarray:
    """Shapley values ``[N, dim]`` estimated from ``permutations`` random orders and their
    reverses; each order's contributions sum exactly to ``score(x) - score(baseline)``."""
    x = np.asarray(x, dtype=np.float64)
    n, dim = x.shape
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(dim) for _ in range(permutations)]
    orders += [o[::-1] for o in orders]
    out = np.zeros((n, dim))
    for order in orders:
        # step t switches feature order[t-1]: hybrids[:, t] holds x on order[:t]
        switched = np.zeros((dim + 1, dim), dtype=bool)
        for t, j in enumerate(order, start=1):
            switched[t:, j] = True
        hybrids = np.where(switched[None], x[:, None, :], baseline[None, None, :])
        v = np.asarray(score(hybrids.reshape(-1, dim)), dtype=np.float64).reshape(n, dim + 1)
        out[:, order] += np.diff(v, axis=1)
    return out / len(orders)


def explain_rows(
    log_prob: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    baseline: np.ndarray,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> tuple[str, np.ndarray, np.ndarray, float]:
    """``(kind, contributions [N, dim], scores [N], baseline score)`` for rows ``x``, with
    ``log_prob`` the model's (float32 rows in, log-densities out)."""

    def score(rows: np.ndarray) -> np.ndarray:
        return -np.asarray(log_prob(rows.astype(np.float32)), dtype=np.float64)

    b = np.asarray(baseline, dtype=np.float64)
    ends = score(np.concatenate([np.asarray(x, np.float64), b[None]]))
    if x.shape[1] <= EXACT_MAX_FEATURES:
        return "shapley_exact", shapley_exact(x, b, score), ends[:-1], float(ends[-1])
    values = shapley_sampled(x, b, score, permutations, seed)
    return "shapley_sampled", values, ends[:-1], float(ends[-1])


# One ONNX Runtime session per loaded model for its chain-rule graph, opened on first use.
_sessions: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_sessions_lock = threading.Lock()


def has_chain_rule(model: Any) -> bool:
    """Whether the model's artifact ships an exact chain-rule graph."""
    m = model.manifest
    return m.chain_rule_order is not None and "chain_rule" in m.graphs


def chain_rule_terms(model: Any, x: np.ndarray) -> np.ndarray:
    """``log p(x_i | x_j before i)`` per row and feature, float64 ``[N, dim]``, from the
    artifact's chain-rule graph (rows sum to ``log_prob`` within the export's parity check)."""
    with _sessions_lock:
        session = _sessions.get(model)
        if session is None:
            path = model.directory / model.manifest.graphs["chain_rule"]
            session = _sessions[model] = onnx_session(path)
    rows = np.ascontiguousarray(x, dtype=np.float32)
    parts = [
        session.run(["terms"], {"x": rows[i : i + CHUNK_ROWS]})[0]
        for i in range(0, len(rows), CHUNK_ROWS)
    ]
    return np.concatenate(parts).astype(np.float64)

"""Conformal anomaly maths: p-values, thresholds and Benjamini-Hochberg selection (numpy only).

The nonconformity score of a row is its anomaly score ``s = -log_prob``. Given ``n`` calibration
scores from rows the model never trained on, the conformal p-value of a new row is

    p(s) = (1 + #{calibration scores >= s}) / (n + 1).

If the new row and the calibration rows are exchangeable (drawn i.i.d. from the same
distribution is enough), ``P(p <= alpha) <= alpha`` for every ``alpha``, in finite samples, with
no assumption on the model: flagging ``p <= alpha`` is a test whose false-positive rate is at most
``alpha``. It is at least ``alpha - 1/(n + 1)`` when the scores have no ties, so the rate reached
lies in ``(alpha - 1/(n+1), alpha]``. The smallest attainable rate is ``1/(n + 1)``.

References:
    Vovk, Gammerman, Shafer. Algorithmic Learning in a Random World (2005).
    Bates, Candes, Lei, Romano, Sesia. Testing for outliers with conformal p-values (2023),
    https://arxiv.org/abs/2104.08279
    Benjamini, Hochberg. Controlling the false discovery rate (1995).

Example:
    >>> import numpy as np
    >>> cal = np.sort(np.arange(1.0, 20.0))          # 19 calibration scores
    >>> p_values(cal, 19, np.array([0.5, 19.0, 25.0])).tolist()
    [1.0, 0.1, 0.05]
    >>> conformal_rank(0.1, 19)                       # flag at 10%: above the 2nd largest score
    2
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["EPS", "benjamini_hochberg", "conformal_rank", "min_fpr", "p_values"]

# Guards floor(alpha * (n + 1)) against float rounding: 1/19 * 19 is 0.9999999999999999.
EPS = 1e-9


def min_fpr(n: int) -> float:
    """The smallest false-positive rate attainable with ``n`` calibration scores: ``1/(n+1)``."""
    return 1.0 / (n + 1)


def conformal_rank(fpr: float, n: int) -> int:
    """``k = floor(fpr * (n + 1))``: a row is flagged at rate ``fpr`` when its score exceeds the
    ``k``-th largest calibration score. 0 means ``fpr`` is below the attainable minimum."""
    return min(math.floor(fpr * (n + 1) + EPS), n)


def p_values(sorted_scores: np.ndarray, n: int, scores: np.ndarray) -> np.ndarray:
    """Conformal p-values of ``scores`` against calibration scores.

    Arguments:
        sorted_scores: the calibration scores in ascending order; all ``n`` of them, or only the
            largest ones (then p-values are exact while fewer than ``len(sorted_scores)``
            calibration scores are >= the row's score, and the caller handles the rest).
        n: the number of calibration scores in all.
        scores: the rows' scores ``-log_prob``; NaN gets p-value 0 (the most anomalous).
    """
    s = np.asarray(scores, dtype=np.float64)
    cal = np.asarray(sorted_scores, dtype=np.float64)
    at_least = cal.size - np.searchsorted(cal, s, side="left")
    p = (1.0 + at_least) / (n + 1.0)
    return np.where(np.isnan(s), 0.0, p)


def benjamini_hochberg(p: np.ndarray, fdr: float) -> np.ndarray:
    """Rows selected by the Benjamini-Hochberg procedure at false-discovery rate ``fdr``.

    Selects the ``k`` smallest p-values, ``k`` the largest with ``p_(k) <= k * fdr / m``. On
    conformal p-values with a shared calibration set the expected share of normal rows among the
    selected ones is at most ``fdr`` (Bates et al. 2023: the p-values are PRDS).
    """
    p = np.asarray(p, dtype=np.float64)
    m = p.size
    selected = np.zeros(m, dtype=bool)
    if m == 0:
        return selected
    order = np.argsort(p, kind="stable")
    below = p[order] <= fdr * np.arange(1, m + 1) / m
    if below.any():
        k = int(np.flatnonzero(below)[-1]) + 1
        selected[order[:k]] = True
    return selected

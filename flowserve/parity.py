"""Parity between two runtimes of one flow: the tolerances and the one formula that applies them.

Export compares ONNX Runtime (and TorchScript) with torch; ``flowserve verify`` compares
TorchScript with ONNX Runtime. Both judge a log-likelihood ``got`` against a reference ``ref``
row by row:

    ``|got - ref| <= atol + rtol * |ref|``

A non-finite value agrees only with the same value (``-inf`` on both sides: a row off the
manifold); any other non-finite value is an infinite difference. Round trips ``x -> z -> x`` are
judged per feature in units of the feature's scale (:func:`flowserve.artifact.roundtrip_error`)
against :data:`ROUNDTRIP_TOL`. Torch-free (numpy only).

Example:
    >>> import numpy as np
    >>> ref = np.array([-1.0, -2.0, -np.inf])
    >>> check = log_prob_parity(ref + [2e-4, -5e-4, 0.0], ref)
    >>> check.passed, round(check.max_abs_diff, 6)
    (True, 0.0005)
    >>> log_prob_parity(ref + [0.1, 0.0, 0.0], ref).worst
    0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LOG_PROB_ATOL",
    "LOG_PROB_RTOL",
    "ROUNDTRIP_TOL",
    "LogProbParity",
    "feature_scale",
    "log_prob_parity",
]

# log_prob parity, between runtimes (both float32): |diff| <= ATOL + RTOL * |log_prob|.
# float32 sums of D log-terms carry ~1e-7 * D * |term| rounding, and graph rewrites (fused ops,
# reordered sums) change the rounding, so a few 1e-4 nats is noise; 1e-3 nats is far below any
# difference that matters for scoring (thresholds differ between rows by whole nats).
LOG_PROB_ATOL = 1e-3
LOG_PROB_RTOL = 1e-5
# Round trip x -> z -> x through both ONNX graphs, per feature in units of the feature's scale
# (the standardization scale; raw units without one): |x - x'| / scale <= ROUNDTRIP_TOL.
ROUNDTRIP_TOL = 1e-3


@dataclass(frozen=True)
class LogProbParity:
    """What :func:`log_prob_parity` measured.

    Arguments:
        passed: whether every row is within its tolerance.
        max_abs_diff: the largest per-row difference (nats; ``inf`` when a non-finite value
            has no match, ``0`` for no rows).
        worst: the row furthest past (or closest to) its tolerance.
        tolerance: the largest per-row tolerance, ``atol + rtol * max |ref|`` over finite rows.
        atol, rtol: the tolerance's terms.
    """

    passed: bool
    max_abs_diff: float
    worst: int
    tolerance: float
    atol: float
    rtol: float

    @property
    def rule(self) -> str:
        """The tolerance as text, for error messages: ``"0.001 + 1e-05*|log_prob|"``."""
        return f"{self.atol:g} + {self.rtol:g}*|log_prob|"


def log_prob_parity(
    got: np.ndarray, ref: np.ndarray, atol: float = LOG_PROB_ATOL, rtol: float = LOG_PROB_RTOL
) -> LogProbParity:
    """Judge log-likelihoods ``got`` against ``ref`` (same shape) with the module's formula."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    both = np.isfinite(got) & np.isfinite(ref)
    same = ~np.isfinite(ref) & (ref == got)
    with np.errstate(invalid="ignore"):  # inf - inf where both are -inf; replaced below
        diff = np.where(both, np.abs(got - ref), np.where(same, 0.0, np.inf))
    magnitude = np.abs(np.where(both, ref, 0.0))
    allowed = atol + rtol * magnitude
    excess = diff - allowed
    return LogProbParity(
        passed=bool(np.all(diff <= allowed)),
        max_abs_diff=float(np.max(diff, initial=0.0)),
        worst=int(np.argmax(excess)) if excess.size else 0,
        tolerance=float(atol + rtol * np.max(magnitude, initial=0.0)),
        atol=atol,
        rtol=rtol,
    )


def feature_scale(standardize_scale: Sequence[float] | None, dim: int) -> np.ndarray:
    """Per-feature scale of round-trip errors: ``|standardize_scale|`` (one value per feature,
    or one for all), ones without a standardization.

    Example:
        >>> feature_scale([-2.0], 3), feature_scale(None, 2)
        (array([2., 2., 2.]), array([1., 1.]))
    """
    if standardize_scale is not None:
        scale = np.abs(np.asarray(standardize_scale, dtype=np.float64).reshape(-1))
        if scale.size == dim:
            return scale
        if scale.size == 1:
            return np.full(dim, scale[0])
    return np.ones(dim)

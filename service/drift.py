"""Served-score drift: a sliding window of served rows compared with the calibration distribution.

Every row scored by ``/score`` (and V2 ``score`` outputs) adds its conformal p-value, its flag and
the requested false-positive rate to its model version's window (the last
:data:`DEFAULT_WINDOW` rows). While served rows are exchangeable with the calibration rows, their
conformal p-values are uniform on ``{1/(n+1), ..., 1}``, so comparing the window's p-values with
that law is comparing the served score distribution with the calibration one (a rank transform):

- ``ks``: the Kolmogorov-Smirnov statistic ``sup_t |F_window(t) - F_cal(t)|``. ``ks_critical`` is
  the two-sample 5% critical value ``1.358 * sqrt((n + w) / (n * w))`` for ``w`` window rows and
  ``n`` calibration rows; above it, the served scores differ from the calibration scores.
- ``psi``: the population stability index over ten p-value bins (``(0, 0.1]``, ..., ``(0.9, 1]``),
  ``sum (a - e) * ln(a / e)``; the usual reading: below 0.1 stable, 0.1-0.25 moderate shift,
  above 0.25 a major shift.
- ``flag_rate`` against ``expected_flag_rate`` (the mean over the window of the rate each row's
  flag was calibrated to reach, ``floor(fpr * (n + 1)) / (n + 1)``).

``status`` is ``"insufficient"`` below :data:`MIN_ROWS` rows, ``"drift"`` when ``ks`` exceeds
``ks_critical`` or ``psi`` exceeds :data:`PSI_DRIFT`, else ``"ok"``. Windows live with the loaded
model object (a reload starts a fresh one) and, with several workers, per worker process.
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from flowserve import conformal
from flowserve.artifact import Calibration

from .schemas import DriftInfo

__all__ = [
    "DEFAULT_WINDOW",
    "MIN_ROWS",
    "PSI_DRIFT",
    "DriftSummary",
    "DriftWindow",
    "drift_info",
    "drift_window",
    "ks_statistic",
    "psi",
]

DEFAULT_WINDOW = 1000
MIN_ROWS = 50
PSI_DRIFT = 0.25
_KS_C_5PCT = 1.358
_PSI_EDGES = np.linspace(0.0, 1.0, 11)
_PSI_FLOOR = 1e-4


def _null_cdf(t: np.ndarray, n: int, lattice: bool) -> np.ndarray:
    """``P(p <= t)`` for the p-value of a row exchangeable with ``n`` calibration rows."""
    t = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)
    if not lattice:  # p-values read from a quantile grid: treat them as continuous
        return t
    return np.floor(t * (n + 1) + 1e-9) / (n + 1)


def ks_statistic(p: np.ndarray, n: int, lattice: bool = True) -> float:
    """KS distance between the empirical law of p-values ``p`` and their law under no drift."""
    p = np.sort(np.asarray(p, dtype=np.float64))
    w = p.size
    if w == 0:
        return 0.0
    at = _null_cdf(p, n, lattice)
    before = np.maximum(at - 1.0 / (n + 1), 0.0) if lattice else at
    i = np.arange(1, w + 1)
    return float(max(np.max(np.abs(i / w - at)), np.max(np.abs((i - 1) / w - before))))


def psi(p: np.ndarray, n: int, lattice: bool = True) -> float:
    """Population stability index of p-values ``p`` over ten equal bins against no drift."""
    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        return 0.0
    expected = np.diff(_null_cdf(_PSI_EDGES, n, lattice))
    counts = np.histogram(np.clip(p, 0.0, 1.0), bins=_PSI_EDGES)[0]
    actual = counts / p.size
    keep = expected > 0  # with few calibration rows some bins hold no attainable p-value
    a = np.maximum(actual[keep], _PSI_FLOOR)
    e = np.maximum(expected[keep], _PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class DriftSummary:
    """What a drift window shows now (see the module docstring for each number)."""

    window_rows: int
    ks: float
    ks_critical: float
    psi: float
    flag_rate: float
    expected_flag_rate: float
    status: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DriftWindow:
    """The last ``size`` served rows of one model version: p-values, flags, expected rates."""

    def __init__(self, calibration: Calibration, size: int = DEFAULT_WINDOW) -> None:
        self.n = calibration.n_rows
        self.lattice = calibration.exact
        self.size = size
        self._p = np.zeros(size)
        self._flag = np.zeros(size)
        self._expected = np.zeros(size)
        self._next = 0
        self._rows = 0
        self._lock = threading.Lock()

    def observe(self, p_values: np.ndarray, flags: np.ndarray, fpr: float) -> DriftSummary:
        """Add a scored batch (only its last ``size`` rows matter) and return the new summary."""
        p = np.asarray(p_values, dtype=np.float64)[-self.size :]
        f = np.asarray(flags, dtype=np.float64)[-self.size :]
        expected = conformal.conformal_rank(fpr, self.n) / (self.n + 1)
        with self._lock:
            idx = (self._next + np.arange(p.size)) % self.size
            self._p[idx], self._flag[idx], self._expected[idx] = p, f, expected
            self._next = int((self._next + p.size) % self.size)
            self._rows = min(self._rows + p.size, self.size)
            return self._summary()

    def summary(self) -> DriftSummary:
        with self._lock:
            return self._summary()

    def _summary(self) -> DriftSummary:
        w = self._rows
        p = self._p[:w]
        ks = ks_statistic(p, self.n, self.lattice)
        critical = _KS_C_5PCT * math.sqrt((self.n + w) / (self.n * w)) if w else math.inf
        value = psi(p, self.n, self.lattice)
        if w < MIN_ROWS:
            status = "insufficient"
        elif ks > critical or value > PSI_DRIFT:
            status = "drift"
        else:
            status = "ok"
        return DriftSummary(
            window_rows=w,
            ks=ks,
            ks_critical=critical,
            psi=value,
            flag_rate=float(np.mean(self._flag[:w])) if w else 0.0,
            expected_flag_rate=float(np.mean(self._expected[:w])) if w else 0.0,
            status=status,
        )


# One window per loaded model object: a reload (a new object) starts afresh, and a version that
# is dropped takes its window with it.
_windows: weakref.WeakKeyDictionary[Any, DriftWindow] = weakref.WeakKeyDictionary()
_windows_lock = threading.Lock()


def drift_window(model: Any, create: bool = True) -> DriftWindow | None:
    """The drift window of a loaded model (``FlowModel``), created on first use."""
    with _windows_lock:
        window = _windows.get(model)
        if window is None and create:
            window = _windows[model] = DriftWindow(model.manifest.calibration)
        return window


def drift_info(model: Any) -> DriftInfo | None:
    """The ``/models`` drift entry of a loaded model (None before it scored any row)."""
    window = drift_window(model, create=False) if model is not None else None
    if window is None:
        return None
    return DriftInfo(**window.summary().to_dict())

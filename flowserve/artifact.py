"""The artifact contract: the one definition both the training side and the service import.

An artifact is a directory ``<root>/<name>/<version>/`` holding ``manifest.json`` plus the files
it lists (ONNX graphs for both directions, optionally a TorchScript file, a report). This module
has no torch and no onnxruntime dependency: it is pydantic + numpy only.

ONNX graph contract (both graphs work on flat float32 rows of the *raw* feature space; the
preprocessing and its log-determinant live inside the graphs):

- ``forward.onnx``: input ``x`` ``[batch, dim]`` -> outputs ``z`` ``[batch, dim]`` and
  ``log_prob`` ``[batch]`` (log-density of the raw row, in nats).
- ``inverse.onnx``: input ``z`` ``[batch, dim]`` -> output ``x`` ``[batch, dim]``.
- ``score.onnx`` (cross-fitted calibration only, ``graphs["score"]``): input ``x`` -> outputs
  ``log_prob`` ``[batch]`` (the served model's) and ``fold_log_prob`` ``[batch, folds]`` (the
  fold models', for cross-conformal p-values: :class:`CrossFitScores`).

Sampling is base noise (see :class:`BaseSpec`) pushed through ``inverse.onnx``.

Anomaly scoring: ``score = -log_prob``. The calibration holds the anomaly scores of rows the
model never trained on; a row's conformal p-value is the share of them at least as anomalous
(:mod:`flowserve.conformal`), and it is an anomaly at false-positive rate ``fpr`` when its
p-value is at most ``fpr`` (``P(false alarm) <= fpr`` for exchangeable rows).
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from flowserve import conformal

__all__ = [
    "CHAIN_RULE_GRAPH",
    "FORWARD_GRAPH",
    "INTEGER_TOLERANCE",
    "INVERSE_GRAPH",
    "MANIFEST_FILE",
    "MAX_STORED_SCORES",
    "SCHEMA_MINOR",
    "SCHEMA_VERSION",
    "SCORE_GRAPH",
    "TORCHSCRIPT_FILE",
    "UNIT_NORM_TOLERANCE",
    "ArtifactError",
    "BaseSpec",
    "Calibration",
    "CrossFitScores",
    "DataKind",
    "Manifest",
    "Metrics",
    "Parity",
    "PowerTransform",
    "Preprocessing",
    "calibration_levels",
    "load_manifest",
    "needed_minor",
    "next_version",
    "roundtrip_error",
    "sha256_file",
    "verify_artifact",
    "version_dirs",
    "write_manifest",
]

log = logging.getLogger(__name__)

# Manifest schema version (ADR 0003): a reader reads its own major only, and any minor of it; a
# newer minor's fields it does not know are ignored with a warning. Writers write their own.
SCHEMA_VERSION = 1  # the major
# 1 added calibration.cross_fit (cross-conformal p-values, a "score" graph); 2 added
# preprocessing.power_transform (the graphs apply it: a reader that ignores it still serves)
SCHEMA_MINOR = 2
MANIFEST_FILE = "manifest.json"
FORWARD_GRAPH = "forward.onnx"
INVERSE_GRAPH = "inverse.onnx"
# Optional: x -> per-feature chain-rule terms, for flows with an exact single-order factorization.
CHAIN_RULE_GRAPH = "chain_rule.onnx"
# x -> log_prob [batch] and fold_log_prob [batch, K]: the served model and the K fold models of
# cross-fitted calibration in one graph, so /score makes one call (Calibration.cross_fit).
SCORE_GRAPH = "score.onnx"
TORCHSCRIPT_FILE = "model.pt"


class ArtifactError(Exception):
    """An artifact directory is missing, malformed, or does not match its manifest."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseSpec(_Strict):
    """Base distribution of the latent space.

    ``normal``: independent standard normal in every latent coordinate (sampling scales it by
    the temperature). ``uniform``: independent uniform on ``[low, high)`` per coordinate (flows on
    circles and tori). ``sphere``: uniform on the unit sphere ``S^2`` (density ``1 / (4 pi)``
    with respect to area; latents are unit 3-vectors). A temperature other than 1 has no meaning
    for the compact bases (``uniform``, ``sphere``): sampling refuses it.
    """

    kind: Literal["normal", "uniform", "sphere"] = "normal"
    low: float | None = None
    high: float | None = None

    @property
    def takes_temperature(self) -> bool:
        """Whether sampling can scale the base by a temperature (only the normal base)."""
        return self.kind == "normal"

    def sample(self, n: int, dim: int, temperature: float, rng: np.random.Generator) -> np.ndarray:
        if temperature != 1.0 and not self.takes_temperature:
            raise ValueError(
                f"temperature {temperature} has no meaning for a {self.kind} base (a compact "
                "manifold); sample with temperature 1"
            )
        if self.kind == "normal":
            return (temperature * rng.standard_normal((n, dim))).astype(np.float32)
        if self.kind == "sphere":
            eps = rng.standard_normal((n, dim))
            norm = np.maximum(np.linalg.norm(eps, axis=1, keepdims=True), 1e-12)
            return (eps / norm).astype(np.float32)
        assert self.low is not None and self.high is not None
        return rng.uniform(self.low, self.high, size=(n, dim)).astype(np.float32)


# Served unit vectors (data kind ``unit_vector``) may be off the unit sphere by this much in norm
# (|norm - 1|): float32 rounding and values printed to 4 decimals stay far inside it.
UNIT_NORM_TOLERANCE = 1e-3
# Served integer pixels (data kind ``image``) may be off an integer by this much.
INTEGER_TOLERANCE = 1e-3

DataKind = Literal["real", "angle", "unit_vector", "image"]


class PowerTransform(_Strict):
    """Yeo-Johnson power transforms of real columns, applied before standardizing.

    Per column ``j``: ``u = (x - center[j]) / spread[j]``, then ``y = ((1 + u)^l - 1) / l`` for
    ``u >= 0`` and ``y = -((1 - u)^(2 - l) - 1) / (2 - l)`` for ``u < 0`` (logarithms at ``l = 0``
    and ``l = 2``), with ``l = lambdas[j]`` in ``[0, 2]``, so each column is a bijection of R onto
    R; ``l = 1`` leaves the column as it is. The log-derivative
    ``(l - 1) * sign(u) * log(1 + |u|) - log(spread[j])`` is included in ``log_prob``.
    """

    method: Literal["yeo-johnson"] = "yeo-johnson"
    center: list[float]
    spread: list[float]
    lambdas: list[Annotated[float, Field(ge=0.0, le=2.0)]]


class Preprocessing(_Strict):
    """What the graphs do to a raw row before the flow; informational, the graphs apply it.

    ``data_kind`` says what a row is, and so how it is prepared and which rows are valid:

    - ``real``: real-valued columns, standardized: ``(x - mean) / scale`` per feature, its
      log-determinant ``-sum(log scale)`` included in ``log_prob``. With ``power_transform``
      (schema minor 2), skewed columns first go through their Yeo-Johnson transform, and
      ``mean``/``scale`` are those of the transformed training rows.
    - ``angle``: angles in radians (circle, torus), never standardized; any finite value is
      valid and is wrapped to ``[-pi, pi)`` (angles equal mod ``2 pi`` are the same point).
    - ``unit_vector``: unit vectors in R^3 (the sphere), never standardized; rows whose norm is
      off 1 by more than ``manifold_tolerance`` are off the sphere: refused by the service, and
      ``log_prob = -inf`` in the graphs.
    - ``image``: integer pixels in ``[0, num_values)`` (flat rows of ``input_shape``), never
      standardized; constant pixels are fine. ``dequantization`` is what training used
      (``uniform``: ``v = x + u - 1/2``, ``u ~ U[0, 1)^D``, so each integer owns the unit cell
      centred on it); the graphs score ``x`` as given, i.e. the density at the cell centre.
      Rows with a pixel outside ``[0, num_values - 1]`` or further than ``manifold_tolerance``
      from an integer are refused by the service.
    """

    standardize_mean: list[float] | None = None
    standardize_scale: list[float] | None = None
    power_transform: PowerTransform | None = None
    dequantization: Literal["uniform", "variational"] | None = None
    nan_policy: Literal["drop", "error"] = "drop"
    data_kind: DataKind = "real"
    manifold_tolerance: float | None = None
    num_values: int | None = Field(None, ge=2)

    def power_transformed(self, feature_names: list[str]) -> list[str]:
        """The features whose power is not the identity (none without a power transform)."""
        power = self.power_transform
        if power is None:
            return []
        return [name for name, lam in zip(feature_names, power.lambdas, strict=True) if lam != 1.0]

    def as_data(self, x: np.ndarray) -> np.ndarray:
        """Decoded rows as data of this kind: images become integer pixels (rounded to the
        cell centre, clipped to ``[0, num_values - 1]``); other kinds are returned as they are."""
        if self.data_kind != "image":
            return x
        return np.clip(np.rint(x), 0, (self.num_values or 256) - 1).astype(x.dtype, copy=False)

    def invalid_rows(self, rows: np.ndarray) -> tuple[np.ndarray, str]:
        """Indices of (finite) raw rows outside this data kind's domain, and why they are."""
        rows = np.asarray(rows)
        none, tol = np.zeros(0, dtype=np.int64), self.manifold_tolerance
        if self.data_kind == "unit_vector":
            tol = UNIT_NORM_TOLERANCE if tol is None else tol
            norm = np.linalg.norm(rows.astype(np.float64), axis=1)
            bad = np.flatnonzero(np.abs(norm - 1.0) > tol)
            return bad, f"are not unit vectors (|norm - 1| > {tol:g}): they are off the sphere"
        if self.data_kind == "image":
            tol = INTEGER_TOLERANCE if tol is None else tol
            top = (self.num_values or 256) - 1
            x = rows.astype(np.float64)
            off = (np.abs(x - np.rint(x)) > tol) | (x < -tol) | (x > top + tol)
            bad = np.flatnonzero(off.any(axis=1))
            return bad, f"hold pixels that are not integers in [0, {top}]"
        return none, ""


class Metrics(_Strict):
    """Mean negative log-likelihood (nats per row) on each split; bits/dim where it applies."""

    train_nll: float | None = None
    val_nll: float | None = None
    test_nll: float | None = None
    bits_per_dim: float | None = None
    bits_per_dim_kind: Literal["continuous_density", "dequantized_bound"] | None = Field(
        None,
        description="continuous_density: test NLL / (D ln 2) of a density; dequantized_bound: "
        "an upper bound on the discrete bits/dim of integer data (uniform dequantization)",
    )
    epochs: int | None = None
    train_rows: int | None = None


def calibration_levels() -> list[float]:
    """Quantile levels stored in a calibration: fine in the lower tail, where thresholds live."""
    tail = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3]
    grid = np.round(np.linspace(0.0, 1.0, 201), 6).tolist()
    return sorted(set(tail + grid))


# Calibration scores kept in a manifest: all of them up to this many, else the largest this
# many (p-values stay exact up to MAX_STORED_SCORES / (n + 1), the range thresholds live in).
MAX_STORED_SCORES = 10_000
CalibrationMethod = Literal["holdout", "split", "cross-fit"]


class CrossFitScores(_Strict):
    """Cross-conformal calibration (Vovk 2015): each calibration row is scored by the one model
    that never trained on it, and a new row by every such model.

    ``served`` are the ascending anomaly scores of the test split under the served model;
    ``folds[k]`` those of the rows fold model ``k`` left out, under fold model ``k``, which the
    artifact's ``score`` graph serves as column ``k`` of ``fold_log_prob``. A new row's p-value
    counts, in each group, the scores at least as large as the row's score under that group's
    model (:meth:`Calibration.p_values`), so a row is always compared with rows scored by the
    same model: a fold model trained on fewer rows no longer makes the flag conservative.
    """

    served: list[float]
    folds: list[list[float]] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> CrossFitScores:
        for group in (self.served, *self.folds):
            if np.any(np.diff(group) < 0):
                raise ValueError("cross-fit scores must be in ascending order")
        return self

    @property
    def n_rows(self) -> int:
        return len(self.served) + sum(len(f) for f in self.folds)


class Calibration(_Strict):
    """Calibration of anomaly scoring: conformal p-values and thresholds with a finite-sample
    guarantee (see :mod:`flowserve.conformal`).

    ``scores`` are the calibration rows' anomaly scores ``-log_prob`` in ascending order (all
    ``n_rows`` of them, or the largest :data:`MAX_STORED_SCORES`), from rows the served model
    never trained on; ``method`` says how they were obtained: ``split`` (a calibration split
    held out of training), ``cross-fit`` (out-of-fold scores of K-fold cross-fitting) or
    ``holdout`` (the export's holdout rows). ``levels[i]`` is the share of calibration rows whose
    log-likelihood is at most ``log_prob_quantiles[i]`` (for percentiles, and for manifests
    written before scores were stored). ``default_fpr`` is the false-positive rate used when a
    request names none, and ``threshold`` the log-likelihood threshold at that rate.

    Example:
        >>> cal = Calibration.from_log_probs(-np.arange(1.0, 20.0), default_fpr=0.1)
        >>> cal.min_fpr, cal.threshold_for(0.1)
        (0.05, -18.0)
        >>> cal.p_values(np.array([-19.0, -1.0])).tolist()
        [0.1, 1.0]
    """

    levels: list[float]
    log_prob_quantiles: list[float]
    n_rows: int = Field(ge=1)
    default_fpr: float = Field(0.01, gt=0.0, lt=1.0)
    threshold: float
    method: CalibrationMethod = "holdout"
    scores: list[float] | None = Field(
        None, description="ascending calibration scores -log_prob (the largest, if truncated)"
    )
    cross_fit: CrossFitScores | None = Field(
        None,
        description="cross-conformal groups (schema minor 1): p-values and flags compare each "
        "row with the rows each model never trained on, under that model (graphs['score'])",
    )

    @model_validator(mode="after")
    def _check(self) -> Calibration:
        if len(self.levels) != len(self.log_prob_quantiles) or len(self.levels) < 2:
            raise ValueError("levels and log_prob_quantiles must have the same length (>= 2)")
        if np.any(np.diff(self.levels) <= 0) or np.any(np.diff(self.log_prob_quantiles) < 0):
            raise ValueError("calibration levels and quantiles must be increasing")
        if self.scores is not None:
            if not 1 <= len(self.scores) <= self.n_rows:
                raise ValueError(f"{len(self.scores)} scores for n_rows {self.n_rows}")
            if np.any(np.diff(self.scores) < 0):
                raise ValueError("calibration scores must be in ascending order")
        if self.cross_fit is not None and self.cross_fit.n_rows != self.n_rows:
            raise ValueError(
                f"cross-fit groups hold {self.cross_fit.n_rows} scores for n_rows {self.n_rows}"
            )
        return self

    @classmethod
    def from_log_probs(
        cls,
        log_probs: np.ndarray,
        default_fpr: float = 0.01,
        method: CalibrationMethod = "holdout",
    ) -> Calibration:
        """Calibrate on log-likelihoods of rows the model never trained on (finite values only).

        A ``default_fpr`` below the attainable minimum ``1/(n+1)`` is raised to it, with a
        warning: the default flag must mean what it says.
        """
        lp = np.asarray(log_probs, dtype=np.float64)
        lp = lp[np.isfinite(lp)]
        if lp.size < 2:
            raise ValueError("calibration needs at least 2 finite held-out log-likelihoods")
        n = int(lp.size)
        if default_fpr < conformal.min_fpr(n):
            log.warning(
                "default false-positive rate %g is below the attainable minimum 1/(n+1) = %.4g "
                "with %d calibration rows; using %.4g (calibrate on more rows for lower rates)",
                default_fpr,
                conformal.min_fpr(n),
                n,
                conformal.min_fpr(n),
            )
            default_fpr = conformal.min_fpr(n)
        levels = calibration_levels()
        q = np.maximum.accumulate(np.quantile(lp, levels))
        scores = np.sort(-lp)[-MAX_STORED_SCORES:]
        partial = cls(
            levels=levels,
            log_prob_quantiles=q.tolist(),
            n_rows=n,
            default_fpr=default_fpr,
            threshold=0.0,
            method=method,
            scores=scores.tolist(),
        )
        return partial.model_copy(update={"threshold": partial.threshold_for(default_fpr)})

    @classmethod
    def cross_fitted(
        cls, served: np.ndarray, folds: list[np.ndarray], default_fpr: float = 0.01
    ) -> Calibration:
        """Cross-conformal calibration from the served model's log-likelihoods of the test
        split (``served``) and each fold model's of the rows it left out (``folds``).

        The pooled scores give the percentiles, the drift reference and ``threshold``, which
        is then indicative only: the flag is ``p_value <= fpr`` (see :class:`CrossFitScores`).
        Rows whose log-likelihood is not finite are left out of their group.
        """
        groups = [np.asarray(g, dtype=np.float64).reshape(-1) for g in (served, *folds)]
        groups = [g[np.isfinite(g)] for g in groups]
        pooled = cls.from_log_probs(np.concatenate(groups), default_fpr, "cross-fit")
        cross = CrossFitScores(
            served=np.sort(-groups[0]).tolist(), folds=[np.sort(-g).tolist() for g in groups[1:]]
        )
        return pooled.model_copy(update={"cross_fit": cross})

    @property
    def folds(self) -> int | None:
        """The number of fold models whose log-likelihoods the p-values need (cross-fit)."""
        return None if self.cross_fit is None else len(self.cross_fit.folds)

    @property
    def min_fpr(self) -> float:
        """The smallest attainable false-positive rate, ``1/(n_rows + 1)``."""
        return conformal.min_fpr(self.n_rows)

    @property
    def exact(self) -> bool:
        """Whether p-values and thresholds are exact conformal ones (scores stored); manifests
        without scores interpolate the quantile grid instead."""
        return self.scores is not None

    def check_fpr(self, fpr: float) -> None:
        """Raise ``ValueError`` naming the attainable minimum when ``fpr`` is below it."""
        if conformal.conformal_rank(fpr, self.n_rows) < 1:
            raise ValueError(
                f"fpr {fpr:g} is below the smallest attainable false-positive rate "
                f"1/(n+1) = {self.min_fpr:.6g} for this model's {self.n_rows} calibration rows"
            )

    def threshold_for(self, fpr: float | None = None) -> float:
        """Log-likelihood below which a row is an anomaly at false-positive rate ``fpr``.

        With stored scores this is the conformal threshold: ``log_prob < threshold`` exactly
        when the row's p-value is at most ``fpr``. Raises ``ValueError`` when ``fpr`` is below
        :attr:`min_fpr`.
        """
        if fpr is None:
            return self.threshold
        self.check_fpr(fpr)
        k = conformal.conformal_rank(fpr, self.n_rows)
        if self.scores is not None and k <= len(self.scores):
            return -float(self.scores[len(self.scores) - k])
        return float(np.interp(fpr, self.levels, self.log_prob_quantiles))

    def p_values(self, log_prob: np.ndarray, fold_log_prob: np.ndarray | None = None) -> np.ndarray:
        """Conformal p-values ``(1 + #{calibration scores >= s}) / (n + 1)``, ``s = -log_prob``.

        Small p-values mean unlikely rows; NaN log-likelihoods get 0. Exact while fewer than
        ``len(scores)`` calibration scores are >= ``s`` (always, unless scores were truncated);
        otherwise, and for manifests without scores, read from the quantile grid.

        A cross-fitted calibration needs ``fold_log_prob`` (``[N, folds]``, the score graph's):
        each group's scores are compared with the row's score under that group's model.
        """
        if self.cross_fit is not None:
            return self._cross_fit_p_values(log_prob, fold_log_prob)
        lp = np.asarray(log_prob, dtype=np.float64)
        grid = (1.0 + self.n_rows * self._cdf(lp)) / (self.n_rows + 1.0)
        grid = np.where(np.isnan(lp), 0.0, grid)
        if self.scores is None:
            return grid
        exact = conformal.p_values(np.asarray(self.scores), self.n_rows, -lp)
        if len(self.scores) == self.n_rows:
            return exact
        floor = (1.0 + len(self.scores)) / (self.n_rows + 1.0)
        return np.where(exact < floor, exact, np.maximum(grid, floor))

    def _cross_fit_p_values(
        self, log_prob: np.ndarray, fold_log_prob: np.ndarray | None
    ) -> np.ndarray:
        cross = self.cross_fit
        assert cross is not None
        lp = np.asarray(log_prob, dtype=np.float64).reshape(-1)
        if fold_log_prob is None:
            raise ValueError("a cross-fitted calibration needs the fold models' log_prob")
        folds = np.asarray(fold_log_prob, dtype=np.float64).reshape(len(lp), -1)
        if folds.shape[1] != len(cross.folds):
            raise ValueError(f"{folds.shape[1]} fold log_prob columns for {len(cross.folds)} folds")
        at_least = np.zeros(len(lp))
        for group, column in zip((cross.served, *cross.folds), (lp, *folds.T), strict=True):
            scores = np.asarray(group, dtype=np.float64)
            at_least += scores.size - np.searchsorted(scores, -column, side="left")
        p = (1.0 + at_least) / (self.n_rows + 1.0)
        return np.where(np.isnan(lp) | np.isnan(folds).any(axis=1), 0.0, p)

    def flags(
        self, log_prob: np.ndarray, fpr: float, fold_log_prob: np.ndarray | None = None
    ) -> np.ndarray:
        """Whether each row is an anomaly at false-positive rate ``fpr``: its p-value is at most
        ``fpr`` (for scores kept whole, the same as ``log_prob < threshold_for(fpr)``). NaN
        log-likelihoods are anomalies. Raises ``ValueError`` below :attr:`min_fpr`."""
        self.check_fpr(fpr)
        if self.cross_fit is not None:
            return self.p_values(log_prob, fold_log_prob) <= fpr + conformal.EPS
        return ~(np.asarray(log_prob) >= self.threshold_for(fpr))

    def _cdf(self, log_prob: np.ndarray) -> np.ndarray:
        """Share of calibration rows whose log-likelihood is at most ``log_prob`` (interpolated)."""
        return np.interp(log_prob, self.log_prob_quantiles, self.levels, left=0.0, right=1.0)

    def percentile(self, log_prob: np.ndarray) -> np.ndarray:
        """Anomaly percentile in [0, 100]: the share of held-out rows more likely than each row.

        100 means less likely than every held-out row; 50 is a typical row.
        """
        return 100.0 * (1.0 - self._cdf(np.asarray(log_prob, dtype=np.float64)))


def roundtrip_error(x: np.ndarray, x_back: np.ndarray, scale: np.ndarray, base: BaseSpec) -> float:
    """Max per-feature round-trip error ``|x - x'| / scale`` (inf if anything is not finite).

    With a uniform base (angles on circles and tori) a difference of one whole period is no
    error: ``-pi`` and ``pi`` are the same angle.
    """
    diff = np.abs(np.asarray(x_back, np.float64) - np.asarray(x, np.float64))
    if base.kind == "uniform" and base.low is not None and base.high is not None:
        period = base.high - base.low
        diff = np.abs(diff - period * np.round(diff / period))
    err = diff / scale
    return float(np.max(err)) if err.size and np.all(np.isfinite(err)) else float("inf")


class Parity(_Strict):
    """What export measured on held-out rows."""

    rows: int
    max_abs_log_prob_diff: float = Field(description="ONNX Runtime vs torch, nats")
    log_prob_tolerance: float
    roundtrip_max_abs_error: float = Field(
        description="max |x - decode(encode(x))| via ONNX, in units of each feature's scale"
    )
    roundtrip_tolerance: float
    torchscript_max_abs_log_prob_diff: float | None = None
    checked_rows: dict[str, int] = Field(
        default_factory=dict, description="rows checked per set: heldout, fresh, ood"
    )
    max_abs_log_prob_diff_by_set: dict[str, float] = Field(
        default_factory=dict, description="ONNX Runtime vs torch per set of rows, nats"
    )
    solver_error: float | None = Field(
        None, description="ODE families: max |log_prob| of the served solver vs a finer one, nats"
    )
    solver_tolerance: float | None = None


class Manifest(_Strict):
    """``manifest.json``: everything needed to serve, audit and reproduce one model version."""

    schema_version: int = Field(SCHEMA_VERSION, description="the major schema version")
    schema_minor: int = Field(
        0, ge=0, description="the minor schema version (absent: 0; see ADR 0003, needed_minor)"
    )
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    version: int = Field(ge=1)
    family: str
    hyperparameters: dict[str, Any]
    dim: int = Field(ge=1)
    input_shape: list[int] = Field(description="shape of one row before flattening")
    feature_names: list[str]
    dtype: Literal["float32"] = "float32"
    base: BaseSpec = BaseSpec()
    preprocessing: Preprocessing = Preprocessing()
    metrics: Metrics = Metrics()
    calibration: Calibration
    parity: Parity
    graphs: dict[str, str] = Field(
        default_factory=lambda: {"forward": FORWARD_GRAPH, "inverse": INVERSE_GRAPH}
    )
    torchscript: str | None = None
    chain_rule_order: list[int] | None = Field(
        None,
        description="feature indices in the order of an exact chain-rule factorization, served "
        "from graphs['chain_rule'] (x -> terms [batch, dim], summing to log_prob)",
    )
    opset: int
    files: dict[str, str] = Field(description="relative path -> sha256 of every other file")
    library_versions: dict[str, str] = {}
    graph_nodes: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="per graph: ONNX node counts as exported and as saved (after optimisation)",
    )
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    training_config: dict[str, Any] = {}

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        problem = _major_problem(self.schema_version)
        if problem:
            raise ValueError(problem)
        if len(self.feature_names) != self.dim:
            raise ValueError(f"{len(self.feature_names)} feature_names for dim {self.dim}")
        if int(np.prod(self.input_shape)) != self.dim:
            raise ValueError(f"input_shape {self.input_shape} does not flatten to dim {self.dim}")
        for role in ("forward", "inverse"):
            if role not in self.graphs:
                raise ValueError(f"graphs must name a '{role}' graph")
        order = self.chain_rule_order
        if order is not None and (
            sorted(order) != list(range(self.dim)) or "chain_rule" not in self.graphs
        ):
            raise ValueError(
                "chain_rule_order must be a permutation of the feature indices, with a "
                "'chain_rule' graph"
            )
        if self.calibration.cross_fit is not None and "score" not in self.graphs:
            raise ValueError("a cross-fitted calibration needs a 'score' graph")
        power = self.preprocessing.power_transform
        if power is not None and not (
            len(power.center) == len(power.spread) == len(power.lambdas) == self.dim
        ):
            raise ValueError(f"preprocessing.power_transform needs {self.dim} values per list")
        named = [*self.graphs.values(), *self.files, *([self.torchscript] * bool(self.torchscript))]
        for rel in named:
            problem = _path_problem(rel)
            if problem:
                raise ValueError(f"path {rel!r} {problem}")
        return self

    @model_serializer(mode="wrap")
    def _minor_zero_unwritten(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("schema_minor") == 0:
            # Minor 0 is written as it was before the field existed, so readers older than the
            # compatibility policy (exact schema_version, unknown fields refused) still read it.
            del data["schema_minor"]
        return data


def _major_problem(major: object) -> str | None:
    """Why a manifest of schema major ``major`` cannot be read here (None when it can)."""
    if not isinstance(major, int) or major == SCHEMA_VERSION:
        return None  # ours; a value that is no integer at all is the schema's to refuse
    if major > SCHEMA_VERSION:
        return (
            f"schema_version {major} is newer than this flowserve reads (schema "
            f"{SCHEMA_VERSION}.x): upgrade flowserve to serve it"
        )
    return (
        f"schema_version {major} is older than this flowserve reads (schema {SCHEMA_VERSION}.x): "
        "re-export the model with this flowserve, or serve it with a release that reads it"
    )


def _path_problem(rel: str) -> str | None:
    """Why ``rel`` cannot name a file inside an artifact directory (None when it can): paths in
    a manifest are relative, POSIX, and never climb out with ``..``."""
    if not rel or "\x00" in rel or "\\" in rel:
        return "is empty or holds a NUL or backslash"
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        return "is absolute; paths in a manifest are relative to its directory"
    if ".." in rel.split("/"):
        return "climbs out of the artifact directory with '..'"
    return None


def _inside(directory: Path, rel: str, what: str) -> Path:
    """``directory / rel`` once it is known to stay inside ``directory`` with every symlink
    followed; raises :class:`ArtifactError` otherwise."""
    problem = _path_problem(rel)
    if problem:
        raise ArtifactError(f"{directory}: {what} {rel!r} {problem}")
    path = directory / rel
    root = directory.resolve()
    if not path.resolve().is_relative_to(root):
        raise ArtifactError(
            f"{directory}: {what} {rel!r} resolves outside the artifact directory (a symlink "
            "out of it); every file of an artifact must live inside its directory"
        )
    return path


def _check_external_data(directory: Path, graph: str, path: Path, files: dict[str, str]) -> None:
    """Every ONNX external-data file a graph references must be inside the artifact and listed
    (so checksummed) in the manifest; anything else is refused before ONNX Runtime opens it."""
    from .onnx_refs import OnnxFormatError, external_data_locations

    try:
        locations = external_data_locations(path.read_bytes())
    except OSError as e:
        raise ArtifactError(f"{directory}: graph {graph} cannot be read: {e}") from e
    except OnnxFormatError:
        return  # not a protobuf at all: ONNX Runtime refuses it too, and reads nothing else
    base = str(Path(graph).parent)
    for location in locations:
        rel = location if base == "." else f"{base}/{location}"
        _inside(directory, rel, f"external data of {graph}")
        if rel not in files:
            raise ArtifactError(
                f"{directory}: graph {graph} keeps tensor data in {location!r}, which the "
                "manifest lists no checksum for; external data must be listed in 'files'"
            )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def needed_minor(manifest: Manifest) -> int:
    """The lowest schema minor that holds what ``manifest`` carries (at most ours): 2 for a
    power transform, 1 for a cross-fitted calibration, else 0, so every reader that can serve it
    reads it."""
    if manifest.preprocessing.power_transform is not None:
        return min(SCHEMA_MINOR, 2)
    return min(SCHEMA_MINOR, 1 if manifest.calibration.cross_fit is not None else 0)


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` at the lowest schema version of this writer's that holds it
    (:func:`needed_minor`, ADR 0003).

    What is written is validated strictly first: a field the schema does not know (a typo in the
    exporter) is an error here, never something a reader is left to ignore.
    """
    ours = manifest.model_copy(
        update={"schema_version": SCHEMA_VERSION, "schema_minor": needed_minor(manifest)}
    )
    text = ours.model_dump_json(indent=2)
    Manifest.model_validate_json(text)
    path = Path(directory) / MANIFEST_FILE
    path.write_text(text + "\n")
    return path


# Sets of ignored fields already warned about: a watched repository re-reads its manifests, and
# one warning per kind of newer manifest is enough.
_warned_ignored: set[tuple[str, ...]] = set()


def _without(data: Any, loc: tuple[int | str, ...]) -> None:
    """Delete the field at ``loc`` (a pydantic error location) from nested dicts and lists."""
    for key in loc[:-1]:
        data = data[key]
    del data[loc[-1]]


def _ignoring_unknown(data: dict[str, Any], error: ValidationError, path: Path) -> Manifest:
    """``data`` of a newer minor schema validated without the fields this reader does not know
    (logged once per set of such fields); raises ``error`` when there are none to drop."""
    unknown = [err["loc"] for err in error.errors() if err["type"] == "extra_forbidden"]
    if not unknown:
        raise error
    for loc in unknown:
        _without(data, loc)
    manifest = Manifest.model_validate(data)  # still strict about everything else
    ignored = tuple(".".join(map(str, loc)) for loc in unknown)
    if ignored not in _warned_ignored:
        _warned_ignored.add(ignored)
        log.warning(
            "%s: manifest schema %d.%d is newer than this reader's %d.%d; ignoring the fields it "
            "does not know: %s (upgrade flowserve to use them)",
            path,
            SCHEMA_VERSION,
            data.get("schema_minor"),
            SCHEMA_VERSION,
            SCHEMA_MINOR,
            ", ".join(ignored),
        )
    return manifest


def _validate_manifest(data: Any, path: Path) -> Manifest:
    """Validate manifest JSON under the compatibility policy (ADR 0003): this schema major only;
    at this reader's minor or older, strictly; at a newer minor, its unknown fields ignored."""
    newer_minor = False
    if isinstance(data, dict):
        # Checked before the fields, which a manifest of another major need not match at all:
        # the version is the reason to report.
        problem = _major_problem(data.get("schema_version", SCHEMA_VERSION))
        if problem:
            raise ArtifactError(f"{path}: {problem}")
        minor = data.get("schema_minor", 0)
        newer_minor = isinstance(minor, int) and minor > SCHEMA_MINOR
    try:
        try:
            return Manifest.model_validate(data)
        except ValidationError as e:
            if not newer_minor:
                raise
            return _ignoring_unknown(data, e, path)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise ArtifactError(f"{path}: invalid manifest at {where}: {first['msg']}") from e


def load_manifest(directory: Path) -> Manifest:
    """Read and validate ``manifest.json``; raises :class:`ArtifactError` with the reason.

    A manifest of a newer minor schema version loads with the fields this reader does not know
    ignored (and logged once); one of another major schema version is refused (ADR 0003).
    """
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{directory}: no {MANIFEST_FILE}")
    _inside(Path(directory), MANIFEST_FILE, "manifest")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from e
    return _validate_manifest(data, path)


def verify_artifact(directory: Path) -> Manifest:
    """Validate the manifest and the sha256 of every file it lists (and the graphs exist).

    Containment: every path the manifest names, and every ONNX external-data file a graph
    references, must resolve inside ``directory`` (symlinks followed), and external data must be
    listed in ``files`` so its checksum is verified too.
    """
    directory = Path(directory)
    manifest = load_manifest(directory)
    needed = set(manifest.graphs.values()) | ({manifest.torchscript} - {None})
    missing_from_list = needed - set(manifest.files)
    if missing_from_list:
        raise ArtifactError(
            f"{directory}: manifest lists no checksum for {sorted(missing_from_list)}"
        )
    for rel, expected in manifest.files.items():
        path = _inside(directory, rel, "file")
        if not path.is_file():
            raise ArtifactError(f"{directory}: file {rel} listed in the manifest is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"{directory}: checksum mismatch for {rel} (manifest {expected[:12]}…, "
                f"file {actual[:12]}…): the artifact is corrupted or was modified"
            )
    for graph in sorted(set(manifest.graphs.values())):
        if graph.endswith(".onnx"):
            _check_external_data(directory, graph, directory / graph, manifest.files)
    return manifest


def version_dirs(root: Path, name: str) -> dict[int, Path]:
    """The version directories ``<root>/<name>/<int>/`` that exist, by version number."""
    base = Path(root) / name
    if not base.is_dir():
        return {}
    return {int(p.name): p for p in base.iterdir() if p.is_dir() and p.name.isdigit()}


def next_version(root: Path, name: str) -> int:
    """The next free version number for ``name`` under ``root`` (1 for a new name)."""
    return max(version_dirs(root, name), default=0) + 1

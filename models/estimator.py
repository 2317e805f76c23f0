"""A scikit-learn and PyOD style density estimator and anomaly detector over any flow family.

``__init__`` only stores parameters; :meth:`FlowDensityEstimator.fit` runs the same pipeline as
``flowserve train`` (NaN policy, a validation split for early stopping and model selection,
standardization inside the flow, ``family="auto"`` racing candidate families inside
``time_budget``, then conformal calibration) and sets the fitted attributes, which end in ``_``.
``fit`` leaves torch's global state (random generators, deterministic flag, threads) as it
found it.

Anomaly conventions follow PyOD: :meth:`~FlowDensityEstimator.decision_function` is higher for
more anomalous rows (``-log p(x)``), :meth:`~FlowDensityEstimator.predict` returns 1 for
anomalies, at the false-positive rate ``fpr``, and ``threshold_`` is the decision-function
threshold. The threshold is conformal: calibration scores come from rows the model never
trained on (cross-fitted on small tables), so for exchangeable data a normal row is flagged
with probability at most ``fpr``.

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(300, 2))
    >>> est = FlowDensityEstimator("realnvp", layers=2, hidden=8, epochs=2)
    >>> est.fit(x).score_samples(x[:3]).shape
    (3,)
    >>> est.predict(x[:3]).tolist()
    [0, 0, 0]
"""

from __future__ import annotations

import inspect
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from flowserve.artifact import Calibration
from flowserve.models.base import Flow
from flowserve.models.budget import Budget, preserved_global_state
from flowserve.models.calibrate import batched_log_prob
from flowserve.models.config import AUTO_FAMILY, TrainConfig, resolve_config
from flowserve.models.data import PreparedData, prepare_data
from flowserve.models.preprocess import data_kind_of
from flowserve.models.training import (
    FitResult,
    TrainResult,
    check_family,
    export_trained,
    fit_model,
)

__all__ = ["FlowDensityEstimator", "NotFittedError"]


class NotFittedError(RuntimeError, AttributeError):
    """The estimator was used before :meth:`FlowDensityEstimator.fit` (an ``AttributeError``
    too, as scikit-learn's own ``NotFittedError`` is)."""


class FlowDensityEstimator:
    """Normalizing-flow density estimator and anomaly detector.

    Arguments:
        family: A flow family (``"maf"``, ``"nsf"``, ...) or ``"auto"`` (race candidates on
            validation NLL, see :mod:`flowserve.models.selection`).
        time_budget: Wall-clock seconds for fitting: model selection, training and calibration
            (``None``: by epochs).
        layers, hidden: Flow size (``None``: the family's default, or chosen by ``auto``).
        epochs, batch_size, lr, weight_decay, patience: Training options (``None``: the
            defaults of :class:`~flowserve.models.config.TrainConfig`; ``epochs`` caps a
            budgeted run).
        seed: Seed for splits, initialization and batches.
        val_fraction: Share of the rows for validation (``None``: sized for the table);
            ignored when ``fit`` is given ``validation_data``.
        calibration: ``"auto"``, ``"split"`` or ``"cross-fit"`` (see
            :mod:`flowserve.models.calibrate`).
        calibration_fraction: Share of the rows held out as the calibration split (used by
            ``"split"``, and scored with the cross-fitted rows otherwise; 0 with cross-fitting
            trains on every row).
        calibration_folds: Folds for cross-fitted calibration.
        fpr: The false-positive rate of :meth:`predict` and ``threshold_``.
        n_threads: Torch threads while fitting and scoring.
        nan_policy: ``"drop"`` rows with NaN/Inf (with a warning) or ``"error"``.
        power_transform: ``"auto"``: a Yeo-Johnson power transform of the clearly skewed
            columns before standardizing (part of the model); ``"none"``: standardize only.
        params: Family-specific flow options (e.g. ``{"bins": 8}``).
        progress: Show Lightning's progress bar (on stderr) while fitting.

    Fitted attributes: ``flow_`` (the trained :class:`Flow`, preprocessing included),
    ``family_`` (the family used), ``leaderboard_`` (the model-selection race; empty for an
    explicit family), ``calibration_`` (:class:`~flowserve.artifact.Calibration`),
    ``threshold_``, ``n_features_in_``, ``feature_names_in_``, ``history_`` (per-epoch NLLs),
    ``config_`` (the resolved :class:`TrainConfig`).
    """

    def __init__(
        self,
        family: str = AUTO_FAMILY,
        *,
        time_budget: float | None = None,
        layers: int | None = None,
        hidden: int | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
        patience: int | None = None,
        seed: int = 0,
        val_fraction: float | None = None,
        calibration: str = "auto",
        calibration_fraction: float = 0.1,
        calibration_folds: int = 5,
        fpr: float = 0.05,
        n_threads: int = 1,
        nan_policy: str = "drop",
        power_transform: str = "auto",
        params: dict[str, Any] | None = None,
        progress: bool = False,
    ) -> None:
        self.family = family
        self.time_budget = time_budget
        self.layers = layers
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.patience = patience
        self.seed = seed
        self.val_fraction = val_fraction
        self.calibration = calibration
        self.calibration_fraction = calibration_fraction
        self.calibration_folds = calibration_folds
        self.fpr = fpr
        self.n_threads = n_threads
        self.nan_policy = nan_policy
        self.power_transform = power_transform
        self.params = params
        self.progress = progress

    @classmethod
    def _get_param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return sorted(p for p in sig.parameters if p != "self")

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._get_param_names()}

    def set_params(self, **params: Any) -> FlowDensityEstimator:
        valid = self._get_param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"unknown parameter {key!r} for FlowDensityEstimator")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        defaults = {
            k: p.default for k, p in inspect.signature(type(self).__init__).parameters.items()
        }
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if defaults.get(k) != v]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self) -> Any:
        from sklearn.utils import Tags, TargetTags

        tags = Tags(estimator_type="outlier_detector", target_tags=TargetTags(required=False))
        tags.input_tags.allow_nan = False
        return tags

    def _config(self) -> TrainConfig:
        options: dict[str, Any] = {
            "family": self.family,
            "time_budget": self.time_budget,
            "layers": self.layers,
            "hidden": self.hidden,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "patience": self.patience,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.calibration_fraction,
            "calibration": self.calibration,
            "calibration_folds": self.calibration_folds,
            "threads": self.n_threads,
            "nan_policy": self.nan_policy,
            "power_transform": self.power_transform,
            "params": self.params,
        }
        config = resolve_config({}, options)
        check_family(config.family)
        if not 0.0 < self.fpr < 1.0:
            raise ValueError(f"fpr must be in (0, 1), got {self.fpr!r}")
        if config.calibration == "split" and self.calibration_fraction <= 0:
            raise ValueError("calibration='split' needs calibration_fraction > 0")
        return config

    def fit(
        self,
        X: np.ndarray | pd.DataFrame,
        y: Any = None,
        *,
        validation_data: np.ndarray | pd.DataFrame | None = None,
    ) -> FlowDensityEstimator:
        """Train on the rows of ``X``; return ``self``.

        A validation split is taken from ``X`` for early stopping and model selection, unless
        ``validation_data`` is given; ``calibration_fraction`` of ``X`` is held out for the
        calibration. ``y`` is ignored (unsupervised).
        """
        config = self._config()
        if np.ndim(X) != 2:
            raise ValueError(f"X must be 2-D [rows, features], got {np.ndim(X)}-D")
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        with preserved_global_state(threads=config.threads):
            budget = Budget(config.time_budget)
            prepared = prepare_data(
                X,
                nan_policy=config.nan_policy,  # type: ignore[arg-type]
                val_fraction=config.val_fraction,
                test_fraction=config.test_fraction,
                seed=config.seed,
                data_kind=data_kind_of(config.family),
                validation=validation_data,
                power_transform=config.power_transform,
            )
            torch.manual_seed(config.seed)
            with tempfile.TemporaryDirectory(prefix="flowserve-ckpt-") as ckpt:
                model = fit_model(
                    prepared, config, Path(ckpt), budget=budget, progress=self.progress
                )
            fit = model.fit
            calibration = model.calibration
            lp = calibration.log_probs
            if lp is None:  # the calibration split, scored by the fitted flow
                lp = batched_log_prob(fit.flow, prepared.test)
        self.flow_: Flow = fit.flow
        self.fit_: FitResult = fit
        self.prepared_: PreparedData = prepared
        self.config_: TrainConfig = model.config
        self.family_: str = model.config.family
        self.leaderboard_: list[dict[str, Any]] = model.leaderboard
        self.calibration_scores_ = calibration
        default_fpr = max(self.fpr, 1.0 / (len(lp) + 1))
        self.calibration_: Calibration = (
            calibration.cross_fitted(len(prepared.test), default_fpr)
            if calibration.fold_models
            else Calibration.from_log_probs(lp, default_fpr, method=calibration.method)
        )
        self.history_ = fit.history
        self.n_features_in_ = prepared.dim
        self.feature_names_in_ = np.asarray(prepared.feature_names, dtype=object)
        return self

    @property
    def threshold_(self) -> float:
        """The :meth:`decision_function` value above which :meth:`predict` flags a row (for a
        cross-fitted calibration, indicative: :meth:`predict` uses cross-conformal p-values,
        which also score each row under the fold models)."""
        return -self._calibration().threshold_for(self._fpr(None))

    def _check_fitted(self) -> Flow:
        if not hasattr(self, "flow_"):
            raise NotFittedError("this FlowDensityEstimator is not fitted yet; call fit(X) first")
        return self.flow_

    def _calibration(self) -> Calibration:
        self._check_fitted()
        return self.calibration_

    def _fpr(self, fpr: float | None) -> float:
        value = self.fpr if fpr is None else fpr
        if not 0.0 < value < 1.0:
            raise ValueError(f"fpr must be in (0, 1), got {value!r}")
        cal = self._calibration()
        if value < cal.min_fpr:
            raise ValueError(
                f"fpr {value:g} is below the smallest attainable false-positive rate "
                f"1/(n+1) = {cal.min_fpr:.4g} with {cal.n_rows} calibration rows"
            )
        return value

    def _rows(self, X: np.ndarray | pd.DataFrame) -> np.ndarray:
        rows = np.array(X, dtype=np.float32)  # a writable copy (pandas hands out read-only views)
        if rows.ndim != 2 or rows.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has shape {rows.shape}; the estimator was fitted on "
                f"{self.n_features_in_} features"
            )
        return rows

    def score_samples(self, X: np.ndarray | pd.DataFrame) -> np.ndarray:
        """Log-likelihood of each row of ``X`` (nats, raw feature space); non-finite rows get
        ``-inf`` (the least likely)."""
        flow = self._check_fitted()
        rows = self._rows(X)
        with preserved_global_state(threads=self.n_threads):
            lp = batched_log_prob(flow, rows)
        bad = ~np.isfinite(rows).all(axis=1) | np.isnan(lp)
        return np.where(bad, -np.inf, lp)

    def decision_function(self, X: np.ndarray | pd.DataFrame) -> np.ndarray:
        """Anomaly score of each row, higher is more anomalous (PyOD): ``-log p(x)``."""
        return -self.score_samples(X)

    def p_values(self, X: np.ndarray | pd.DataFrame) -> np.ndarray:
        """Conformal p-value of each row: ``(1 + #{calibration scores >= score}) / (n + 1)``
        (cross-conformal for a cross-fitted calibration: see
        :class:`~flowserve.artifact.CrossFitScores`)."""
        cal = self._calibration()
        if cal.cross_fit is None:
            return cal.p_values(self.score_samples(X))
        rows = self._rows(X)
        with preserved_global_state(threads=self.n_threads):
            folds = self.calibration_scores_.fold_log_prob(rows)
        assert folds is not None
        bad = ~np.isfinite(rows).all(axis=1)
        folds[bad] = np.nan
        return cal.p_values(self.score_samples(X), folds)

    def predict(self, X: np.ndarray | pd.DataFrame, fpr: float | None = None) -> np.ndarray:
        """1 for anomalies, 0 for normal rows, at the false-positive rate ``fpr`` (default: the
        estimator's ``fpr``): a row is flagged when its conformal p-value is at most ``fpr``."""
        alpha = self._fpr(fpr)
        return (self.p_values(X) <= alpha).astype(np.int64)

    def score(self, X: np.ndarray | pd.DataFrame, y: Any = None) -> float:
        """Mean log-likelihood of the rows of ``X`` (higher is better)."""
        return float(np.mean(self.score_samples(X)))

    def sample(self, n: int = 1, seed: int | None = None, temperature: float = 1.0) -> np.ndarray:
        """``n`` new rows drawn from the model (raw feature space)."""
        flow = self._check_fitted().eval()
        with preserved_global_state(threads=self.n_threads):
            return flow.sample(n, temperature=temperature, seed=seed).numpy()

    def export(
        self,
        out_root: Path | str,
        name: str,
        version: int | None = None,
        *,
        torchscript: bool = True,
    ) -> TrainResult:
        """Write the report and the artifact (with the same calibration) to
        ``out_root/name/<version>/``."""
        self._check_fitted()
        return export_trained(
            self.fit_,
            self.prepared_,
            self.config_,
            Path(out_root),
            name,
            version,
            torchscript=torchscript,
            calibration=self.calibration_scores_,
            leaderboard=self.leaderboard_,
        )

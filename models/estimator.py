"""A scikit-learn-style density estimator over any flow family.

``__init__`` only stores parameters; :meth:`FlowDensityEstimator.fit` trains (same pipeline as
``flowserve train``: NaN policy, splits, standardization inside the flow, early stopping on a
validation split, best weights restored) and sets the fitted attributes, which end in ``_``.

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(300, 2))
    >>> est = FlowDensityEstimator("realnvp", layers=2, hidden=8, epochs=2, progress=False)
    >>> est.fit(x).score_samples(x[:3]).shape
    (3,)
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from flowserve.models.base import Flow
from flowserve.models.config import TrainConfig, resolve_config
from flowserve.models.data import PreparedData, prepare_data
from flowserve.models.training import (
    FitResult,
    TrainResult,
    build_model,
    export_trained,
    fit_flow,
)

__all__ = ["FlowDensityEstimator", "NotFittedError"]


class NotFittedError(RuntimeError):
    """The estimator was used before :meth:`FlowDensityEstimator.fit`."""


class FlowDensityEstimator:
    """Normalizing-flow density estimator with the scikit-learn estimator conventions.

    Arguments:
        family: The flow family (``"realnvp"``, ``"nsf"``, ...).
        layers, hidden: Flow size (``None``: the family's default).
        epochs, batch_size, lr, patience, seed, val_fraction: Training options (``None``: the
            defaults of :class:`~flowserve.models.config.TrainConfig` for the family).
        nan_policy: ``"drop"`` rows with NaN/Inf (with a warning) or ``"error"``.
        params: Family-specific flow options (e.g. ``{"bins": 8}``).
        progress: Show Lightning's progress bar while fitting.

    Fitted attributes: ``flow_`` (the trained :class:`Flow`, preprocessing included),
    ``n_features_in_``, ``feature_names_in_``, ``history_`` (per-epoch NLLs), ``config_`` (the
    resolved :class:`TrainConfig`).
    """

    def __init__(
        self,
        family: str = "realnvp",
        *,
        layers: int | None = None,
        hidden: int | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        patience: int | None = None,
        seed: int = 0,
        val_fraction: float | None = None,
        nan_policy: str = "drop",
        params: dict[str, Any] | None = None,
        progress: bool = False,
    ) -> None:
        self.family = family
        self.layers = layers
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.patience = patience
        self.seed = seed
        self.val_fraction = val_fraction
        self.nan_policy = nan_policy
        self.params = params
        self.progress = progress

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        names = ("layers", "hidden", "epochs", "batch_size", "lr", "patience", "seed")
        extra = ("val_fraction", "nan_policy", "params", "progress")
        return {"family": self.family, **{k: getattr(self, k) for k in names + extra}}

    def set_params(self, **params: Any) -> FlowDensityEstimator:
        for key, value in params.items():
            if key not in self.get_params():
                raise ValueError(f"unknown parameter {key!r} for FlowDensityEstimator")
            setattr(self, key, value)
        return self

    def _config(self) -> TrainConfig:
        options = self.get_params()
        options.pop("progress")
        return resolve_config({}, options)

    def fit(self, X: np.ndarray | pd.DataFrame, y: Any = None) -> FlowDensityEstimator:
        """Train on the rows of ``X`` (a validation split is held out for early stopping)."""
        config = self._config()
        # The estimator has no test split of its own: the caller scores held-out data.
        prepared = prepare_data(
            X,
            nan_policy=config.nan_policy,  # type: ignore[arg-type]
            val_fraction=config.val_fraction,
            test_fraction=config.test_fraction,
            seed=config.seed,
        )
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        torch.manual_seed(config.seed)
        flow = build_model(config, prepared)
        with tempfile.TemporaryDirectory(prefix="flowserve-ckpt-") as ckpt:
            fit = fit_flow(flow, prepared, config, Path(ckpt), progress=self.progress)
        self.flow_: Flow = fit.flow
        self.fit_: FitResult = fit
        self.prepared_: PreparedData = prepared
        self.config_: TrainConfig = config
        self.history_ = fit.history
        self.n_features_in_ = prepared.dim
        self.feature_names_in_ = np.asarray(prepared.feature_names, dtype=object)
        return self

    def _check_fitted(self) -> Flow:
        if not hasattr(self, "flow_"):
            raise NotFittedError("this FlowDensityEstimator is not fitted yet; call fit(X) first")
        return self.flow_

    def _rows(self, X: np.ndarray | pd.DataFrame) -> np.ndarray:
        rows = np.array(X, dtype=np.float32)  # a writable copy (pandas hands out read-only views)
        if rows.ndim != 2 or rows.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has shape {rows.shape}; the estimator was fitted on "
                f"{self.n_features_in_} features"
            )
        return rows

    @torch.no_grad()
    def score_samples(self, X: np.ndarray | pd.DataFrame) -> np.ndarray:
        """Log-likelihood of each row of ``X`` (nats, raw feature space)."""
        flow = self._check_fitted().eval()
        rows = self._rows(X)
        out = [
            flow.log_prob(torch.from_numpy(rows[i : i + 4096])).double().numpy()
            for i in range(0, len(rows), 4096)
        ]
        return np.concatenate(out) if out else np.zeros(0)

    def score(self, X: np.ndarray | pd.DataFrame, y: Any = None) -> float:
        """Mean log-likelihood of the rows of ``X`` (higher is better)."""
        return float(np.mean(self.score_samples(X)))

    def sample(self, n: int = 1, seed: int | None = None, temperature: float = 1.0) -> np.ndarray:
        """``n`` new rows drawn from the model (raw feature space)."""
        flow = self._check_fitted().eval()
        return flow.sample(n, temperature=temperature, seed=seed).numpy()

    def export(
        self,
        out_root: Path | str,
        name: str,
        version: int | None = None,
        *,
        torchscript: bool = True,
    ) -> TrainResult:
        """Write the report and the artifact to ``out_root/name/<version>/``."""
        self._check_fitted()
        return export_trained(
            self.fit_,
            self.prepared_,
            self.config_,
            Path(out_root),
            name,
            version,
            torchscript=torchscript,
        )

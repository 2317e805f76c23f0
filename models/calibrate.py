"""Calibration scores for conformal anomaly decisions: rows the scoring model never trained on.

Two methods (``--calibration``):

- ``split``: the test split, scored by the served model. Those rows took no part in training,
  early stopping or model selection, so for exchangeable data a flag at rate ``alpha`` fires on
  at most ``alpha`` of normal rows, in finite samples. Chosen by ``auto`` when the test split
  has at least :data:`SPLIT_MIN_ROWS` rows.
- ``cross-fit`` (small tables): ``K`` fold models, each trained on the training rows minus one
  fold with the served model's recipe (same family and size, batch size and per-epoch learning
  rates up to its best epoch), score the fold they left out; the test split adds its scores
  under the served model. Every training row then serves as a calibration row, so the
  attainable false-positive rate ``1/(n+1)`` is small even for a few hundred rows. The p-values
  are cross-conformal (Vovk 2015): a new row is scored by every fold model too and compared, in
  each group, with the rows scored by the same model, so the fold models' being trained on
  fewer rows than the served one does not make flags conservative. The artifact ships the fold
  models in its ``score`` graph. The guarantee is cross-conformal prediction's: the flag rate
  on normal rows is close to ``alpha`` in practice, with a worst case of about ``2 alpha``
  (Barber et al. 2021); exact (``<= alpha``) only for ``split``.

The fold models' cost is predicted by timing one epoch of their loop (and planned at
:data:`FOLD_COST_MARGIN` times that); under a time budget,
``K`` shrinks to fit what is left (down to 2), and below that the method falls back to
``split`` with a warning that states the attainable false-positive rate.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from flowserve.artifact import Calibration
from flowserve.models.base import Flow
from flowserve.models.config import TrainConfig
from flowserve.models.data import PreparedData

__all__ = [
    "FOLD_COST_MARGIN",
    "SPLIT_MIN_ROWS",
    "CalibrationScores",
    "batched_log_prob",
    "calibration_scores",
    "choose_method",
]

log = logging.getLogger(__name__)

# ``auto`` uses the test split alone when it has at least this many rows.
SPLIT_MIN_ROWS = 500


@dataclass(frozen=True)
class CalibrationScores:
    """Held-out log-likelihoods for the calibration (``None``: export scores the test split
    with ONNX Runtime itself) and the method that produced them.

    Cross-fitting also keeps its fold models and the rows each left out: the p-values are
    cross-conformal (:class:`flowserve.artifact.CrossFitScores`), so the artifact's ``score``
    graph and the estimator score new rows with them. ``log_probs`` then pools the out-of-fold
    scores with the test split's under the served model.
    """

    log_probs: np.ndarray | None
    method: str
    folds: int | None = None
    fold_models: tuple[Flow, ...] = ()
    fold_rows: tuple[np.ndarray, ...] = ()
    fold_log_probs: tuple[np.ndarray, ...] = ()  # fold k's model on fold k's rows

    def cross_fitted(self, test_rows: int, default_fpr: float) -> Calibration:
        """The cross-conformal calibration of these scores (torch's; export re-scores them
        with the graphs it writes). ``log_probs`` ends with the ``test_rows`` test split."""
        assert self.log_probs is not None and self.fold_models
        served = self.log_probs[len(self.log_probs) - test_rows :]
        return Calibration.cross_fitted(served, list(self.fold_log_probs), default_fpr)

    def fold_log_prob(self, rows: np.ndarray) -> np.ndarray | None:
        """Each fold model's ``log p`` of raw ``rows``, ``[N, folds]`` (None: not cross-fit)."""
        if not self.fold_models:
            return None
        return np.stack([batched_log_prob(m, rows) for m in self.fold_models], axis=1)


# Fold models are planned at this multiple of their probed cost: the probe times the faster of
# two epochs, and a budget overrun costs more than one fold fewer.
FOLD_COST_MARGIN = 1.3


def choose_method(config: TrainConfig, prepared: PreparedData) -> str:
    """``config.calibration``, with ``auto`` resolved by the size of the test split."""
    if config.calibration != "auto":
        return config.calibration
    return "split" if len(prepared.test) >= SPLIT_MIN_ROWS else "cross-fit"


@torch.no_grad()
def batched_log_prob(flow: Flow, rows: np.ndarray, batch: int = 4096) -> np.ndarray:
    """``log p(x)`` (float64) of raw ``rows`` under ``flow`` in eval mode, ``batch`` at a time."""
    flow.eval()
    out = [
        flow.log_prob(torch.from_numpy(np.ascontiguousarray(rows[i : i + batch], dtype=np.float32)))
        .double()
        .numpy()
        for i in range(0, len(rows), batch)
    ]
    return np.concatenate(out) if out else np.zeros(0)


def _fold_model(
    flow: Flow, rows: np.ndarray, config: TrainConfig, lrs: list[float], seed: int, batch: int
) -> Flow:
    """Train the freshly built ``flow`` on ``rows``, one epoch per learning rate in ``lrs``
    (Adam, the served model's ``batch`` size, weight decay and gradient clipping)."""
    from flowserve.models.training import data_dependent_init

    torch.manual_seed(seed)
    data_dependent_init(flow, rows)
    flow.train()
    opt = torch.optim.Adam(flow.parameters(), lr=lrs[0], weight_decay=config.weight_decay)
    x = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    gen = torch.Generator().manual_seed(seed)
    for lr in lrs:
        for group in opt.param_groups:
            group["lr"] = lr
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            if len(idx) < 2:
                continue
            loss = -flow.log_prob(x[idx]).mean()
            if not torch.isfinite(loss):
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(flow.parameters(), config.grad_clip)
            opt.step()
    return flow.eval()


def _probe_epoch_seconds(flow: Flow, rows: np.ndarray, config: TrainConfig, batch: int) -> float:
    """Seconds one epoch of :func:`_fold_model` takes on ``rows`` (the second of two, so that
    one-off costs do not count)."""
    started = time.perf_counter()
    _fold_model(flow, rows, config, [config.lr], seed=0, batch=batch)
    first = time.perf_counter() - started
    started = time.perf_counter()
    _fold_model(flow, rows, config, [config.lr], seed=0, batch=batch)
    return min(first, time.perf_counter() - started)


def calibration_scores(
    flow: Flow,
    prepared: PreparedData,
    config: TrainConfig,
    *,
    history: list[dict[str, float]],
    best_epoch: int | None,
    seconds_left: float | None,
    build: Callable[[], Flow],
) -> CalibrationScores:
    """The calibration log-likelihoods for ``flow`` by :func:`choose_method`.

    ``build()`` returns a freshly initialized model of the served family and size (fold models
    start from it); ``history`` and ``best_epoch`` give the learning rate per epoch to replay;
    ``seconds_left`` (``None``: no limit) bounds the fold models' time.
    """
    method = choose_method(config, prepared)
    if method == "split":
        return CalibrationScores(None, "split")
    epochs = (best_epoch or 0) + 1
    lrs = [float(row.get("lr", config.lr)) for row in history[:epochs]] or [config.lr]
    folds = config.calibration_folds
    n = len(prepared.train)
    if n < 2 * folds:
        folds = max(2, n // 10)
    # K fold models each train on (K-1)/K of the rows for the same epochs, so K folds cost
    # (K-1) epochs of all rows per replayed epoch: time one epoch of the fold loop on a
    # throwaway model, then take the most folds (<= calibration_folds) that fit the time left.
    # The served model's batch size, not one sized for a fold's fewer rows: the same recipe,
    # and the same steps per row as the probe times (a fold sized its own batch at half the
    # served one on 1,437 images, and its epochs cost 1.37x what the probe predicted).
    batch = config.batch_size_for(n)
    epoch_seconds = _probe_epoch_seconds(build(), prepared.train, config, batch)
    if seconds_left is not None and math.isfinite(seconds_left):
        left = seconds_left - 2 * epoch_seconds
        # The probe is the faster of two epochs on a quiet start; leave room for the rest.
        cost = FOLD_COST_MARGIN * len(lrs) * epoch_seconds
        while folds >= 2 and (folds - 1) * cost > left:
            folds -= 1
    if folds < 2 or n < 20:
        warnings.warn(
            "not enough time left in the budget for cross-fitted calibration; calibrating on "
            f"the {len(prepared.test)} test rows (lowest attainable false-positive rate "
            f"{1 / (len(prepared.test) + 1):.3g}); a larger --time-budget helps",
            stacklevel=2,
        )
        return CalibrationScores(None, "split")
    order = np.random.default_rng(config.seed + 7).permutation(n)
    oof = np.empty(n, dtype=np.float64)
    models, held_rows, held_lps = [], [], []
    for k, held in enumerate(np.array_split(order, folds)):
        keep = np.setdiff1d(order, held)
        model = _fold_model(
            build(), prepared.train[keep], config, lrs, config.seed + 100 + k, batch=batch
        )
        oof[held] = batched_log_prob(model, prepared.train[held])
        models.append(model)
        held_rows.append(prepared.train[held])
        held_lps.append(oof[held])
    test = batched_log_prob(flow, prepared.test)
    scores = np.concatenate([oof, test])
    log.info("cross-fitted calibration: %d folds, %d scores", folds, scores.size)
    return CalibrationScores(
        scores, "cross-fit", folds, tuple(models), tuple(held_rows), tuple(held_lps)
    )

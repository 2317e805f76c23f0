"""Wall-clock budgets, the learning-rate schedule that follows them, and global-state hygiene.

A training run under ``--time-budget`` splits its seconds between model selection, the final fit
and calibration (:mod:`flowserve.models.selection`, :mod:`flowserve.models.calibrate`). Each fit
gets a :class:`Slice` of the budget; :class:`ScheduleCallback` sets the learning rate from the
share of that slice already used (so the schedule's length is the time, not an epoch count) and
ends the fit at an epoch boundary when the next epoch would not fit. Without a budget the same
callback runs the cosine schedule on the share of epochs done.

Example:
    >>> s = Slice(seconds=None, epochs=10)
    >>> s.progress(epoch=5, batch=0, batches=4)
    0.5
    >>> round(cosine_lr(1e-3, 0.5), 6)
    0.000526
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch

__all__ = [
    "ANNEALED",
    "MIN_LR_FACTOR",
    "STALL_SHARE",
    "Budget",
    "ScheduleCallback",
    "Slice",
    "cosine_lr",
    "preserved_global_state",
]

# The cosine schedule ends at this share of the initial learning rate.
MIN_LR_FACTOR = 0.02
# Share of the schedule spent warming up linearly (Adam's first steps on a fresh model).
WARMUP = 0.02
# Under a time limit, early stopping also waits until the best epoch is this share of it old.
STALL_SHARE = 0.25
# ... and until the schedule is this far through: at a high learning rate a stall says little
# (a fit that continues from good weights, as the race's winner does, starts with its best
# epoch during warm-up and beats it only as the rate comes down).
ANNEALED = 0.8


def cosine_lr(lr: float, progress: float) -> float:
    """The learning rate at ``progress`` in [0, 1]: linear warm-up, then cosine to
    ``MIN_LR_FACTOR * lr``."""
    p = min(max(progress, 0.0), 1.0)
    if p < WARMUP:
        return lr * max(p / WARMUP, 0.05)
    low = lr * MIN_LR_FACTOR
    return low + (lr - low) * 0.5 * (1.0 + math.cos(math.pi * (p - WARMUP) / (1.0 - WARMUP)))


@dataclass
class Budget:
    """A wall-clock budget in seconds, started at construction (``None``: unlimited)."""

    seconds: float | None
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self) -> float:
        if self.seconds is None:
            return math.inf
        return max(self.seconds - self.elapsed(), 0.0)


@dataclass
class Slice:
    """What one fit may use: ``seconds`` of wall clock (``None``: no time limit) and at most
    ``epochs`` epochs. Progress is the larger of the time and the epoch share used."""

    seconds: float | None
    epochs: int
    started: float = field(default_factory=time.perf_counter)

    def restart(self) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def progress(self, epoch: int, batch: int, batches: int) -> float:
        by_epochs = (epoch + batch / max(batches, 1)) / self.epochs
        if self.seconds is None:
            return by_epochs
        return max(by_epochs, self.elapsed() / self.seconds)


class ScheduleCallback(L.Callback):
    """Learning rate from the slice's progress (cosine), early stopping, and a stop at the epoch
    boundary when another epoch would overrun the slice's time.

    Early stopping ends a fit after ``patience`` epochs without a better validation NLL; under
    a time limit also only once the best is at least :data:`STALL_SHARE` of the slice old and
    the schedule is :data:`ANNEALED` (cheap epochs on a small table are noisy, and the best
    epoch often comes late in the cosine's tail), and at once on a non-finite validation NLL.
    ``scheduler="none"`` keeps the learning rate constant; ``"plateau"`` leaves it to
    Lightning's scheduler.
    """

    def __init__(
        self, slice_: Slice, lr: float, scheduler: str = "cosine", patience: int | None = None
    ) -> None:
        self.slice = slice_
        self.lr = lr
        self.scheduler = scheduler
        self.patience = patience
        self._epoch_started = 0.0
        self._epoch_seconds: list[float] = []
        self._best = math.inf
        self._best_epoch = 0
        self._best_at = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.slice.restart()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_started = time.perf_counter()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.scheduler != "cosine":
            return
        batches = int(trainer.num_training_batches) if trainer.num_training_batches else 1
        lr = cosine_lr(self.lr, self.slice.progress(trainer.current_epoch, batch_idx, batches))
        for group in trainer.optimizers[0].param_groups:
            group["lr"] = lr

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.patience is None:
            return
        value = float(trainer.callback_metrics.get("val_nll", math.nan))
        epoch = int(trainer.current_epoch)
        if not math.isfinite(value):
            stop = True
        elif value < self._best:
            self._best, self._best_epoch, self._best_at = value, epoch, self.slice.elapsed()
            stop = False
        else:
            stale = epoch - self._best_epoch >= self.patience
            if self.slice.seconds is not None:
                stale = (
                    stale
                    and self.slice.progress(epoch + 1, 0, 1) >= ANNEALED
                    and self.slice.elapsed() - self._best_at >= STALL_SHARE * self.slice.seconds
                )
            stop = stale
        self._stop(trainer, stop)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_seconds.append(time.perf_counter() - self._epoch_started)
        if self.slice.seconds is None:
            return
        # The median epoch so far predicts the next one; stop if it would end past the slice.
        typical = float(np.median(self._epoch_seconds[-20:]))
        self._stop(trainer, self.slice.elapsed() + typical > self.slice.seconds)

    @staticmethod
    def _stop(trainer: L.Trainer, stop: bool) -> None:
        # Every data-parallel rank must take the same decision (any rank's stop counts).
        if trainer.strategy.reduce_boolean_decision(stop, all=False):
            trainer.should_stop = True


@contextlib.contextmanager
def preserved_global_state(threads: int | None = None) -> Iterator[None]:
    """Run a block with ``threads`` torch threads, then restore what it changed globally: the
    random generators (Python, NumPy, torch), torch's deterministic-algorithms setting and thread
    count, and the environment variables Lightning's seeding sets."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    n_threads = torch.get_num_threads()
    env = {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    cudnn_deterministic = torch.backends.cudnn.deterministic
    cudnn_benchmark = torch.backends.cudnn.benchmark
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_num_threads(n_threads)
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.backends.cudnn.benchmark = cudnn_benchmark
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

"""Training a flow with PyTorch Lightning, from data to an exported artifact.

:func:`train` is the whole pipeline behind ``flowserve train``: load and validate the data, fit
the standardization on the training split (it becomes part of the flow), fit the flow by maximum
likelihood, restore the best checkpoint (lowest validation NLL), write the report and export the
artifact to ``<out>/<name>/<version>/``.

The loop is a plain :class:`lightning.Trainer`: progress bar, early stopping on validation NLL,
best and last checkpoints (``--resume`` takes either), gradient clipping, a cosine or plateau LR
schedule and seeded, deterministic runs. ``accelerator``, ``devices``, ``strategy`` and
``num_nodes`` pass straight through, so DDP across GPUs and nodes needs no code here; only global
rank zero writes the report and the artifact.

Example:
    >>> import numpy as np, tempfile
    >>> x = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    >>> result = train(x, family="realnvp", name="demo", out=tempfile.mkdtemp(), epochs=2,
    ...                layers=2, hidden=8, progress=False, torchscript=False)
    >>> result.manifest.dim
    2
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from flowserve.artifact import Manifest, Metrics, next_version
from flowserve.models.base import FAMILIES, Flow, build_flow, families
from flowserve.models.budget import Budget, ScheduleCallback, Slice, preserved_global_state
from flowserve.models.calibrate import (
    CalibrationScores,
    batched_log_prob,
    calibration_scores,
    choose_method,
)
from flowserve.models.config import (
    AUTO_FAMILY,
    ConfigError,
    TrainConfig,
    flow_hparams,
    load_config_file,
    resolve_config,
)
from flowserve.models.data import PreparedData, prepare_data
from flowserve.models.export import export_artifact
from flowserve.models.preprocess import (
    data_kind_of,
    dequantized_nll,
    image_hparams,
    manifest_preprocessing,
    preprocess_for,
    served_flow,
)
from flowserve.models.report import IMAGE_SAMPLES, write_report

__all__ = [
    "FitResult",
    "FittedModel",
    "FlowDataModule",
    "FlowModule",
    "TrainResult",
    "TrainingError",
    "build_model",
    "check_family",
    "data_dependent_init",
    "evaluate_nll",
    "export_trained",
    "fit_flow",
    "fit_model",
    "train",
]

log = logging.getLogger(__name__)

# Rows of the training split pushed through the flow once before training: data-dependent
# initializations (Glow's actnorm) see a real batch, the same one on every DDP rank.
INIT_ROWS = 1024


class TrainingError(RuntimeError):
    """Training ran but produced no usable model (e.g. the loss diverged)."""


class FlowModule(L.LightningModule):
    """Maximum-likelihood training of a :class:`Flow`; logs ``train_nll`` and ``val_nll``.

    The per-epoch NLLs are exact row-weighted means over every rank; ``history`` (one dict per
    epoch) travels inside checkpoints, so a resumed run continues its loss curve.
    """

    def __init__(self, flow: Flow, config: TrainConfig) -> None:
        super().__init__()
        self.flow = flow
        self.config = config
        self.history: list[dict[str, float]] = []
        self._sums: dict[str, list[Tensor]] = {"train": [], "val": []}

    def _nll(self, batch: list[Tensor], split: str) -> Tensor:
        (x,) = batch
        nll = -self.flow.log_prob(x)
        self._sums[split].append(torch.stack([nll.detach().sum(), nll.new_tensor(x.shape[0])]))
        return nll.mean()

    def on_train_epoch_start(self) -> None:
        self._sums["train"] = []

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        return self._nll(batch, "train")

    def on_validation_epoch_start(self) -> None:
        self._sums["val"] = []

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        self._nll(batch, "val")

    def _epoch_mean(self, split: str) -> float:
        parts = self._sums[split]
        total = torch.stack(parts).sum(0) if parts else torch.zeros(2, device=self.device)
        total = self.trainer.strategy.reduce(total, reduce_op="sum")
        return float(total[0] / total[1]) if total[1] > 0 else math.nan

    def on_validation_epoch_end(self) -> None:
        # Runs at the end of each training epoch, before checkpoints are written, so the
        # checkpoint of epoch k holds the history up to and including epoch k.
        val = self._epoch_mean("val")
        train = self._epoch_mean("train")
        if not math.isfinite(val):
            # Early stopping ends the run on this epoch; the best finite epoch is restored.
            rank_zero_warn(
                f"validation NLL is {val} at epoch {self.current_epoch}: training diverged; "
                "stopping and restoring the best epoch (a lower --lr may help)"
            )
        if not self.trainer.sanity_checking:
            self.history.append(
                {
                    "epoch": int(self.current_epoch),
                    "train_nll": train,
                    "val_nll": val,
                    "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
                }
            )
        # Already exact over all ranks; sync_dist only averages identical values (and keeps
        # Lightning from warning about unsynced epoch metrics).
        self.log("val_nll", val, prog_bar=True, sync_dist=True)
        self.log("train_nll", train, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> Any:
        cfg = self.config
        opt = torch.optim.Adam(self.flow.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        # "cosine" is set per step by ScheduleCallback, on the share of the budget (or of the
        # epochs) used; "none" keeps the learning rate.
        if cfg.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, factor=0.5, patience=max(1, cfg.patience // 3)
            )
            return {
                "optimizer": opt,
                "lr_scheduler": {"scheduler": sched, "monitor": "val_nll", "interval": "epoch"},
            }
        return opt

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("history", []))


class BestWeights(L.Callback):
    """Keeps, in memory, the weights of the epoch with the lowest finite validation NLL."""

    def __init__(self) -> None:
        self.value = math.inf
        self.epoch: int | None = None
        self.state: dict[str, Tensor] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = float(trainer.callback_metrics.get("val_nll", math.nan))
        if math.isfinite(value) and value < self.value:
            self.value = value
            self.epoch = int(trainer.current_epoch)
            self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


class FlowDataModule(L.LightningDataModule):
    """Train and validation rows as shuffled (seeded) mini-batches."""

    def __init__(self, train: np.ndarray, val: np.ndarray, batch_size: int, seed: int) -> None:
        super().__init__()
        self.train_x = torch.from_numpy(np.ascontiguousarray(train, dtype=np.float32))
        self.val_x = torch.from_numpy(np.ascontiguousarray(val, dtype=np.float32))
        self.batch_size = batch_size
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        # Keep the last partial batch unless it would be a single row (noisy step).
        drop_last = len(self.train_x) % self.batch_size == 1
        return DataLoader(
            TensorDataset(self.train_x),
            batch_size=self.batch_size,
            shuffle=True,
            generator=gen,
            drop_last=drop_last,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.val_x), batch_size=max(self.batch_size, 1024))


@dataclass
class FitResult:
    """What a fit produced; ``flow`` holds the best checkpoint's weights."""

    flow: Flow
    history: list[dict[str, float]]
    best_epoch: int | None
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    is_global_zero: bool
    seconds: float


@dataclass
class TrainResult:
    """The artifact a :func:`train` call wrote, and how well the model fits."""

    artifact_dir: Path
    manifest: Manifest
    metrics: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)  # one dict per epoch


def build_model(config: TrainConfig, prepared: PreparedData) -> Flow:
    """Build ``config.family`` with its hyper-parameters and the preprocessing of its kind of
    data (:mod:`flowserve.models.preprocess`: the fitted standardization for real columns)."""
    if config.family not in FAMILIES:
        check_family(config.family)
        raise ConfigError("family 'auto' is chosen by fit_model, not built directly")
    hparams = flow_hparams(config, FAMILIES[config.family])
    kind = data_kind_of(config.family)
    if prepared.data_kind != kind:
        raise ConfigError(
            f"family {config.family!r} models {kind} data, but the data were prepared as "
            f"{prepared.data_kind} (prepare_data(..., data_kind={kind!r}))"
        )
    if kind == "image":
        try:
            hparams = image_hparams(hparams, prepared.dim, prepared.num_values)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    if "shape" in hparams:
        # Image families take an event shape (``--param shape=[1,8,8]``); rows are flat pixels.
        shape = hparams["shape"]
        if not isinstance(shape, list) or math.prod(int(s) for s in shape) != prepared.dim:
            raise ConfigError(f"shape {shape} does not hold the {prepared.dim} features per row")
    else:
        hparams["dim"] = prepared.dim
    try:
        flow = build_flow(config.family, **hparams)
    except TypeError as e:
        raise ConfigError(f"family {config.family!r} does not accept these options: {e}") from e
    except ValueError as e:  # e.g. a coupling family on 1-D data
        raise ConfigError(f"cannot build {config.family!r} for {prepared.dim} features: {e}") from e
    pre = preprocess_for(
        kind,
        prepared.mean,
        prepared.scale,
        power=prepared.power,
        dequantization=config.dequantization,
        shape=hparams.get("shape"),
        num_values=hparams.get("num_values"),
    )
    return flow.set_preprocess(pre)


def data_dependent_init(flow: Flow, train: np.ndarray) -> None:
    """One forward pass on a real training batch, in training mode with gradients enabled (as
    Glow's actnorm requires), before Lightning wraps the model: every DDP replica starts from the
    same statistics, and a resumed checkpoint overwrites them anyway."""
    flow.train()
    rows = torch.from_numpy(np.ascontiguousarray(train[:INIT_ROWS], dtype=np.float32))
    with torch.enable_grad():
        flow.log_prob(rows)
    flow.zero_grad(set_to_none=True)


@torch.no_grad()
def evaluate_nll(flow: Flow, rows: np.ndarray, batch: int = 4096) -> float:
    """Mean negative log-likelihood (nats per row) of raw ``rows`` under ``flow``."""
    return float(-batched_log_prob(flow.cpu(), rows, batch).sum()) / max(len(rows), 1)


def _devices(value: str | int) -> str | int:
    return int(value) if isinstance(value, str) and value.isdigit() else value


def fit_flow(
    flow: Flow,
    prepared: PreparedData,
    config: TrainConfig,
    checkpoint_dir: Path,
    *,
    resume: Path | None = None,
    progress: bool = True,
    seconds: float | None = None,
    init: bool = True,
) -> FitResult:
    """Fit ``flow`` on ``prepared`` with Lightning and load the best checkpoint's weights.

    ``seconds`` limits this fit's wall clock (the learning-rate schedule runs on the share of it
    used, and the fit ends at the last epoch that fits); ``config.max_epochs`` caps the epochs
    either way. ``init=False`` continues from the flow's current weights without the
    data-dependent initialization (a further round of a race).
    """
    started = time.perf_counter()
    if resume is not None and not Path(resume).is_file():
        raise ConfigError(f"{resume}: no such checkpoint to resume from")
    L.seed_everything(config.seed, workers=True, verbose=False)
    if init:
        data_dependent_init(flow, prepared.train)
    module = FlowModule(flow, config)
    batch_size = config.batch_size_for(len(prepared.train))
    # Under a time limit, an epoch is at most about a quarter of it (a random share of the rows),
    # so that even a short slice validates, and stops, more than once.
    epoch_batches = _epoch_batches(flow, prepared.train, batch_size, seconds)
    schedule = ScheduleCallback(
        Slice(seconds, config.max_epochs), config.lr, config.scheduler, patience=config.patience
    )
    # In-process strategies keep the best epoch's weights in memory (a checkpoint file per
    # improving epoch costs more than a small table's epoch) and write best.ckpt and last.ckpt
    # at the end, last.ckpt also every minute for --resume after an interruption. Strategies
    # that train in child processes (ddp_spawn, ddp_fork) hand results back through files.
    in_process = not any(word in str(config.strategy) for word in ("spawn", "fork"))
    best: L.Callback = (
        BestWeights()
        if in_process
        else ModelCheckpoint(
            dirpath=checkpoint_dir, filename="best", monitor="val_nll", mode="min", save_top_k=1
        )
    )
    last = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="last",
        save_top_k=1,
        enable_version_counter=False,
        train_time_interval=timedelta(seconds=60) if in_process else None,
    )
    callbacks: list[L.Callback] = [
        schedule,
        best,
        last,
    ]
    if progress:
        callbacks.append(TQDMProgressBar(leave=True))
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    trainer = L.Trainer(
        max_epochs=config.max_epochs,
        accelerator=config.accelerator,
        devices=_devices(config.devices),
        strategy=config.strategy,
        num_nodes=config.num_nodes,
        gradient_clip_val=config.grad_clip or None,
        deterministic="warn",
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=checkpoint_dir,
        limit_train_batches=epoch_batches,
    )
    data = FlowDataModule(prepared.train, prepared.val, batch_size, config.seed)
    with warnings.catch_warnings():
        # Tiny tabular data: Lightning's advice on dataloader workers does not apply.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", category=FutureWarning, module="lightning")
        # Resuming into a new version's checkpoint directory is intended.
        warnings.filterwarnings("ignore", message="The dirpath has changed from")
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        # The progress bar (tqdm writes to stdout) goes to stderr: stdout carries results only.
        with contextlib.redirect_stdout(sys.stderr):
            trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None)
    last_path = checkpoint_dir / "last.ckpt"
    best_path = checkpoint_dir / "best.ckpt"
    if isinstance(best, BestWeights):
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(last_path)
        history = list(module.history)
        state, best_epoch = best.state, best.epoch
    else:
        state, best_epoch, history = _read_checkpoints(Path(best.best_model_path or ""), last_path)
    if state is None:
        raise TrainingError(
            "training produced no finite validation NLL (the loss diverged); "
            "try a lower --lr or a smaller model"
        )
    module.load_state_dict(state)
    if isinstance(best, BestWeights):
        trainer.save_checkpoint(best_path)
    flow = flow.cpu()
    flow.eval()
    return FitResult(
        flow=flow,
        history=history,
        best_epoch=best_epoch,
        best_checkpoint=best_path if best_path.is_file() else None,
        last_checkpoint=last_path if last_path.is_file() else None,
        is_global_zero=trainer.is_global_zero,
        seconds=time.perf_counter() - started,
    )


def _epoch_batches(
    flow: Flow, rows: np.ndarray, batch_size: int, seconds: float | None
) -> int | float:
    """Batches per epoch: all (1.0) without a time limit, else at most a quarter of ``seconds``
    by the time of one training step (a forward and backward pass, timed once)."""
    batches = math.ceil(len(rows) / batch_size)
    if seconds is None or batches <= 1:
        return 1.0
    x = torch.from_numpy(np.ascontiguousarray(rows[:batch_size], dtype=np.float32))
    flow.train()
    started = time.perf_counter()
    with torch.enable_grad():
        (-flow.log_prob(x).mean()).backward()
    step = (time.perf_counter() - started) * 1.5  # plus the optimizer step
    flow.zero_grad(set_to_none=True)
    fit = max(1, int(seconds / 4 / max(step, 1e-6)))
    return 1.0 if fit >= batches else fit


def _read_checkpoints(
    best: Path, last: Path
) -> tuple[dict[str, Tensor] | None, int | None, list[dict[str, float]]]:
    """The best weights, their epoch and the loss history, from checkpoint files."""
    if not best.is_file():
        return None, None, []
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    source = torch.load(last, map_location="cpu", weights_only=False) if last.is_file() else ckpt
    return ckpt["state_dict"], int(ckpt["epoch"]), list(source.get("history", []))


def _metrics(flow: Flow, prepared: PreparedData, fit: FitResult) -> dict[str, Any]:
    # Integer data: the dequantized bound (a valid discrete NLL bound), not the density at points.
    image = prepared.data_kind == "image"
    evaluate = dequantized_nll if image else evaluate_nll
    nll = {
        split: evaluate(flow, rows)
        for split, rows in (
            ("train", prepared.train),
            ("val", prepared.val),
            ("test", prepared.test),
        )
    }
    for split, value in nll.items():
        if not math.isfinite(value):
            raise TrainingError(f"the trained model's {split} NLL is not finite ({value})")
    bits = nll["test"] / (prepared.dim * math.log(2.0))
    return {
        "train_nll": nll["train"],
        "val_nll": nll["val"],
        "test_nll": nll["test"],
        "test_bits_per_dim": bits,
        "bits_per_dim_kind": "dequantized_bound" if image else "continuous_density",
        "epochs": len(fit.history),
        "best_epoch": fit.best_epoch,
        "train_rows": len(prepared.train),
        "val_rows": len(prepared.val),
        "test_rows": len(prepared.test),
        "dropped_rows": prepared.dropped_rows,
        "dim": prepared.dim,
        "training_seconds": round(fit.seconds, 2),
    }


def export_trained(
    fit: FitResult,
    prepared: PreparedData,
    config: TrainConfig,
    out: Path,
    name: str,
    version: int | None = None,
    *,
    torchscript: bool = True,
    calibration: CalibrationScores | None = None,
    leaderboard: list[dict[str, Any]] | None = None,
) -> TrainResult:
    """Write the report and the artifact to ``out/name/version`` (the next free version).

    ``calibration`` holds the conformal calibration scores (default: the test split, scored by
    the exported graphs); ``leaderboard`` the model-selection race, saved in the report and in
    the manifest's ``training_config["selection"]``.

    Everything is written to a staging directory that is renamed into place only after the
    export verified itself, so a failed export never leaves a half-written version behind.
    """
    out = Path(out)
    version = next_version(out, name) if version is None else int(version)
    final = out / name / str(version)
    if final.exists():
        raise ConfigError(f"{final} already exists; choose another --version or --name")
    staging = out / name / f".staging-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    flow = fit.flow
    try:
        metrics = _metrics(flow, prepared, fit)
        config_dict = config.to_dict()
        config_dict["flow"] = {"family": flow.family, **flow.hparams}
        config_dict["data"] = {"source": prepared.source, "feature_names": prepared.feature_names}
        if leaderboard:
            config_dict["selection"] = {"method": "successive-halving", "leaderboard": leaderboard}
        calibration = calibration or CalibrationScores(None, "split")
        image_shape = flow.hparams.get("shape") if prepared.data_kind == "image" else None
        # The report draws IMAGE_SAMPLES images, or scatters up to 2,000 rows: sample only that.
        shown = IMAGE_SAMPLES if image_shape is not None else 2000
        write_report(
            staging,
            metrics=metrics,
            history=fit.history,
            best_epoch=fit.best_epoch,
            data=prepared.train,
            samples=flow.sample(min(shown, len(prepared.train)), seed=config.seed).numpy(),
            feature_names=prepared.feature_names,
            config=config_dict,
            image_shape=image_shape,
        )
        manifest = export_artifact(
            served_flow(flow),
            staging,
            name=name,
            version=version,
            feature_names=prepared.feature_names,
            holdout=prepared.test,
            metrics=Metrics(
                train_nll=metrics["train_nll"],
                val_nll=metrics["val_nll"],
                test_nll=metrics["test_nll"],
                bits_per_dim=metrics["test_bits_per_dim"],
                bits_per_dim_kind=metrics["bits_per_dim_kind"],
                epochs=metrics["epochs"],
                train_rows=metrics["train_rows"],
            ),
            preprocessing=manifest_preprocessing(
                prepared.data_kind,
                prepared.nan_policy,
                prepared.mean,
                prepared.scale,
                prepared.num_values,
                dequantization=getattr(flow.preprocess, "kind", "uniform"),
                power=prepared.power,
            ),
            training_config=config_dict,
            torchscript=torchscript,
            calibration_log_probs=calibration.log_probs,
            calibration_method=calibration.method,
            fold_models=calibration.fold_models,
            fold_rows=calibration.fold_rows,
        )
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return TrainResult(final, manifest, metrics, config_dict, list(fit.history))


def check_family(family: str) -> None:
    """Raise :class:`ConfigError` unless ``family`` is ``auto`` or a registered family."""
    if family != AUTO_FAMILY and family not in FAMILIES:
        known = ", ".join([AUTO_FAMILY, *families()])
        raise ConfigError(f"unknown flow family {family!r}; known: {known}")


# Share of a time budget kept for cross-fitted calibration when that is the method.
CALIBRATION_SHARE = 0.4


@dataclass
class FittedModel:
    """What :func:`fit_model` produced: the chosen config, the fit, the calibration scores and
    the model-selection leaderboard (empty for an explicit family)."""

    config: TrainConfig
    fit: FitResult
    calibration: CalibrationScores
    leaderboard: list[dict[str, Any]]


def fit_model(
    prepared: PreparedData,
    config: TrainConfig,
    checkpoint_dir: Path,
    *,
    budget: Budget | None = None,
    resume: Path | None = None,
    progress: bool = True,
) -> FittedModel:
    """Everything between prepared data and export, inside ``budget``: model selection
    (``family="auto"``) or one fit, then the calibration scores."""
    from flowserve.models.selection import race

    budget = budget or Budget(None)
    cross_fit = choose_method(config, prepared) == "cross-fit"
    share = 1.0 - (CALIBRATION_SHARE if cross_fit else 0.0)
    seconds = None if budget.seconds is None else budget.remaining() * share
    leaderboard: list[dict[str, Any]] = []
    if config.family == AUTO_FAMILY:
        result = race(prepared, config, checkpoint_dir, seconds=seconds, progress=progress)
        config, fit, leaderboard = result.config, result.fit, result.leaderboard
    else:
        L.seed_everything(config.seed, workers=True, verbose=False)
        flow = build_model(config, prepared)
        fit = fit_flow(
            flow,
            prepared,
            config,
            checkpoint_dir,
            resume=resume,
            progress=progress,
            seconds=seconds,
        )
    calibration = CalibrationScores(None, "split")
    if fit.is_global_zero:
        chosen = config

        def build() -> Flow:
            L.seed_everything(chosen.seed + 1, workers=True, verbose=False)
            return build_model(chosen, prepared)

        calibration = calibration_scores(
            fit.flow,
            prepared,
            config,
            history=fit.history,
            best_epoch=fit.best_epoch,
            seconds_left=None if budget.seconds is None else budget.remaining(),
            build=build,
        )
    return FittedModel(config, fit, calibration, leaderboard)


def train(
    data: Path | str | np.ndarray | pd.DataFrame,
    *,
    family: str | None = None,
    name: str = "model",
    out: Path | str = "artifacts",
    version: int | None = None,
    columns: list[str] | None = None,
    id_column: str | None = None,
    config_file: Path | str | None = None,
    resume: Path | str | None = None,
    checkpoint_dir: Path | str | None = None,
    progress: bool = True,
    torchscript: bool = True,
    params: dict[str, Any] | None = None,
    source: str | None = None,
    **hparams: Any,
) -> TrainResult | None:
    """Train a flow on ``data`` and export it to ``out/name/<version>/``.

    Arguments:
        data: A data file (CSV, Parquet, NPY, NPZ) or an in-memory array / data frame.
        family: The flow family (default :data:`flowserve.models.config.DEFAULT_FAMILY`).
        name: The model name in the repository.
        out: The model repository root.
        version: The version to write (default: the next free one).
        columns: Feature columns to use (default: all but ``id_column``).
        id_column: A row-identifier column, excluded from the features.
        config_file: A TOML/YAML config; ``family``, ``params`` and ``hparams`` override it.
        resume: A Lightning checkpoint (``best.ckpt``/``last.ckpt``) to continue from.
        checkpoint_dir: Where checkpoints go (default ``out/name/.checkpoints/<version>``).
        progress: Show a progress bar.
        torchscript: Also export ``model.pt``.
        params: Family-specific flow options (e.g. ``{"bins": 8}``).
        source: A name for in-memory data, saved in the config (a file's path is used as is).
        hparams: Any :class:`~flowserve.models.config.TrainConfig` field (``epochs``, ``lr``...).

    Returns:
        The :class:`TrainResult`, or ``None`` in DDP processes other than global rank zero.
    """
    file_values = load_config_file(config_file) if config_file else {}
    overrides = {"family": family, **hparams}
    if params:
        overrides["params"] = dict(params)
    config = resolve_config(file_values, overrides)
    check_family(config.family)
    if resume is not None and not Path(resume).is_file():
        raise ConfigError(f"{resume}: no such checkpoint to resume from")
    if resume is not None and config.family == AUTO_FAMILY:
        raise ConfigError("--resume continues one model: give its --family (not auto)")
    with preserved_global_state(threads=config.threads):
        budget = Budget(config.time_budget)
        prepared = prepare_data(
            data,
            columns=columns,
            id_column=id_column,
            nan_policy=config.nan_policy,  # type: ignore[arg-type]
            max_rows=config.max_rows,
            val_fraction=config.val_fraction,
            test_fraction=config.test_fraction,
            seed=config.seed,
            source=source,
            data_kind=data_kind_of(config.family),
            power_transform=config.power_transform,
        )
        out = Path(out)
        if version is not None and (out / name / str(version)).exists():
            raise ConfigError(
                f"{out / name / str(version)} already exists; choose another --version"
            )
        planned = next_version(out, name) if version is None else version
        if checkpoint_dir is not None:
            ckpt_dir = Path(checkpoint_dir)
        else:
            ckpt_dir = out / name / ".checkpoints" / str(planned)
            resuming_here = (
                resume is not None and ckpt_dir.resolve() in Path(resume).resolve().parents
            )
            if "LOCAL_RANK" not in os.environ and ckpt_dir.exists() and not resuming_here:
                # A leftover of an interrupted run for this version: keep checkpoint names stable.
                shutil.rmtree(ckpt_dir)
        model = fit_model(
            prepared,
            config,
            ckpt_dir,
            budget=budget,
            resume=Path(resume) if resume else None,
            progress=progress,
        )
        if not model.fit.is_global_zero:
            return None
        return export_trained(
            model.fit,
            prepared,
            model.config,
            out,
            name,
            planned,
            torchscript=torchscript,
            calibration=model.calibration,
            leaderboard=model.leaderboard,
        )

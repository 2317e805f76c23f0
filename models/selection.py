"""Automatic choice of the flow family and size (``--family auto``): successive halving.

Every candidate (:func:`candidates`: a full-covariance Gaussian, and maf, nsf, nsf_ar, and
realnvp under 1,000 rows, at sizes scaled to the rows and features) trains for one short
round; the better half by validation NLL goes on, each survivor continuing from its weights
for twice as long, until one is left. The winner then continues for the rest of the time it
was given. Under a time budget the rounds are slices of wall clock; without one they are epoch
counts, and the race is then reproducible by seed (a time budget makes the epoch counts depend
on the machine's speed).

Every round's result goes into the leaderboard (family, size, epochs, best validation NLL,
seconds), which training writes into the report and the manifest.

Example:
    >>> [c.label for c in candidates(rows=300, dim=4)][:3]
    ['gaussian', 'nsf-4x64', 'maf-5x64']
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from flowserve.models.base import FAMILIES, Flow
from flowserve.models.config import ConfigError, TrainConfig
from flowserve.models.data import PreparedData

__all__ = ["Candidate", "RaceResult", "candidates", "race"]

log = logging.getLogger(__name__)

# Share of a time budget the race may use before the winner trains on.
RACE_SHARE = 0.45
# The shortest first-round slice worth a fit (a Lightning fit has fixed costs): a smaller budget
# races fewer candidates.
MIN_ROUND_SECONDS = 0.5


@dataclass(frozen=True)
class Candidate:
    """One family at one size."""

    family: str
    layers: int
    hidden: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if not self.layers:  # a family without a size (the Gaussian)
            return self.family
        return f"{self.family}-{self.layers}x{self.hidden}"

    def config(self, base: TrainConfig) -> TrainConfig:
        """``base`` with this candidate's family and size (the user's ``params`` stay on top)."""
        return base.replace(
            family=self.family,
            layers=self.layers or None,
            hidden=self.hidden or None,
            params={**self.params, **base.params},
        )


def _accepts(candidate: Candidate, base: TrainConfig) -> bool:
    """Whether the candidate's family takes every user-given flow option (``--param``)."""
    builder = FAMILIES[candidate.family]
    names = inspect.signature(builder).parameters
    return all(key in names for key in base.params)


def candidates(rows: int, dim: int) -> list[Candidate]:
    """The candidates for ``rows`` training rows of ``dim`` features.

    Conditioners are 128 wide (64 on tables of under 1,000 rows, where smaller models overfit
    less and epochs are cheap enough to race three more, smaller candidates).
    """
    hidden = 64 if rows < 1000 else 128
    spline = {"bins": 8}
    # In order of how often each won on the benchmark tables: a budget too small to race them
    # all keeps the first ones.
    found = [
        # The full-covariance Gaussian costs next to nothing and sets the bar: on small tables
        # it often wins (breast_cancer, wine), and a flow that cannot beat it should not serve.
        Candidate("gaussian", 0, 0),
        Candidate("nsf", 4, hidden, spline),
        Candidate("maf", 5, hidden),
        Candidate("nsf_ar", 3, hidden, spline),
    ]
    if rows < 1000:
        # realnvp learns fastest and ends worst on the larger tables (gmm8, gmm16: for zuko's
        # RealNVP too), so on them it won the short first rounds and then lost the budget:
        # gmm16 at 60 s, 18.90 with it in the race, 18.64 without. Small tables' rounds are
        # long enough in epochs to rank it fairly, and there it wins (diabetes).
        found.append(Candidate("realnvp", 8, hidden))
        # Small tables: smaller models, down to one close to a Gaussian with nonlinear means.
        found += [
            Candidate("nsf", 4, hidden // 2, spline),
            Candidate("maf", 3, hidden // 2),
            Candidate("maf", 1, 16),
        ]
    if dim < 2:  # coupling layers need two halves
        found = [c for c in found if c.family not in ("nsf", "realnvp")]
    return found


@dataclass
class _Runner:
    candidate: Candidate
    config: TrainConfig
    flow: Flow
    epochs: int = 0
    seconds: float = 0.0
    val_nll: float = math.inf
    best_epoch: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    eliminated_in: int | None = None
    error: str | None = None
    last_fit: Any = None

    def entry(self, rank: int) -> dict[str, Any]:
        return {
            "rank": rank,
            "label": self.candidate.label,
            "family": self.candidate.family,
            "layers": self.candidate.layers,
            "hidden": self.candidate.hidden,
            "params": dict(self.candidate.params),
            "epochs": self.epochs,
            "val_nll": self.val_nll if math.isfinite(self.val_nll) else None,
            "seconds": round(self.seconds, 2),
            "parameters": sum(p.numel() for p in self.flow.parameters()),
            "result": (
                "chosen"
                if self.eliminated_in is None and self.error is None
                else (self.error or f"out after round {self.eliminated_in}")
            ),
        }


def _sizes(n: int) -> list[int]:
    """Survivors per round: n, n/2 (rounded up), ..., 1."""
    sizes = [n]
    while sizes[-1] > 1:
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


def _units(n: int) -> int:
    """First-round slices the race of ``n`` candidates takes (round r: survivors x 2^r)."""
    return max(1, sum(size * 2**r for r, size in enumerate(_sizes(n)[:-1])))


@dataclass
class RaceResult:
    """The winner (its config, trained flow and combined fit) and the leaderboard."""

    config: TrainConfig
    flow: Flow
    fit: Any  # flowserve.models.training.FitResult
    leaderboard: list[dict[str, Any]]


def _train_round(
    runner: _Runner,
    prepared: PreparedData,
    ckpt_dir: Path,
    *,
    seconds: float | None,
    epochs: int | None,
    progress: bool,
    first: bool,
) -> None:
    """Continue ``runner`` for ``seconds`` (or ``epochs``); keep its best weights so far."""
    from flowserve.models.training import TrainingError, fit_flow

    config = runner.config
    if epochs is not None:
        config = config.replace(epochs=max(1, epochs))
    before = None if first else copy.deepcopy(runner.flow.state_dict())
    try:
        fit = fit_flow(
            runner.flow,
            prepared,
            config,
            ckpt_dir / runner.candidate.label,
            progress=progress,
            seconds=seconds,
            init=first,
        )
    except TrainingError as e:
        if before is not None:
            runner.flow.load_state_dict(before)
        runner.error = f"diverged: {e}"
        return
    offset = runner.epochs
    for row in fit.history:
        runner.history.append({**row, "epoch": int(row["epoch"]) + offset})
    runner.epochs += len(fit.history)
    runner.seconds += fit.seconds
    vals = [row["val_nll"] for row in fit.history if math.isfinite(row["val_nll"])]
    best = min(vals) if vals else math.inf
    if best < runner.val_nll:
        runner.val_nll = best
        runner.best_epoch = offset + (fit.best_epoch or 0)
        runner.last_fit = fit
    elif before is not None:  # this round never beat the previous best: keep those weights
        runner.flow.load_state_dict(before)


def race(
    prepared: PreparedData,
    base: TrainConfig,
    ckpt_dir: Path,
    *,
    seconds: float | None,
    progress: bool = False,
    pool: list[Candidate] | None = None,
) -> RaceResult:
    """Successive halving over :func:`candidates` in ``seconds`` (``None``: by epochs, with
    ``base.max_epochs`` in all for the winner), then the winner trains on."""
    from flowserve.models.training import FitResult, build_model

    pool = [c for c in pool or candidates(len(prepared.train), prepared.dim) if _accepts(c, base)]
    if not pool:
        raise ConfigError(
            f"no candidate family of 'auto' accepts the options {sorted(base.params)}; "
            "name a --family"
        )
    runners: list[_Runner] = []
    skipped: list[_Runner] = []
    for cand in pool:
        config = cand.config(base)
        L.seed_everything(base.seed, workers=True, verbose=False)
        runners.append(_Runner(cand, config, build_model(config, prepared)))
    if seconds is not None:
        while len(runners) > 1 and seconds * RACE_SHARE / _units(len(runners)) < MIN_ROUND_SECONDS:
            dropped = runners.pop()
            dropped.error = "not raced: the budget is too small"
            skipped.append(dropped)
    # Rounds: n, n/2, ... survivors, each round twice as long per survivor.
    sizes = _sizes(len(runners))
    units = _units(len(runners))
    if seconds is not None:
        unit_seconds: float | None = seconds * RACE_SHARE / max(units, 1)
        unit_epochs = None
    else:
        unit_seconds = None
        unit_epochs = max(2, base.max_epochs // (4 * max(len(sizes) - 1, 1)))
    started = time.perf_counter()
    alive = list(runners)
    for r, _ in enumerate(sizes[:-1]):
        for runner in alive:
            _train_round(
                runner,
                prepared,
                ckpt_dir,
                seconds=None if unit_seconds is None else unit_seconds * 2**r,
                epochs=None if unit_epochs is None else unit_epochs * 2**r,
                progress=progress,
                first=r == 0,
            )
        ranked = sorted(
            (x for x in alive if x.error is None), key=lambda x: (x.val_nll, x.candidate.label)
        )
        keep = ranked[: sizes[r + 1]]
        for runner in alive:
            if runner not in keep and runner.error is None:
                runner.eliminated_in = r + 1
        alive = keep
        if not alive:
            break
    if not alive:
        from flowserve.models.training import TrainingError

        raise TrainingError(
            "every candidate family diverged during model selection; try a lower --lr"
        )
    winner = alive[0]
    # The winner trains on for the rest of its time (or the rest of its epochs).
    if seconds is not None:
        rest = seconds - (time.perf_counter() - started)
        if rest > 0.5:
            _train_round(
                winner,
                prepared,
                ckpt_dir,
                seconds=rest,
                epochs=None,
                progress=progress,
                first=False,
            )
    else:
        rest_epochs = base.max_epochs - winner.epochs
        if rest_epochs > 0:
            _train_round(
                winner,
                prepared,
                ckpt_dir,
                seconds=None,
                epochs=rest_epochs,
                progress=progress,
                first=False,
            )
    rounds = len(sizes)
    ranked = sorted(
        runners,
        key=lambda x: (
            x.error is not None,
            -(x.eliminated_in or rounds),  # those that lasted longer rank higher
            x.val_nll,
        ),
    )
    leaderboard = [x.entry(i + 1) for i, x in enumerate(ranked + skipped)]
    last = winner.last_fit
    fit = FitResult(
        flow=winner.flow.eval(),
        history=winner.history,
        best_epoch=winner.best_epoch,
        best_checkpoint=last.best_checkpoint if last else None,
        last_checkpoint=last.last_checkpoint if last else None,
        is_global_zero=last.is_global_zero if last else True,
        seconds=winner.seconds,
    )
    log.info("model selection chose %s (val NLL %.4f)", winner.candidate.label, winner.val_nll)
    return RaceResult(winner.config, winner.flow, fit, leaderboard)

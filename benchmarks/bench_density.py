"""Density quality on the user path: flowserve under a wall-clock budget vs peer libraries.

flowserve is trained the way a user trains it: ``FlowDensityEstimator(time_budget=B)`` with every
other setting default (the family is chosen by the estimator), and, on one table, ``flowserve
train data.csv --time-budget B`` in a subprocess, its artifact scored by ONNX Runtime as the
service scores it. The peers (zuko's MAF, NSF and RealNVP, nflows' MAF) get the same rows, the
same wall-clock budget and one torch thread, trained by the plain loop a competent user writes
(:func:`train_peer`): standardization with the training rows' statistics (its log-determinant
added back, so every NLL is in raw units), a validation split for best-weights selection, Adam
with a cosine schedule over the budget, gradient clipping.

Data sets: known densities generated here (Neal's funnel, Gaussian mixtures in 2, 8 and 16 D, a
banana) and tables bundled with scikit-learn (no downloads). Columns with few distinct values are
dequantized (:func:`dequantize`) so that every density is bounded.

Reported per table and method: test NLL +- se (nats per row, standard error over test rows), the
excess over the true density where it is known (model NLL - true cross-entropy on the same rows,
paired se), the difference to the best peer, epochs, wall seconds, parameters, and the family
flowserve chose. Every run is a fresh process; runs are interleaved (for each data set and seed,
every method in turn); ``--jobs 2`` runs two at a time, one thread each.

Usage::

    python benchmarks/bench_density.py --quick              # tiny budget, 2 data sets: ~2 min
    python benchmarks/bench_density.py --budget 60 --jobs 2  # the headline table
    python benchmarks/bench_density.py --budget 5 --datasets wine,gmm8 --seeds 0,1

The table is printed and written to ``benchmarks/results/density_<budget>s.md`` with the machine,
versions, threads, budget, seeds and command line. Peers come from the ``bench`` extra
(``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import math
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DATASETS",
    "METHODS",
    "DataSet",
    "RunResult",
    "Synthetic",
    "banana",
    "dequantize",
    "funnel",
    "gaussian_mixture",
    "load_dataset",
    "main",
    "mixture_parameters",
    "run_one",
    "standardizer",
    "train_peer",
]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# The peers' recipe: what a competent user writes for a plain maximum-likelihood loop.
PEER_TRANSFORMS = 5
PEER_HIDDEN = 128  # two hidden layers of this width in every conditioner
PEER_BINS = 8
PEER_LR = 1e-3
PEER_BATCH = 256
PEER_CLIP = 5.0
VAL_SHARE, VAL_MIN = 0.1, 32  # validation rows taken from the training rows
# Validate at the end of an epoch, but not more often than this share of the budget.
VAL_EVERY = 0.005

# A column with at most this many distinct values is dequantized (uniform noise over its grid).
DISCRETE_MAX_VALUES = 20
REAL_TEST_SHARE = 0.3
CHUNK = 4096

PEERS = ("zuko-maf", "zuko-nsf", "zuko-realnvp", "nflows-maf")
METHODS = ("flowserve", "flowserve-cli", *PEERS)
CLI_DATASETS = ("breast_cancer",)  # the CLI runs on these tables only (it is the estimator's path)
QUICK_DATASETS = ("banana", "breast_cancer")
QUICK_BUDGET = 3.0
# A run that got less CPU than this share of its wall time makes the results file warn.
BUSY_SHARE = 0.8

# --------------------------------------------------------------------------- data sets

LogDensity = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Synthetic:
    """A distribution with a sampler and its exact log-density (nats, float64 ``[N]``)."""

    name: str
    dim: int
    sample: Callable[[int, np.random.Generator], np.ndarray]
    log_prob: LogDensity


def _normal_logpdf(x: np.ndarray, log_sd: np.ndarray | float) -> np.ndarray:
    return -0.5 * (x * np.exp(-log_sd)) ** 2 - log_sd - 0.5 * math.log(2 * math.pi)


def funnel(dim: int = 5, sigma: float = 3.0) -> Synthetic:
    """Neal's funnel: ``v ~ N(0, sigma^2)``, then ``x_i | v ~ N(0, e^v)`` for the other
    ``dim - 1`` coordinates (scales from ~0.01 to ~100: a hard geometry for flows)."""

    def sample(n: int, rng: np.random.Generator) -> np.ndarray:
        v = sigma * rng.standard_normal(n)
        x = np.exp(v / 2)[:, None] * rng.standard_normal((n, dim - 1))
        return np.column_stack([v, x])

    def log_prob(rows: np.ndarray) -> np.ndarray:
        v = rows[:, 0]
        lp = _normal_logpdf(v, math.log(sigma))
        return lp + _normal_logpdf(rows[:, 1:], (v / 2)[:, None]).sum(1)

    return Synthetic(f"funnel{dim}", dim, sample, log_prob)


def banana(curvature: float = 0.03, sd1: float = 10.0, angle: float = math.pi / 4) -> Synthetic:
    """Haario's twisted Gaussian in 2-D, rotated by ``angle``: ``u1 ~ N(0, sd1^2)``, ``u2 = y +
    b (u1^2 - sd1^2)`` with ``y ~ N(0, 1)``, then ``x = R u`` (twist and rotation preserve volume,
    so the density is exact). Unrotated, one affine coupling on ``x1`` represents it exactly."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])

    def sample(n: int, rng: np.random.Generator) -> np.ndarray:
        u1 = sd1 * rng.standard_normal(n)
        u2 = rng.standard_normal(n) + curvature * (u1**2 - sd1**2)
        return np.column_stack([u1, u2]) @ rot.T

    def log_prob(rows: np.ndarray) -> np.ndarray:
        u = rows @ rot  # R^-1 x, row-wise
        y = u[:, 1] - curvature * (u[:, 0] ** 2 - sd1**2)
        return _normal_logpdf(u[:, 0], math.log(sd1)) + _normal_logpdf(y, 0.0)

    return Synthetic("banana", 2, sample, log_prob)


def mixture_parameters(
    dim: int, components: int = 8, spread: float = 4.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means ``[K, dim]`` (uniform in ``[-spread, spread]^dim``), lower Cholesky factors of
    random correlated covariances ``[K, dim, dim]`` and Dirichlet weights ``[K]``; seeded by
    ``dim``, so every sample of a given ``dim`` comes from the same density."""
    g = np.random.default_rng(7919 + dim)
    means = g.uniform(-spread, spread, size=(components, dim))
    chol = np.tril(g.normal(scale=0.4 / math.sqrt(dim), size=(components, dim, dim)), -1)
    diag = np.arange(dim)
    chol[:, diag, diag] = g.uniform(0.3, 1.2, size=(components, dim))
    return means, chol, g.dirichlet(np.full(components, 5.0))


def gaussian_mixture(dim: int, components: int = 8) -> Synthetic:
    """A mixture of full-covariance Gaussians in ``dim`` D (:func:`mixture_parameters`)."""
    means, chol, weights = mixture_parameters(dim, components)
    diag = np.arange(dim)

    def sample(n: int, rng: np.random.Generator) -> np.ndarray:
        comp = rng.choice(components, size=n, p=weights)
        eps = rng.standard_normal((n, dim))
        return means[comp] + np.einsum("nij,nj->ni", chol[comp], eps)

    def log_prob(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), components))
        for k in range(components):
            white = np.linalg.solve(chol[k], (rows - means[k]).T).T
            log_det = np.log(chol[k][diag, diag]).sum()
            out[:, k] = (
                -0.5 * (white**2).sum(1)
                - log_det
                - 0.5 * dim * math.log(2 * math.pi)
                + math.log(weights[k])
            )
        return np.logaddexp.reduce(out, axis=1)

    return Synthetic(f"gmm{dim}", dim, sample, log_prob)


@dataclass
class DataSet:
    """Raw (unstandardized) train and test rows; ``true_log_prob`` is the exact log-density of
    each test row where it is known."""

    name: str
    train: np.ndarray
    test: np.ndarray
    true_log_prob: np.ndarray | None = None
    note: str = ""


# Known densities: (distribution, training rows); every one gets TEST_ROWS test rows.
SYNTHETIC: dict[str, tuple[Callable[[], Synthetic], int]] = {
    "funnel": (lambda: funnel(5), 10_000),
    "banana": (banana, 5_000),
    "gmm2": (lambda: gaussian_mixture(2), 5_000),
    "gmm8": (lambda: gaussian_mixture(8), 10_000),
    "gmm16": (lambda: gaussian_mixture(16), 20_000),
}
TEST_ROWS = 5_000
# Tables bundled with scikit-learn: (loader name, note).
REAL: dict[str, str] = {
    "breast_cancer": "load_breast_cancer",
    "wine": "load_wine",
    "diabetes": "load_diabetes",
    "digits": "load_digits",
}
DATASETS = (*SYNTHETIC, *REAL)


def dequantize(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """Spread every column with at most :data:`DISCRETE_MAX_VALUES` distinct values uniformly
    over its grid cell (width = the smallest gap between its values; 1 for a constant column).

    A flow can put unbounded density on a discrete value, so without this a table with a binary
    column has no finite optimum. Returns the new rows and the indices of the columns changed.
    """
    out = np.array(x, dtype=np.float64)
    changed = []
    for j in range(out.shape[1]):
        values = np.unique(out[:, j])
        if len(values) > DISCRETE_MAX_VALUES:
            continue
        width = float(np.diff(values).min()) if len(values) > 1 else 1.0
        out[:, j] += rng.uniform(-width / 2, width / 2, size=len(out))
        changed.append(j)
    return out, changed


def load_dataset(
    name: str, seed: int, n_train: int | None = None, n_test: int | None = None
) -> DataSet:
    """The data set ``name`` drawn (synthetic) or split (real) with ``seed``.

    ``n_train`` / ``n_test`` override the synthetic sets' sizes (tests use tiny ones).
    """
    rng = np.random.default_rng(seed)
    if name in SYNTHETIC:
        make, rows = SYNTHETIC[name]
        dist = make()
        n_train, n_test = n_train or rows, n_test or TEST_ROWS
        x = dist.sample(n_train + n_test, rng)
        train, test = x[:n_train], x[n_train:]
        return DataSet(name, train, test, dist.log_prob(test), f"{dist.dim}-D, known density")
    if name in REAL:
        import sklearn.datasets

        raw = getattr(sklearn.datasets, REAL[name])().data
        x, changed = dequantize(raw, rng)
        x = x[rng.permutation(len(x))]
        cut = len(x) - round(REAL_TEST_SHARE * len(x))
        note = f"{x.shape[1]}-D, scikit-learn"
        if changed:
            note += f", {len(changed)} discrete column(s) dequantized"
        return DataSet(name, x[:cut], x[cut:], None, note)
    raise ValueError(f"unknown data set {name!r} (known: {', '.join(DATASETS)})")


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    """One training run of one method on one data set and seed."""

    dataset: str
    method: str
    seed: int
    dim: int = 0
    train_rows: int = 0
    test_rows: int = 0
    nll: float = math.nan  # mean test NLL, nats per row (raw units)
    se: float = math.nan  # standard error of that mean over test rows
    excess: float | None = None  # nll - true cross-entropy on the same rows
    excess_se: float | None = None  # paired standard error
    true_nll: float | None = None
    epochs: float | None = None
    seconds: float = math.nan  # wall time of training (the CLI: the whole command)
    cpu_seconds: float = math.nan  # CPU time the run got meanwhile (a busy machine shows here)
    params: int | None = None
    family: str = ""
    note: str = ""
    error: str = ""
    leaderboard: list[dict[str, Any]] = field(default_factory=list)  # flowserve's race

    @property
    def cpu_share(self) -> float:
        """CPU seconds per wall second: about 1 for one thread with a core of its own."""
        return self.cpu_seconds / self.seconds if self.seconds > 0 else math.nan


def standardizer(train: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean, scale and ``-sum(log scale)``: ``log p_raw(x) = log p_std((x - mean) / scale)
    + that constant``."""
    mean, scale = train.mean(0), train.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    return mean, scale, float(-np.log(scale).sum())


def _split_validation(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n_val = min(max(VAL_MIN, round(VAL_SHARE * n)), n // 3)
    perm = rng.permutation(n)
    return perm[n_val:], perm[:n_val]


def _peer_model(method: str, dim: int) -> tuple[Any, Callable[[Any, Any], Any]]:
    """The peer's flow and how to get ``log_prob(x)`` from it."""
    hidden = (PEER_HIDDEN, PEER_HIDDEN)
    if method.startswith("zuko-"):
        import zuko

        kinds = {
            "zuko-maf": lambda: zuko.flows.MAF(
                dim, transforms=PEER_TRANSFORMS, hidden_features=hidden
            ),
            "zuko-nsf": lambda: zuko.flows.NSF(
                dim, bins=PEER_BINS, transforms=PEER_TRANSFORMS, hidden_features=hidden
            ),
            "zuko-realnvp": lambda: zuko.flows.RealNVP(
                dim, transforms=PEER_TRANSFORMS, hidden_features=hidden
            ),
        }
        return kinds[method](), lambda m, x: m().log_prob(x)
    if method == "nflows-maf":
        from nflows.flows import MaskedAutoregressiveFlow

        flow = MaskedAutoregressiveFlow(
            features=dim,
            hidden_features=PEER_HIDDEN,
            num_layers=PEER_TRANSFORMS,
            num_blocks_per_layer=2,
        )
        return flow, lambda m, x: m.log_prob(x)
    raise ValueError(f"unknown peer {method!r} (known: {', '.join(PEERS)})")


@dataclass
class PeerFit:
    """A trained peer: ``score(rows)`` is the raw-space log-density of each row."""

    score: Callable[[np.ndarray], np.ndarray]
    epochs: float  # a fraction where the budget ended inside one
    params: int
    note: str = ""  # non-finite steps skipped, if any
    seconds: float = math.nan  # wall time, model construction included
    cpu_seconds: float = math.nan  # CPU time this process got meanwhile


def train_peer(method: str, train: np.ndarray, budget: float, seed: int) -> PeerFit:
    """Train a peer for ``budget`` wall seconds (model construction included) on ``train``.

    The loop: standardize with the training rows' statistics;
    hold out a validation split; Adam with the learning rate on a cosine over the elapsed share
    of the budget; gradient-norm clipping; the weights with the best validation NLL are kept.
    """
    import torch

    importlib.import_module("zuko" if method.startswith("zuko-") else "nflows.flows")  # untimed
    start, cpu_start = time.perf_counter(), time.process_time()
    deadline = start + budget
    torch.manual_seed(seed)
    mean, scale, log_det = standardizer(train)
    rows = torch.from_numpy(((train - mean) / scale).astype(np.float32))
    fit_idx, val_idx = _split_validation(len(rows), np.random.default_rng(seed))
    x_fit, x_val = rows[fit_idx], rows[val_idx]
    model, log_prob = _peer_model(method, train.shape[1])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=PEER_LR)
    gen = torch.Generator().manual_seed(seed)
    batch = min(PEER_BATCH, len(x_fit))

    def val_nll() -> float:
        with torch.no_grad():
            return float(-log_prob(model, x_val).double().mean())

    best, best_state = math.inf, copy.deepcopy(model.state_dict())
    steps, skipped, last_val = 0, 0, start
    done = False
    while not done:
        for idx in torch.randperm(len(x_fit), generator=gen).split(batch):
            now = time.perf_counter()
            if now >= deadline:
                done = True
                break
            steps += 1
            lr = PEER_LR * 0.5 * (1 + math.cos(math.pi * (now - start) / budget))
            for group in opt.param_groups:
                group["lr"] = lr
            loss = -log_prob(model, x_fit[idx]).mean()
            if not torch.isfinite(loss):
                skipped += 1
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, PEER_CLIP)
            opt.step()
        if done or time.perf_counter() - last_val >= VAL_EVERY * budget:
            last_val = time.perf_counter()
            nll = val_nll()
            if nll < best:
                best, best_state = nll, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)

    def score(x: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(((x - mean) / scale).astype(np.float32))
        with torch.no_grad():
            out = [log_prob(model, b).double().numpy() for b in z.split(CHUNK)]
        return np.concatenate(out) + log_det

    note = f"{skipped} non-finite steps skipped" if skipped else ""
    epochs = steps / math.ceil(len(x_fit) / batch)
    fit = PeerFit(score, epochs, sum(p.numel() for p in params), note)
    fit.seconds, fit.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return fit


def flowserve_estimator(budget: float, seed: int) -> Any:
    """The estimator exactly as a user makes it for a budget (every other setting default)."""
    from flowserve.models.estimator import FlowDensityEstimator

    return FlowDensityEstimator(time_budget=budget, n_threads=1, seed=seed, progress=False)


def _family_label(
    family: str, hparams: dict[str, Any], leaderboard: list[dict[str, Any]] | None
) -> str:
    """``maf 5x128 (of 8)``: the family, its size (the Gaussian has none) and the race's field."""
    sized = "layers" in hparams or "hidden" in hparams
    label = f"{family} {hparams.get('layers', '?')}x{hparams.get('hidden', '?')}"
    label = label if sized else family
    if leaderboard:
        label += f" (of {len(leaderboard)})"
    return label


def _run_estimator(data: DataSet, budget: float, seed: int) -> tuple[np.ndarray, RunResult]:
    est = flowserve_estimator(budget, seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    est.fit(data.train)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    leaderboard = getattr(est, "leaderboard_", None)
    result = RunResult(
        data.name,
        "flowserve",
        seed,
        epochs=len(est.history_),
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        params=sum(p.numel() for p in est.flow_.parameters()),
        family=_family_label(
            getattr(est, "family_", None) or getattr(est.flow_, "family", "?"),
            getattr(est.flow_, "hparams", {}) or {},
            leaderboard,
        ),
        leaderboard=[_plain(row) for row in leaderboard or []],
    )
    return est.score_samples(data.test).astype(np.float64), result


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """A leaderboard row with plain Python values (it crosses a process boundary)."""
    return {k: v if isinstance(v, str | int | float | None) else str(v) for k, v in row.items()}


def _cli_command(csv: Path, out: Path, name: str, budget: float, seed: int) -> list[str]:
    """``flowserve train`` as a user runs it for a budget (every other setting default)."""
    exe = Path(sys.executable).with_name("flowserve")
    cmd = [str(exe), "train", str(csv), "--out", str(out), "--name", name, "--seed", str(seed)]
    return [*cmd, "--time-budget", f"{budget:g}", "--threads", "1", "--no-progress"]


def _run_cli(data: DataSet, budget: float, seed: int) -> tuple[np.ndarray, RunResult]:
    import json

    from flowserve.service.runtime import OnnxFlowModel

    with tempfile.TemporaryDirectory(prefix="bench-density-") as tmp:
        csv = Path(tmp) / f"{data.name}.csv"
        header = ",".join(f"x{j}" for j in range(data.train.shape[1]))
        np.savetxt(csv, data.train, delimiter=",", header=header, comments="", fmt="%.17g")
        name = f"{data.name}-s{seed}"
        cmd = _cli_command(csv, Path(tmp) / "models", name, budget, seed)
        start, cpu_start = time.perf_counter(), _children_cpu()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds, cpu_seconds = time.perf_counter() - start, _children_cpu() - cpu_start
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            raise RuntimeError(f"flowserve train exited {proc.returncode}: {' '.join(tail)}")
        artifact = Path(tmp) / "models" / name / "1"
        manifest = json.loads((artifact / "manifest.json").read_text())
        log_prob = OnnxFlowModel(artifact).log_prob(data.test.astype(np.float32))
        hp = manifest.get("hyperparameters", {})
        board = manifest.get("training_config", {}).get("selection", {}).get("leaderboard")
        family = _family_label(manifest["family"], hp, board)
        note = f"{seconds - budget:+.1f} s over the budget (start-up and export included)"
        said = re.search(r"([0-9.]+) s training", proc.stdout)
        if said:
            note += f"; it reports {said.group(1)} s training"
        race = re.search(r"^model selection.*$", proc.stdout, re.MULTILINE)
        if not board and race:
            board = [{"race": race.group(0)}]
        result = RunResult(
            data.name,
            "flowserve-cli",
            seed,
            epochs=manifest.get("metrics", {}).get("epochs"),
            seconds=seconds,
            cpu_seconds=cpu_seconds,
            params=_torchscript_params(artifact, manifest),
            family=family,
            note=note,
            leaderboard=[_plain(row) for row in board or []],
        )
    return np.asarray(log_prob, dtype=np.float64), result


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _torchscript_params(artifact: Path, manifest: dict[str, Any]) -> int | None:
    if not manifest.get("torchscript"):
        return None
    import torch

    module = torch.jit.load(str(artifact / manifest["torchscript"]), map_location="cpu")
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class Task:
    """One run to do: a method on a data set and seed, for a budget."""

    dataset: str
    method: str
    seed: int
    budget: float


def run_one(task: Task) -> RunResult:
    """Do one run in this process (a fresh one per run: no state leaks between methods).

    Failures are reported in ``error``, so one broken run does not end the benchmark.
    """
    import torch

    torch.set_num_threads(1)
    # torch imports its compiler stack when the first optimizer is built (2-4 s here): a cost
    # of the process, not of training, so it is paid before any clock starts, for every method.
    warm = torch.zeros(1, requires_grad=True)
    torch.optim.Adam([warm]).step()
    data = load_dataset(task.dataset, task.seed)
    try:
        if task.method == "flowserve":
            log_prob, result = _run_estimator(data, task.budget, task.seed)
        elif task.method == "flowserve-cli":
            log_prob, result = _run_cli(data, task.budget, task.seed)
        else:
            fit = train_peer(task.method, data.train, task.budget, task.seed)
            log_prob = fit.score(data.test)
            result = RunResult(data.name, task.method, task.seed, epochs=fit.epochs)
            result.seconds, result.cpu_seconds = fit.seconds, fit.cpu_seconds
            result.params, result.note = fit.params, fit.note
    except Exception as e:  # a failed run is a result too
        result = RunResult(data.name, task.method, task.seed, error=f"{type(e).__name__}: {e}")
        log_prob = None
    result.dim, result.train_rows, result.test_rows = (
        data.train.shape[1],
        len(data.train),
        len(data.test),
    )
    if log_prob is not None:
        _score_into(result, log_prob, data.true_log_prob)
    return result


def _score_into(result: RunResult, log_prob: np.ndarray, true_log_prob: np.ndarray | None) -> None:
    nll = -log_prob
    result.nll = float(nll.mean())
    result.se = float(nll.std(ddof=1) / math.sqrt(len(nll)))
    if true_log_prob is not None:
        gap = nll + true_log_prob
        result.true_nll = float(-true_log_prob.mean())
        result.excess = float(gap.mean())
        result.excess_se = float(gap.std(ddof=1) / math.sqrt(len(gap)))
    if not math.isfinite(result.nll):
        result.note = (result.note + "; " if result.note else "") + "non-finite test log-density"


# --------------------------------------------------------------------------- report


@dataclass
class Summary:
    """The seeds of one method on one data set, reduced to medians."""

    dataset: str
    method: str
    runs: list[RunResult] = field(default_factory=list)

    def ok(self) -> list[RunResult]:
        return [r for r in self.runs if not r.error and math.isfinite(r.nll)]

    def median(self, attr: str) -> float:
        values = [getattr(r, attr) for r in self.ok() if getattr(r, attr) is not None]
        return statistics.median(values) if values else math.nan


def _busy_warning(runs: list[RunResult]) -> list[str]:
    shares = [r.cpu_share for r in runs if math.isfinite(r.cpu_share)]
    if not shares or min(shares) >= BUSY_SHARE:
        return []
    return [
        f"**Warning: the machine was busy.** Runs got as little as {min(shares):.0%} of a CPU "
        f"while training (median {statistics.median(shares):.0%}), so a budget bought less "
        "compute than on a quiet machine, unequally across methods: do not quote these numbers.",
        "",
    ]


def _fmt(x: float | None, digits: int = 3, sign: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return ""
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _epochs(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return ""
    return f"{x:.1f}" if x < 10 else f"{x:.0f}"


def _table(summaries: dict[tuple[str, str], Summary], datasets: list[str]) -> list[str]:
    lines = [
        "| data set | method | test NLL ± se | seed range | excess ± se | vs best peer | "
        "epochs | s (CPU share) | params | family (flowserve) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ds in datasets:
        rows = [s for (d, _), s in summaries.items() if d == ds]
        if not rows:
            continue
        peers = [s for s in rows if s.method in PEERS and s.ok()]
        best_peer = min(peers, key=lambda s: s.median("nll"), default=None)
        first = rows[0].runs[0]
        true_nll = rows[0].median("true_nll")
        head = f"{ds} ({first.dim}-D, {first.train_rows}/{first.test_rows} rows)"
        if math.isfinite(true_nll):
            lines.append(f"| {head} | true density | {true_nll:.3f} | | 0 | | | | | |")
        for s in rows:
            ok = s.ok()
            if not ok:
                err = "; ".join(sorted({r.error or r.note for r in s.runs}))[:120]
                lines.append(f"| {head} | {s.method} | failed: {err} | | | | | | | |")
                continue
            nlls = [r.nll for r in ok]
            nll, se = s.median("nll"), s.median("se")
            excess = ""
            if ok[0].excess is not None:
                excess = f"{s.median('excess'):.3f} ± {s.median('excess_se'):.3f}"
            vs = ""
            if best_peer is not None:
                vs = f"{nll - best_peer.median('nll'):+.3f}"
                if ok[0].excess is not None and best_peer.median("excess") > 0:
                    vs += f" ({s.median('excess') / best_peer.median('excess'):.2f}x excess)"
            rng_ = f"{min(nlls):.3f} .. {max(nlls):.3f}" if len(nlls) > 1 else ""
            families = ", ".join(r.family for r in ok if r.family)
            params = s.median("params")
            lines.append(
                f"| {head} | {s.method} | {nll:.3f} ± {se:.3f} | {rng_} | {excess} | {vs} | "
                f"{_epochs(s.median('epochs'))} | {_fmt(s.median('seconds'), 1)} "
                f"({_fmt(s.median('cpu_share'), 2)}) | "
                f"{'' if not math.isfinite(params) else f'{int(params):,}'} | {families} |"
            )
    return lines


def _verdict(
    summaries: dict[tuple[str, str], Summary], datasets: list[str], budget: float
) -> list[str]:
    """The issue's "done means", per data set: flowserve (estimator) vs the best peer."""
    lines = []
    for ds in datasets:
        mine = summaries.get((ds, "flowserve"))
        peers = [s for (d, m), s in summaries.items() if d == ds and m in PEERS and s.ok()]
        if mine is None or not mine.ok() or not peers:
            continue
        best = min(peers, key=lambda s: s.median("nll"))
        delta = mine.median("nll") - best.median("nll")
        text = (
            f"- {ds}: flowserve {mine.median('nll'):.3f} vs best peer {best.method} "
            f"{best.median('nll'):.3f} ({delta:+.3f} nats/row: "
            f"{'at or below' if delta <= 0 else 'above'})"
        )
        if mine.ok()[0].excess is not None and best.median("excess") > 0:
            ratio = mine.median("excess") / best.median("excess")
            text += f"; excess {ratio:.2f}x the best peer's ({'<=' if ratio <= 0.5 else '>'} 0.5)"
        text += f"; fit {mine.median('seconds'):.1f} s for a {budget:g} s budget"
        lines.append(text)
        cli = summaries.get((ds, "flowserve-cli"))
        if cli is not None and cli.ok():
            lines.append(
                f"  - CLI: NLL {cli.median('nll'):.3f}, `flowserve train` wall "
                f"{cli.median('seconds'):.1f} s for a {budget:g} s budget (export included)"
            )
    return lines


def _leaderboards(runs: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in runs:
        if not r["leaderboard"]:
            continue
        lines.append(f"{r['dataset']}, seed {r['seed']}, {r['method']}:")
        lines.append("")
        cells = [
            " ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in row.items())
            for row in r["leaderboard"]
        ]
        lines.extend(f"- {c}" for c in cells)
        lines.append("")
    return lines


def _machine() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = [f"python {platform.python_version()}"]
    for dist in ("torch", "zuko", "nflows", "onnxruntime", "scikit-learn"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:  # a missing peer fails its own rows
            versions.append(f"{dist} missing")
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- machine: {cpu}, {os.cpu_count()} logical CPUs, {platform.system()} "
        f"{platform.release()}; load average at start {load}",
        f"- versions: {', '.join(versions)}; flowserve commit {commit or '?'}",
    ]


def _tasks(
    datasets: list[str], seeds: list[int], methods: list[str], budget: float
) -> Iterator[Task]:
    """Interleaved: for each data set and seed, every method in turn."""
    for ds in datasets:
        for seed in seeds:
            for method in methods:
                if method == "flowserve-cli" and ds not in CLI_DATASETS:
                    continue
                yield Task(ds, method, seed, budget)


def _pool(jobs: int) -> ProcessPoolExecutor:
    kwargs: dict[str, Any] = {"max_workers": jobs, "mp_context": get_context("spawn")}
    if sys.version_info >= (3, 11):
        kwargs["max_tasks_per_child"] = 1  # a fresh process per run
    return ProcessPoolExecutor(**kwargs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=60.0, help="training seconds per run (60)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (0,1,2)")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated subset")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel, 1 thread each (1)")
    p.add_argument("--quick", action="store_true", help="3 s budget, 1 seed, 2 data sets")
    p.add_argument("--note", default="", help="a line for the results file (e.g. machine load)")
    p.add_argument(
        "--out", type=Path, default=None, help="results file (results/density_<budget>s.md)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.budget, args.seeds, args.datasets = QUICK_BUDGET, "0", ",".join(QUICK_DATASETS)
    datasets = args.datasets.split(",")
    methods = args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    for ds in datasets:
        if ds not in DATASETS:
            p.error(f"unknown data set {ds!r} (known: {', '.join(DATASETS)})")
    for m in methods:
        if m not in METHODS:
            p.error(f"unknown method {m!r} (known: {', '.join(METHODS)})")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"  # inherited by every run's process

    tasks = list(_tasks(datasets, seeds, methods, args.budget))
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    header = [
        f"# Density on the user path, {args.budget:g} s budget",
        "",
        f"- command: `{command}`",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        *_machine(),
        f"- budget {args.budget:g} s per run, 1 torch thread per run, "
        f"{args.jobs} run(s) at a time; seeds {', '.join(map(str, seeds))} "
        f"(data sample/split and training seed); {len(tasks)} runs",
        f"- peers: {PEER_TRANSFORMS} transforms, conditioners 2x{PEER_HIDDEN}, "
        f"NSF {PEER_BINS} bins; Adam lr {PEER_LR:g}, cosine over the budget, "
        f"batch {PEER_BATCH}, clip {PEER_CLIP:g}, {VAL_SHARE:.0%} validation "
        f"(>= {VAL_MIN} rows), best validation weights",
        f"- flowserve: `FlowDensityEstimator(time_budget=B, n_threads=1, seed=S)`, all else "
        f"default; `flowserve train --time-budget B --threads 1` on {', '.join(CLI_DATASETS)}",
        *([f"- note: {args.note}"] if args.note else []),
    ]
    print("\n".join(header), flush=True)
    summaries: dict[tuple[str, str], Summary] = {}
    for t in tasks:
        summaries.setdefault((t.dataset, t.method), Summary(t.dataset, t.method))
    started = time.perf_counter()
    with _pool(args.jobs) as pool:
        for r in pool.map(run_one, tasks):
            summaries[(r.dataset, r.method)].runs.append(r)
            detail = r.error or (
                f"NLL {r.nll:.3f} ± {r.se:.3f}"
                + (f"  excess {r.excess:.3f}" if r.excess is not None else "")
                + f"  {_epochs(r.epochs)} epochs  {r.seconds:.1f} s (CPU share {r.cpu_share:.2f})"
                + f"  {r.params} params  {r.family}"
                + (f"  ({r.note})" if r.note else "")
            )
            print(f"  {r.dataset:14s} seed {r.seed}  {r.method:14s} {detail}", flush=True)
    total = time.perf_counter() - started

    table = _table(summaries, datasets)
    warning = _busy_warning([r for s in summaries.values() for r in s.runs])
    verdict = _verdict(summaries, datasets, args.budget)
    runs = [asdict(r) for s in summaries.values() for r in s.runs]
    body = [
        *header,
        f"- total {total / 60:.1f} min; load average at end "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "",
        *warning,
        "Medians over seeds; se is the standard error over test rows (median over seeds); "
        "excess = NLL - true cross-entropy on the same rows (paired se); vs best peer = NLL - the "
        "best peer's NLL (and the excess ratio).",
        "",
        *table,
        "",
        "flowserve (estimator, defaults + time budget) against the best peer:",
        "",
        *verdict,
        "",
        "<details><summary>every run</summary>",
        "",
        "| data set | seed | method | NLL | se | excess | epochs | s | CPU s | params | family "
        "| note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['dataset']} | {r['seed']} | {r['method']} | {_fmt(r['nll'])} | "
            f"{_fmt(r['se'])} | {_fmt(r['excess'])} | "
            f"{_epochs(r['epochs'])} | {_fmt(r['seconds'], 1)} | {_fmt(r['cpu_seconds'], 1)} | "
            f"{r['params'] or ''} | {r['family']} | {r['error'] or r['note']} |"
            for r in runs
        ),
        "",
        "</details>",
        "",
        "<details><summary>flowserve's model-selection races</summary>",
        "",
        *_leaderboards(runs),
        "</details>",
    ]
    print("\n" + "\n".join([*warning, *table, "", *verdict]))
    out = args.out or RESULTS / f"density_{args.budget:g}s.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(body) + "\n")
    print(f"\nwritten to {out} ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

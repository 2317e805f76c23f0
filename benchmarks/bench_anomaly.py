"""Anomaly detection on bundled real data: flowserve vs PyOD, and whether a flag means what it says.

Tasks (scikit-learn's bundled tables, no downloads): one class is normal, the others are the
anomalies. Each seed splits the normal rows into a training part (45%), a calibration part (30%)
and a test part (25%); the test set is the test normal rows plus as many anomalies (at most),
drawn at random. Every detector trains on normal training rows only.

- flowserve: ``FlowDensityEstimator(time_budget=B)``, every other setting default (the family is
  chosen by the estimator), anomaly score ``-log p(x)``. ``--calibration split`` (the default)
  trains on the training part and calibrates on the calibration part with
  :class:`flowserve.artifact.Calibration`, exactly as the service does; ``--calibration
  estimator`` trains on training + calibration parts and uses the estimator's own conformal
  calibration (``est.p_values``).
- PyOD: IForest, LOF, ECOD, KDE and GMM with their defaults, on features standardized with the
  training rows' statistics, calibrated on the calibration part by the same conformal rule
  (split conformal, as the nonconform library does for PyOD detectors). With ``--calibration
  estimator``, where flowserve trains on training + calibration parts, each PyOD detector's
  AUC and AP come from a second fit on those same rows, so that every detector ranks the test
  rows after seeing the same data; its false-positive rates still come from the split fit.

Reported per task and detector: ROC AUC and average precision (median over seeds), the
false-positive rate reached on the test normal rows at requested rates of 1%, 5% and 10% (mean
over seeds: the conformal guarantee is on the expectation, ``alpha - 1/(n+1) < E[FPR] <= alpha``
for a calibration of ``n`` rows), the calibration size and fit seconds. A requested rate below
``1/(n+1)`` is unattainable and shown as ``n/a``. For each task, flowserve's AUC relative to the
best PyOD detector of the same run. Detectors run interleaved (for each task and seed, each in
turn), one thread each.

Usage::

    python benchmarks/bench_anomaly.py                       # 4 tasks x 3 seeds, 10 s budget
    python benchmarks/bench_anomaly.py --seeds 5 --budget 30
    python benchmarks/bench_anomaly.py --calibration estimator \
        --out benchmarks/results/anomaly_estimator.md

Needs ``pyod`` and ``scikit-learn`` (``pip install -e ".[bench]"``). The table is printed
and written to ``--out`` (default ``benchmarks/results/anomaly.md``) with the command line and
versions.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

__all__ = ["DETECTORS", "RATES", "TASKS", "Task", "load_task", "main", "run_task"]

RATES = (0.01, 0.05, 0.10)
PYOD = ("IForest", "LOF", "ECOD", "KDE", "GMM")
DETECTORS = ("flowserve", *PYOD)


@dataclass(frozen=True)
class Task:
    """A table, which class is normal, and how its features are prepared."""

    name: str
    loader: str
    normal: int
    dequantize: bool = False


TASKS = {
    "breast_cancer": Task("breast_cancer", "load_breast_cancer", normal=1),  # benign
    "wine": Task("wine", "load_wine", normal=1),
    "digits0": Task("digits0", "load_digits", normal=0, dequantize=True),
    "digits1": Task("digits1", "load_digits", normal=1, dequantize=True),
}


def load_task(task: Task) -> tuple[np.ndarray, np.ndarray]:
    """``(normal rows, anomaly rows)`` as float64; integer pixels get uniform dequantization
    noise (fixed seed) so every detector sees a bounded density."""
    import sklearn.datasets

    x, y = getattr(sklearn.datasets, task.loader)(return_X_y=True)
    x = np.asarray(x, dtype=np.float64)
    if task.dequantize:
        x = x + np.random.default_rng(1234).uniform(0.0, 1.0, size=x.shape)
    return x[y == task.normal], x[y != task.normal]


@dataclass
class Split:
    train: np.ndarray
    calibration: np.ndarray
    test: np.ndarray
    is_anomaly: np.ndarray  # of the test rows


def split(normal: np.ndarray, anomalies: np.ndarray, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(normal))
    n_train, n_cal = int(0.45 * len(normal)), int(0.30 * len(normal))
    train = normal[order[:n_train]]
    cal = normal[order[n_train : n_train + n_cal]]
    test_normal = normal[order[n_train + n_cal :]]
    picked = anomalies[rng.permutation(len(anomalies))[: len(test_normal)]]
    test = np.concatenate([test_normal, picked])
    labels = np.concatenate([np.zeros(len(test_normal), bool), np.ones(len(picked), bool)])
    # Columns constant on the training rows carry no density (digits' border pixels).
    keep = np.ptp(train, axis=0) > 0
    return Split(train[:, keep], cal[:, keep], test[:, keep], labels)


@dataclass
class Outcome:
    """One detector on one task and seed."""

    auc: float
    ap: float
    fpr: dict[float, float | None]  # requested rate -> rate reached (None: unattainable)
    n_cal: int
    seconds: float
    note: str = ""


def _conformal_fpr(cal_scores: np.ndarray, normal_scores: np.ndarray) -> dict:
    """Flag rate on test normal rows at each requested rate: flag <=> p-value <= rate."""
    from flowserve.artifact import Calibration

    cal = Calibration.from_log_probs(-cal_scores, default_fpr=0.5)
    p = cal.p_values(-normal_scores)
    return {a: (float(np.mean(p <= a)) if a >= cal.min_fpr else None) for a in RATES}


def _metrics(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    s = np.nan_to_num(scores, nan=np.inf, posinf=1e300, neginf=-1e300)
    return float(roc_auc_score(labels, s)), float(average_precision_score(labels, s))


def run_flowserve(data: Split, seed: int, budget: float, calibration: str) -> Outcome:
    from flowserve.models.estimator import FlowDensityEstimator

    start = time.perf_counter()
    est = FlowDensityEstimator(time_budget=budget, seed=seed, n_threads=1)
    if calibration == "estimator":
        est.fit(np.concatenate([data.train, data.calibration]).astype(np.float32))
        seconds = time.perf_counter() - start
        cal = est.calibration_
        p = est.p_values(data.test[~data.is_anomaly].astype(np.float32))
        fpr = {a: (float(np.mean(p <= a)) if a >= cal.min_fpr else None) for a in RATES}
        n_cal = cal.n_rows
        note = f"{est.family_}, {cal.method}"
    else:
        est.fit(data.train.astype(np.float32))
        seconds = time.perf_counter() - start
        cal_scores = -est.score_samples(data.calibration.astype(np.float32))
        fpr = _conformal_fpr(cal_scores, -est.score_samples(data.test[~data.is_anomaly]))
        n_cal = len(data.calibration)
        note = f"{est.family_}, split"
    auc, ap = _metrics(-est.score_samples(data.test.astype(np.float32)), data.is_anomaly)
    return Outcome(auc, ap, fpr, n_cal, seconds, note)


def _pyod(name: str, seed: int) -> Any:
    from pyod.models.ecod import ECOD
    from pyod.models.gmm import GMM
    from pyod.models.iforest import IForest
    from pyod.models.kde import KDE
    from pyod.models.lof import LOF

    makers: dict[str, Callable[[], Any]] = {
        "IForest": lambda: IForest(random_state=seed, n_jobs=1),
        "LOF": lambda: LOF(n_jobs=1),
        "ECOD": lambda: ECOD(n_jobs=1),
        "KDE": lambda: KDE(),
        "GMM": lambda: GMM(random_state=seed),
    }
    return makers[name]()


def _fit_pyod(name: str, rows: np.ndarray, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """A PyOD detector fit on ``rows`` (standardized with their statistics): its scorer."""
    mean, scale = rows.mean(axis=0), rows.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    detector = _pyod(name, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detector.fit((rows - mean) / scale)

    def score(a: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return detector.decision_function((a - mean) / scale)

    return score


def run_pyod(name: str, data: Split, seed: int, calibration: str = "split") -> Outcome:
    start = time.perf_counter()
    score = _fit_pyod(name, data.train, seed)
    seconds = time.perf_counter() - start
    scores = score(data.test)
    fpr = _conformal_fpr(score(data.calibration), scores[~data.is_anomaly])
    if calibration == "estimator":  # rank after seeing the rows flowserve trained on
        scores = _fit_pyod(name, np.concatenate([data.train, data.calibration]), seed)(data.test)
    auc, ap = _metrics(scores, data.is_anomaly)
    return Outcome(auc, ap, fpr, len(data.calibration), seconds)


def run_task(task: Task, seeds: list[int], budget: float, calibration: str) -> dict:
    """Every detector on every seed of ``task``, interleaved: ``{detector: [Outcome, ...]}``."""
    normal, anomalies = load_task(task)
    results: dict[str, list[Outcome]] = {d: [] for d in DETECTORS}
    for seed in seeds:
        data = split(normal, anomalies, seed)
        for name in DETECTORS:
            if name == "flowserve":
                out = run_flowserve(data, seed, budget, calibration)
            else:
                out = run_pyod(name, data, seed, calibration)
            results[name].append(out)
            print(
                f"  {task.name:14s} seed {seed} {name:9s} AUC {out.auc:.3f} AP {out.ap:.3f} "
                + " ".join(_fmt_rate(out.fpr[a]) for a in RATES)
                + f" ({out.seconds:.1f} s{', ' + out.note if out.note else ''})",
                file=sys.stderr,
                flush=True,
            )
    return results


def _fmt_rate(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _mean_rate(outcomes: list[Outcome], rate: float) -> float | None:
    values = [o.fpr[rate] for o in outcomes]
    return None if any(v is None for v in values) else float(np.mean(values))


@dataclass
class Table:
    lines: list[str] = field(default_factory=list)

    def row(self, *cells: object) -> None:
        self.lines.append("| " + " | ".join(str(c) for c in cells) + " |")


def report(all_results: dict[str, dict], args: argparse.Namespace) -> str:
    t = Table()
    header = ["task", "detector", "ROC AUC", "AP", *(f"FPR @ {int(100 * a)}%" for a in RATES)]
    header += ["n cal", "fit s", "AUC / best PyOD"]
    t.row(*header)
    t.row(*["---"] * len(header))
    averages: dict[str, dict[str, list[float]]] = {d: {} for d in DETECTORS}
    for task_name, results in all_results.items():
        medians = {d: statistics.median(o.auc for o in results[d]) for d in DETECTORS}
        best_pyod = max(medians[d] for d in PYOD)
        for name in DETECTORS:
            outs = results[name]
            ap = statistics.median(o.ap for o in outs)
            rates = [_mean_rate(outs, a) for a in RATES]
            avg = averages[name]
            avg.setdefault("auc", []).append(medians[name])
            avg.setdefault("ap", []).append(ap)
            for a, r in zip(RATES, rates, strict=True):
                if r is not None:
                    avg.setdefault(f"fpr{a}", []).append(r)
            t.row(
                task_name,
                name + (f" ({outs[0].note})" if outs[0].note else ""),
                f"{medians[name]:.3f}",
                f"{ap:.3f}",
                *(_fmt_rate(r) for r in rates),
                statistics.median(o.n_cal for o in outs),
                f"{statistics.median(o.seconds for o in outs):.1f}",
                f"{medians[name] / best_pyod:.3f}",
            )
    t.row(*[""] * len(header))
    best_avg = max(float(np.mean(averages[d]["auc"])) for d in PYOD)
    for name in DETECTORS:
        avg = averages[name]
        mean_auc = float(np.mean(avg["auc"]))
        t.row(
            "**average**",
            name,
            f"{mean_auc:.3f}",
            f"{float(np.mean(avg['ap'])):.3f}",
            *(
                f"{100 * float(np.mean(avg[f'fpr{a}'])):.1f}% ({len(avg[f'fpr{a}'])} tasks)"
                if avg.get(f"fpr{a}")
                else "n/a"
                for a in RATES
            ),
            "",
            "",
            f"{mean_auc / best_avg:.3f}",
        )
    versions = {}
    for dist in ("torch", "onnxruntime", "pyod", "scikit-learn", "numpy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    head = [
        f"# Anomaly detection: flowserve vs PyOD ({args.calibration} calibration)",
        "",
        f"- command: `python benchmarks/bench_anomaly.py {shlex.join(sys.argv[1:])}`",
        f"- when: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs (shared), one thread per detector",
        f"- versions: {', '.join(f'{k} {v}' for k, v in versions.items())}",
        f"- seeds: {args.seeds}; flowserve time budget {args.budget:g} s per fit",
        "- AUC and AP: median over seeds; FPR: mean over seeds of the share of test normal rows "
        "flagged at the requested rate (n/a: below the attainable 1/(n+1)); averages over the "
        "tasks where the rate is attainable. AUC / best PyOD: against the best PyOD detector "
        "of the same run (per task; on average for the average rows).",
        "",
    ]
    return "\n".join([*head, *t.lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    parser.add_argument("--seeds", type=int, default=3, help="random splits per task")
    parser.add_argument("--budget", type=float, default=10.0, help="flowserve fit seconds")
    parser.add_argument("--calibration", choices=["split", "estimator"], default="split")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/anomaly.md"))
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    results = {}
    for name in args.tasks.split(","):
        print(f"{name}:", file=sys.stderr, flush=True)
        results[name] = run_task(
            TASKS[name], list(range(args.seeds)), args.budget, args.calibration
        )
    text = report(results, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

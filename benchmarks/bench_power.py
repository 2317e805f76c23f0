"""A/B: flowserve's default fit with and without the Yeo-Johnson power transform.

    python benchmarks/bench_power.py --budget 60 --seeds 0 --jobs 2

Each data set of ``bench_density.py`` (same draws and splits) is fitted twice per seed by
``FlowDensityEstimator(time_budget=B, n_threads=1, seed=S)``, once with ``power_transform="auto"``
(the default) and once with ``"none"``; the two fits of a pair run at the same time (``--jobs 2``)
so that they share the machine's load. Printed per data set: test NLL (nats per row) of both,
their difference (auto - none; negative: the transform helps), the excess over the true density
where it is known, the columns transformed and the families the race chose.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
POLICIES = ("auto", "none")


def run_one(name: str, policy: str, seed: int, budget: float) -> dict[str, Any]:
    """One fit in this process: test NLL, excess, transformed columns, family, seconds."""
    import numpy as np

    sys.path.insert(0, str(HERE))
    import bench_density as bd

    from flowserve.models.estimator import FlowDensityEstimator

    data = bd.load_dataset(name, seed)
    start = time.perf_counter()
    est = FlowDensityEstimator(
        time_budget=budget, n_threads=1, seed=seed, power_transform=policy
    ).fit(data.train)
    seconds = time.perf_counter() - start
    lp = est.score_samples(data.test).astype(np.float64)
    power = est.flow_.preprocess.power_spec()
    return {
        "data": name,
        "policy": policy,
        "seed": seed,
        "nll": float(-lp.mean()),
        "excess": None if data.true_log_prob is None else float((data.true_log_prob - lp).mean()),
        "transformed": 0 if power is None else int((power.lambdas != 1.0).sum()),
        "dim": int(data.train.shape[1]),
        "family": bd._family_label(est, est.leaderboard_),
        "seconds": seconds,
    }


def _child(name: str, policy: str, seed: int, budget: float) -> dict[str, Any]:
    """``run_one`` in a fresh interpreter (one thread, nothing shared with the other fit)."""
    cmd = [sys.executable, __file__, "--one", name, policy, str(seed), str(budget)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def report(results: list[dict[str, Any]], datasets: list[str]) -> str:
    lines = [
        "| data set | columns transformed | NLL auto | NLL none | auto - none (per seed) | "
        "excess auto | excess none | family auto / none |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in datasets:
        rows = {p: [r for r in results if r["data"] == name and r["policy"] == p] for p in POLICIES}
        if not rows["auto"] or not rows["none"]:
            continue
        med = {p: statistics.median(r["nll"] for r in rows[p]) for p in POLICIES}
        exc = {
            p: (
                statistics.median(r["excess"] for r in rows[p])
                if rows[p][0]["excess"] is not None
                else None
            )
            for p in POLICIES
        }
        diffs = [a["nll"] - b["nll"] for a, b in zip(rows["auto"], rows["none"], strict=True)]
        lines.append(
            f"| {name} | {rows['auto'][0]['transformed']} of {rows['auto'][0]['dim']} | "
            f"{med['auto']:.3f} | {med['none']:.3f} | "
            f"{', '.join(f'{d:+.3f}' for d in diffs)} | {_fmt(exc['auto'])} | "
            f"{_fmt(exc['none'])} | {rows['auto'][0]['family']} / {rows['none'][0]['family']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(HERE))
    import bench_density as bd

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=60.0)
    p.add_argument("--seeds", default="0")
    p.add_argument("--datasets", default=",".join(bd.DATASETS))
    p.add_argument("--jobs", type=int, default=2, help="fits at a time (2: a pair together)")
    p.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        name, policy, seed, budget = args.one
        print(json.dumps(run_one(name, policy, int(seed), float(budget))))
        return 0
    datasets = args.datasets.split(",")
    tasks = [
        (d, policy, int(s), args.budget)
        for d in datasets
        for s in args.seeds.split(",")
        for policy in POLICIES
    ]
    results = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for result in pool.map(lambda t: _child(*t), tasks):
            print(json.dumps(result), file=sys.stderr, flush=True)
            results.append(result)
    print(f"budget {args.budget:g} s, seeds {args.seeds}, {args.jobs} fit(s) at a time\n")
    print(report(results, datasets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

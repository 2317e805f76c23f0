"""What cross-conformal scoring costs per call: ``/score``'s graph against ``/log_prob``'s.

A cross-fitted model (a small table) answers ``/score`` from its ``score`` graph, which holds
the served model and its K fold models, and ``/log_prob`` from ``forward.onnx``. This fits such
a model with the estimator's defaults on a bundled table, exports it, and times both graphs as
the service runs them (``FlowModel.score_log_probs`` and ``FlowModel.log_prob``), interleaved,
at several batch sizes. Prints medians, the range over repeats, and the ratio score / log_prob.

    python benchmarks/bench_score_graph.py [--budget 10] [--repeats 7] [--rows 1,32,1024]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _per_call(fn: Callable[[], object], min_time: float = 0.05) -> float:
    """Seconds per call, averaged over enough calls to last ``min_time``."""
    fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_time or calls < 3:
        fn()
        calls += 1
    return elapsed / calls


def _cell(times: list[float]) -> str:
    med, lo, hi = (1e6 * v for v in (statistics.median(times), min(times), max(times)))
    return f"{med:,.0f} µs ({lo:,.0f}-{hi:,.0f})"


def _ratio(times: list[float], base: list[float]) -> str:
    ratios = [t / b for t, b in zip(times, base, strict=True)]
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=10.0, help="estimator fit seconds")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rows", default="1,32,1024", help="comma-separated batch sizes")
    args = parser.parse_args(argv)

    from sklearn.datasets import load_breast_cancer

    from flowserve.models.estimator import FlowDensityEstimator
    from flowserve.service.runtime import load_flow_model

    x, y = load_breast_cancer(return_X_y=True)
    normal = x[y == 1].astype(np.float32)
    est = FlowDensityEstimator(time_budget=args.budget, seed=0, n_threads=1, progress=False)
    est.fit(normal)
    with tempfile.TemporaryDirectory() as root:
        directory = est.export(Path(root), "bc", torchscript=False).artifact_dir
        model = load_flow_model(directory)
        model.warm_up()
        cal = model.manifest.calibration
        if not model.has_score_graph:
            print(f"calibration {cal.method}: no score graph to measure")
            return 1
        print(
            f"model: {model.manifest.family} {model.manifest.hyperparameters.get('layers')} "
            f"layers, dim {model.dim}, {cal.folds} fold models, calibration n = {cal.n_rows}"
        )
        print(
            "| rows | log_prob (forward.onnx) | score graph call | score (graph + p-values) "
            "| graph / log_prob | score / log_prob |"
        )
        print("|---|---|---|---|---|---|")
        rng = np.random.default_rng(0)
        for n in (int(r) for r in args.rows.split(",")):
            rows = normal[rng.integers(0, len(normal), n)]
            lp_t, gr_t, sc_t = [], [], []
            for _ in range(args.repeats):  # interleaved
                lp_t.append(_per_call(lambda rows=rows: model.log_prob(rows)))
                gr_t.append(_per_call(lambda rows=rows: model.score_log_probs(rows)))
                sc_t.append(_per_call(lambda rows=rows: model.score(rows, cal.default_fpr)))
            cells = [_cell(t) for t in (lp_t, gr_t, sc_t)]
            print(f"| {n} | {' | '.join(cells)} | {_ratio(gr_t, lp_t)} | {_ratio(sc_t, lp_t)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

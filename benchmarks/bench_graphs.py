"""Exported ONNX graphs before and after export's optimisation pass, for every flow family.

For each family a small randomly initialised flow (dim 4, standardized, the test suite's sizes)
is exported once without the pass; the graphs are then optimised as export does
(:func:`flowserve.models.optimize.optimize_graph`). Printed per graph: node counts as exported,
as saved, and after ONNX Runtime's own session optimisation of each (what the server runs); the
median per-call time of a 1-row and a 32-row call, exported vs saved, measured interleaved in the
same process (sessions configured like the server's: 1 thread, ORT_ENABLE_ALL); and the largest
output difference between the two.

    python benchmarks/bench_graphs.py                      # every family, about 2 minutes
    python benchmarks/bench_graphs.py --families realnvp,nsf --calls 500
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from the repository root without an install
    sys.path.insert(0, str(ROOT))

from flowserve.graphs import onnx_session  # noqa: E402
from flowserve.models import build_flow  # noqa: E402
from flowserve.models.base import Standardize, StandardUniform  # noqa: E402
from flowserve.models.export import export_artifact  # noqa: E402
from flowserve.models.optimize import optimize_graph  # noqa: E402
from tests.flow_cases import VECTOR_FAMILIES  # noqa: E402

DIM = 4
FAMILIES = {"ffjord": {"hidden": 8, "hidden_layers": 2, "steps": 4}, **VECTOR_FAMILIES}


def _rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, DIM)) * [3.0, 0.5, 2.0, 1.0] + [10, -2, 0, 5]).astype(
        np.float32
    )


def _ort_nodes(path: Path) -> int:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        opts.optimized_model_filepath = str(Path(tmp) / "ort.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return len(onnx.load(opts.optimized_model_filepath).graph.node)


def _per_call_us(sessions: dict[str, object], feed: str, rows: np.ndarray, calls: int) -> dict:
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(5):  # interleaved rounds
        for key, sess in sessions.items():
            round_times = []
            for _ in range(calls):
                start = time.perf_counter()
                sess.run(None, {feed: rows})  # type: ignore[attr-defined]
                round_times.append(time.perf_counter() - start)
            times[key].append(statistics.median(round_times) * 1e6)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_family(family: str, calls: int, work: Path) -> list[dict]:
    torch.manual_seed(0)
    flow = build_flow(family, dim=DIM, **FAMILIES[family])
    train, holdout = _rows(300, 1), _rows(200, 2)
    if isinstance(flow.base, StandardUniform):
        holdout = np.random.default_rng(2).uniform(flow.base.low, flow.base.high, (200, DIM))
        holdout = holdout.astype(np.float32)
    else:
        mean, scale = torch.from_numpy(train.mean(0)), torch.from_numpy(train.std(0))
        flow.set_preprocess(Standardize(mean, scale))
    out = work / family / "1"
    export_artifact(
        flow, out, name="m", version=1, feature_names=[f"f{i}" for i in range(DIM)],
        holdout=holdout, torchscript=False, optimize=False,
    )  # fmt: skip
    results = []
    x = holdout[:32]
    z = onnx_session(out / "forward.onnx").run(["z"], {"x": x})[0]
    for graph, feed, rows in (("forward", "x", x), ("inverse", "z", z)):
        exported = out / f"{graph}.onnx"
        saved = out / f"{graph}.opt.onnx"
        shutil.copy(exported, saved)
        counts = optimize_graph(saved, rows)
        sessions = {"exported": onnx_session(exported), "saved": onnx_session(saved)}
        diff = max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(
                sessions["exported"].run(None, {feed: rows}),
                sessions["saved"].run(None, {feed: rows}),
                strict=True,
            )
        )
        one = _per_call_us(sessions, feed, rows[:1], calls)
        many = _per_call_us(sessions, feed, rows, calls)
        results.append(
            {
                "family": family,
                "graph": graph,
                **counts,
                "ort_exported": _ort_nodes(exported),
                "ort_saved": _ort_nodes(saved),
                "us1_exported": one["exported"],
                "us1_saved": one["saved"],
                "us32_exported": many["exported"],
                "us32_saved": many["saved"],
                "max_diff": diff,
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(sorted(FAMILIES)))
    parser.add_argument("--calls", type=int, default=200, help="calls per timing round")
    args = parser.parse_args()
    print(
        "| family | graph | nodes exported -> saved | after ORT's optimisation | "
        "1 row, us (ratio) | 32 rows, us (ratio) | max |diff| |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            for r in bench_family(family, args.calls, Path(tmp)):
                print(
                    f"| {r['family']} | {r['graph']} | {r['exported']} -> {r['saved']} | "
                    f"{r['ort_exported']} -> {r['ort_saved']} | "
                    f"{r['us1_exported']:.0f} -> {r['us1_saved']:.0f} "
                    f"({r['us1_saved'] / r['us1_exported']:.2f}) | "
                    f"{r['us32_exported']:.0f} -> {r['us32_saved']:.0f} "
                    f"({r['us32_saved'] / r['us32_exported']:.2f}) | {r['max_diff']:.1e} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()

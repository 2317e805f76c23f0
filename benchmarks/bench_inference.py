"""In-process inference: ONNX Runtime vs torch eager on the same model and the same rows.

Prints, per family and batch size, the median time of each and the ratio torch / ONNX (above 1
means ONNX Runtime is faster). Both sides use the same thread count, measured in the same run.

    python benchmarks/bench_inference.py [--families realnvp,nsf,maf] [--dim 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from flowserve.artifact import FORWARD_GRAPH, INVERSE_GRAPH
from flowserve.models import Standardize, build_flow
from flowserve.models.export import export_artifact


def median_seconds(fn: Callable[[], object], repeats: int, min_time: float = 0.05) -> float:
    """Median over ``repeats`` measurements, each averaging enough calls to last ``min_time``."""
    fn()
    calls = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - t0 >= min_time or calls >= 1 << 16:
            break
        calls *= 2
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) / calls)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="realnvp,glow,maf,nsf,planar")
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--batches", default="1,1000")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    rng = np.random.default_rng(0)
    print(f"threads={args.threads} dim={args.dim} repeats={args.repeats} (medians)")
    header = ("family", "direction", "batch", "torch ms", "onnx ms", "torch/onnx")
    print("{:10} {:9} {:>6} {:>10} {:>10} {:>11}".format(*header))
    batches = [int(b) for b in args.batches.split(",")]
    for family in args.families.split(","):
        torch.manual_seed(0)
        flow = build_flow(family, dim=args.dim)
        # As many rows as the largest batch: a batch of 100000 really has 100000 rows.
        data = rng.standard_normal((max(*batches, 256), args.dim)).astype(np.float32)
        flow.set_preprocess(Standardize(torch.zeros(args.dim), torch.ones(args.dim))).eval()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / family / "1"
            out.mkdir(parents=True)
            export_artifact(
                flow,
                out,
                name=family,
                version=1,
                feature_names=[f"f{i}" for i in range(args.dim)],
                holdout=data[:256],
                torchscript=False,
            )
            fwd = ort.InferenceSession(str(out / FORWARD_GRAPH), opts)
            inv = ort.InferenceSession(str(out / INVERSE_GRAPH), opts)
            for batch in batches:
                x = data[:batch]
                assert len(x) == batch
                xt = torch.from_numpy(x)
                z = fwd.run(None, {"x": x})[0]
                zt = torch.from_numpy(z)
                with torch.no_grad():
                    cases = {
                        "forward": (partial(flow, xt), partial(fwd.run, None, {"x": x})),
                        "inverse": (partial(flow.decode, zt), partial(inv.run, None, {"z": z})),
                    }
                    for direction, (torch_fn, onnx_fn) in cases.items():
                        t_torch = median_seconds(torch_fn, args.repeats)
                        t_onnx = median_seconds(onnx_fn, args.repeats)
                        print(
                            f"{family:10} {direction:9} {batch:>6} {1e3 * t_torch:>10.3f} "
                            f"{1e3 * t_onnx:>10.3f} {t_torch / t_onnx:>10.2f}x"
                        )


if __name__ == "__main__":
    main()

"""Bits/dim of the image flows on scikit-learn's 8x8 digits (17 grey levels), at one budget.

Every model sees the same train/validation/test split (flowserve's own, seeded) and the same
wall-clock training budget; all numbers are test bits per dimension (lower is better):

- ``categorical``: independent per-pixel categorical over the 17 levels (add-one smoothing): an
  exact discrete likelihood, the baseline every ratio is against;
- ``glow_image`` / ``realnvp_image``: ``flowserve.models.training.train`` (uniform
  dequantization), the manifest's ``bits_per_dim`` (the dequantized bound), and whether
  ``decode(encode(x))`` rounds back to ``x`` on every test image through the served ONNX graphs;
- ``zuko_maf``: a zuko MAF on the same dequantized pixels (scaled to ``[0, 1)``, its log-det
  included), trained with Adam for the same budget (best validation epoch kept), scored by the
  same dequantized bound.

Seeds run interleaved (each seed trains every model in turn); the table shows the median over
seeds and the ratio to the categorical baseline of the same seed.

Run: ``nice python benchmarks/bench_digits.py --budget 60 --seeds 3`` (about
``seeds x 3 x budget`` seconds plus exports).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from flowserve.models.data import PreparedData, prepare_data
from flowserve.models.training import train
from flowserve.service.runtime import load_flow_model

K = 17
D = 64


def categorical_bits(prep: PreparedData) -> float:
    """Test bits/dim of independent per-pixel categoricals fitted on train (+1 smoothing)."""
    counts = np.ones((D, K))
    for j in range(D):
        counts[j] += np.bincount(prep.train[:, j].astype(int), minlength=K)
    logp = np.log(counts / counts.sum(axis=1, keepdims=True))
    test = prep.test.astype(int)
    nll = -logp[np.arange(D)[None, :], test].sum(axis=1).mean()
    return float(nll / (D * math.log(2)))


def flowserve_bits(x: np.ndarray, family: str, budget: float, seed: int, out: Path) -> dict:
    result = train(
        x,
        family=family,
        name=f"{family}-{seed}",
        out=out,
        time_budget=budget,
        calibration="split",  # the whole budget trains the model, as for the other models
        seed=seed,
        progress=False,
        torchscript=False,
    )
    assert result is not None
    prep = prepare_data(x, data_kind="image", seed=seed)
    model = load_flow_model(result.artifact_dir)
    z, _ = model.forward(prep.test)
    exact = bool(np.array_equal(np.rint(model.decode(z)), prep.test))
    return {"bits": result.manifest.metrics.bits_per_dim, "exact": exact}


def zuko_bits(prep: PreparedData, budget: float, seed: int) -> float:
    import zuko

    torch.manual_seed(seed)
    flow = zuko.flows.MAF(features=D, transforms=3, hidden_features=[256, 256])
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    train_x = torch.from_numpy(prep.train)
    gen = torch.Generator().manual_seed(seed)

    def nll(x: torch.Tensor) -> torch.Tensor:
        # v = x + u in [0, K); y = v / K in [0, 1): log p_x(v) = log p_y(y) - D log K.
        v = x + torch.rand(x.shape, generator=gen)
        return -(flow().log_prob(v / K) - D * math.log(K))

    val = torch.from_numpy(prep.val)
    best, best_state = math.inf, copy.deepcopy(flow.state_dict())
    start = time.perf_counter()
    while time.perf_counter() - start < budget:
        for idx in torch.randperm(len(train_x), generator=gen).split(128):
            loss = nll(train_x[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if time.perf_counter() - start >= budget:
                break
        with torch.no_grad():  # keep the best epoch on validation, as flowserve's loop does
            score = float(nll(val).mean())
        if score < best:
            best, best_state = score, copy.deepcopy(flow.state_dict())
    flow.load_state_dict(best_state)
    with torch.no_grad():
        test = torch.from_numpy(prep.test)
        total = float(torch.stack([nll(test).mean() for _ in range(4)]).mean())
    return total / (D * math.log(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per model")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = load_digits().data.astype(np.float32)
    rows: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    exact: dict[str, list[bool]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            prep = prepare_data(x, data_kind="image", seed=seed)
            base = categorical_bits(prep)
            got = {"categorical": base}
            for family in ("glow_image", "realnvp_image"):
                r = flowserve_bits(x, family, args.budget, seed, Path(tmp))
                got[family] = r["bits"]
                exact.setdefault(family, []).append(r["exact"])
            got["zuko_maf"] = zuko_bits(prep, args.budget, seed)
            for name, bits in got.items():
                rows.setdefault(name, []).append(bits)
                ratios.setdefault(name, []).append(bits / base)
            print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in got.items()), flush=True)
    print(f"\n8x8 digits, {K} levels, budget {args.budget:g} s per model, {args.seeds} seeds")
    print(f"{'model':<16}{'median bits/dim':>16}{'range':>18}{'vs categorical':>16}  round trip")
    for name, values in rows.items():
        span = f"{min(values):.3f}-{max(values):.3f}"
        trip = "" if name not in exact else ("exact" if all(exact[name]) else "NOT exact")
        ratio = statistics.median(ratios[name])
        print(f"{name:<16}{statistics.median(values):>16.3f}{span:>18}{ratio:>16.3f}  {trip}")


if __name__ == "__main__":
    main()

"""Library benchmark: flowserve's bare flow families against peer libraries, one training loop.

This trains the bare flows in its own loop, never the defaults a user gets; the user path (the
estimator and ``flowserve train`` with a time budget) is ``benchmarks/bench_density.py``.

Every model (flowserve ``realnvp``, ``maf``, ``nsf``, ``nsf_ar``, ``glow``; zuko's RealNVP, MAF,
NSF and coupling NSF; nflows' MAF and autoregressive NSF when installed) is trained by the same
plain torch loop: Adam, the same number of steps, batch size, cosine learning-rate schedule
(per step) and gradient-norm clipping, on the same standardized training rows, with the same
mini-batch order for a given seed. The score is the test NLL in nats per row (standardized
units), the median over seeds.

Data sets (all generated here, no downloads; ``breast_cancer`` is bundled with scikit-learn):

- ``gmm2``: a 2-D mixture of 8 Gaussians on a ring, density known in closed form;
- ``ica8``: 8-D, independent bimodal and skewed (Gumbel) sources mixed by a fixed random matrix,
  density known in closed form by change of variables;
- ``moons``: two moons (2-D), ``flowserve.models.datasets.two_moons``;
- ``sensors``: the project's 4-D sensor set, ``flowserve.models.datasets.sensors``;
- ``breast_cancer``: scikit-learn's 30-D set (569 rows), default mode only.

The baseline of each data set is the true cross-entropy ``mean(-log p_true)`` of its test rows
where the density is known (the difference is then an estimate of ``KL(p_true || model)``),
else the best peer-library model in the same run.

Usage::

    python benchmarks/bench_library_density.py --quick   # 1 seed, few steps: minutes on 2 cores
    python benchmarks/bench_library_density.py           # 3 seeds, larger budget
    python benchmarks/bench_library_density.py --datasets moons --models flowserve/maf,zuko/maf

Peers come from the ``bench`` extra (``pip install -e ".[bench]"``); a missing peer library is
reported and skipped.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from flowserve.models import build_flow
from flowserve.models.datasets import sensors, two_moons
from flowserve.models.training import data_dependent_init

__all__ = ["Budget", "DataSet", "main", "make_datasets", "make_models", "train_and_score"]

HIDDEN = 64  # conditioner width for every model
AR_LAYERS = 5  # autoregressive / spline transforms
COUPLING_LAYERS = 8  # affine coupling layers (each transforms half of the features)
BINS = 8
SPLINE_BOUND = 5.0


@dataclass(frozen=True)
class Budget:
    """The training budget every model gets."""

    steps: int
    batch: int
    lr: float
    clip: float
    seeds: int


@dataclass
class DataSet:
    """Standardized train/test rows; ``true_nll`` is the test cross-entropy in the same
    (standardized) units when the density is known."""

    name: str
    train: np.ndarray
    test: np.ndarray
    true_nll: float | None


# --------------------------------------------------------------------------- data sets


def _gmm2(
    n: int, rng: np.random.Generator
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    k, radius, sd = 8, 3.0, 0.35
    angles = 2 * np.pi * np.arange(k) / k
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    comp = rng.integers(0, k, n)
    x = means[comp] + sd * rng.standard_normal((n, 2))

    def log_p(rows: np.ndarray) -> np.ndarray:
        d2 = ((rows[:, None, :] - means[None]) ** 2).sum(-1)
        lc = -0.5 * d2 / sd**2 - np.log(2 * np.pi * sd**2) - np.log(k)
        return np.logaddexp.reduce(lc, axis=1)

    return x, log_p


def _ica8(
    n: int, rng: np.random.Generator
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    d, mu, sd = 8, 1.5, 0.5
    # A fixed, well-conditioned mixing matrix (its own seed, so every n gives the same density).
    mix = np.random.default_rng(1234).normal(size=(d, d)) / math.sqrt(d) + np.eye(d)
    unmix = np.linalg.inv(mix)
    _, logdet = np.linalg.slogdet(mix)
    bimodal = np.arange(d) % 2 == 0
    s = np.where(
        bimodal,
        np.where(rng.random((n, d)) < 0.5, -mu, mu) + sd * rng.standard_normal((n, d)),
        rng.gumbel(size=(n, d)),
    )
    x = s @ mix.T

    def log_p(rows: np.ndarray) -> np.ndarray:
        u = rows @ unmix.T
        norm = -0.5 * np.log(2 * np.pi * sd**2)
        lp_bi = np.logaddexp(
            -0.5 * ((u - mu) / sd) ** 2 + norm, -0.5 * ((u + mu) / sd) ** 2 + norm
        ) - np.log(2)
        lp_gu = -u - np.exp(-u)
        return np.where(bimodal, lp_bi, lp_gu).sum(1) - logdet

    return x, log_p


def _standardize(name: str, train: np.ndarray, test: np.ndarray, log_p: Callable | None) -> DataSet:
    mean, scale = train.mean(0), train.std(0)
    true_nll = None
    if log_p is not None:
        # -log p_std(y) = -log p(x) - sum(log scale) for y = (x - mean) / scale.
        true_nll = float(-log_p(test).mean() - np.log(scale).sum())
    f = lambda a: ((a - mean) / scale).astype(np.float32)  # noqa: E731
    return DataSet(name, f(train), f(test), true_nll)


def make_datasets(names: list[str], n_train: int, n_test: int) -> list[DataSet]:
    """Generate (data seed 0) and standardize the named data sets."""
    out = []
    for name in names:
        rng = np.random.default_rng(0)
        if name in ("gmm2", "ica8"):
            x, log_p = (_gmm2 if name == "gmm2" else _ica8)(n_train + n_test, rng)
            out.append(_standardize(name, x[:n_train], x[n_train:], log_p))
        elif name == "moons":
            x = two_moons(n_train + n_test, seed=0).to_numpy().astype(np.float64)
            out.append(_standardize(name, x[:n_train], x[n_train:], None))
        elif name == "sensors":
            x = sensors(n_train + n_test, seed=0).to_numpy().astype(np.float64)
            out.append(_standardize(name, x[:n_train], x[n_train:], None))
        elif name == "breast_cancer":
            from sklearn.datasets import load_breast_cancer

            x = load_breast_cancer().data.astype(np.float64)
            x = x[rng.permutation(len(x))]
            cut = int(0.7 * len(x))
            out.append(_standardize(name, x[:cut], x[cut:], None))
        else:
            raise ValueError(f"unknown data set {name!r}")
    return out


# --------------------------------------------------------------------------- models


class LogProb(nn.Module):
    """A uniform ``log_prob(x) -> [batch]`` view of a model from any library."""

    def __init__(self, module: nn.Module, fn: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        self.module, self.fn = module, fn

    def log_prob(self, x: Tensor) -> Tensor:
        return self.fn(self.module, x)


ModelFactory = Callable[[int], LogProb]


def _flowserve(family: str, **hp: int | float) -> ModelFactory:
    return lambda dim: LogProb(build_flow(family, dim=dim, **hp), lambda m, x: m.log_prob(x))


def _zuko(kind: str, **hp: object) -> ModelFactory:
    def make(dim: int) -> LogProb:
        import zuko

        flow = getattr(zuko.flows, kind)(dim, **hp)
        return LogProb(flow, lambda m, x: m().log_prob(x))

    return make


def _nflows(kind: str) -> ModelFactory:
    def make(dim: int) -> LogProb:
        from nflows.distributions import StandardNormal
        from nflows.flows import Flow
        from nflows.transforms import (
            CompositeTransform,
            MaskedAffineAutoregressiveTransform,
            MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
            ReversePermutation,
        )

        layers = []
        for i in range(AR_LAYERS):
            if i:
                layers.append(ReversePermutation(dim))
            # nflows' MADE without residual blocks has num_blocks + 1 hidden layers.
            common = {"hidden_features": HIDDEN, "num_blocks": 1, "use_residual_blocks": False}
            if kind == "maf":
                layers.append(MaskedAffineAutoregressiveTransform(dim, **common))
            else:
                layers.append(
                    MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                        dim, num_bins=BINS, tails="linear", tail_bound=SPLINE_BOUND, **common
                    )
                )
        flow = Flow(CompositeTransform(layers), StandardNormal([dim]))
        return LogProb(flow, lambda m, x: m.log_prob(x))

    return make


def make_models() -> dict[str, ModelFactory]:
    """Every model by ``library/family``, all with conditioners of two hidden layers of
    :data:`HIDDEN` units; parameter counts are printed so sizes can be compared."""
    z_hidden = (HIDDEN, HIDDEN)
    return {
        "flowserve/realnvp": _flowserve("realnvp", layers=COUPLING_LAYERS, hidden=HIDDEN),
        "flowserve/glow": _flowserve("glow", layers=COUPLING_LAYERS, hidden=HIDDEN),
        "flowserve/maf": _flowserve("maf", layers=AR_LAYERS, hidden=HIDDEN),
        "flowserve/nsf": _flowserve("nsf", layers=AR_LAYERS, hidden=HIDDEN, bins=BINS),
        "flowserve/nsf_ar": _flowserve("nsf_ar", layers=AR_LAYERS, hidden=HIDDEN, bins=BINS),
        "zuko/realnvp": _zuko("RealNVP", transforms=COUPLING_LAYERS, hidden_features=z_hidden),
        "zuko/maf": _zuko("MAF", transforms=AR_LAYERS, hidden_features=z_hidden),
        "zuko/nsf": _zuko(
            "NSF", bins=BINS, transforms=AR_LAYERS, passes=2, hidden_features=z_hidden
        ),
        "zuko/nsf_ar": _zuko("NSF", bins=BINS, transforms=AR_LAYERS, hidden_features=z_hidden),
        "nflows/maf": _nflows("maf"),
        "nflows/nsf_ar": _nflows("nsf_ar"),
    }


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- training


@torch.no_grad()
def heldout_nll(model: LogProb, rows: np.ndarray) -> float:
    model.eval()
    x = torch.from_numpy(rows)
    return float(-torch.cat([model.log_prob(b) for b in x.split(4096)]).double().mean())


def train_and_score(
    factory: ModelFactory, data: DataSet, budget: Budget, seed: int
) -> tuple[float, int]:
    """Build with ``seed``, train for the budget, return (test NLL, parameter count)."""
    torch.manual_seed(seed)
    model = factory(data.train.shape[1])
    if isinstance(model.module, nn.Module) and hasattr(model.module, "family"):
        data_dependent_init(model.module, data.train)  # Glow's actnorm; a no-op otherwise
    opt = torch.optim.Adam(model.parameters(), lr=budget.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=budget.steps)
    train = torch.from_numpy(data.train)
    gen = torch.Generator().manual_seed(seed)  # same batches for every model of this seed
    model.train()
    for _ in range(budget.steps):
        idx = torch.randint(0, len(train), (budget.batch,), generator=gen)
        loss = -model.log_prob(train[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), budget.clip)
        opt.step()
        sched.step()
    return heldout_nll(model, data.test), n_params(model)


# --------------------------------------------------------------------------- main


def _available(models: dict[str, ModelFactory]) -> dict[str, ModelFactory]:
    ok = {}
    for name, factory in models.items():
        try:
            factory(2)
        except ImportError as e:
            print(f"skipping {name}: {e}")
            continue
        ok[name] = factory
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few steps, 1 seed, no breast_cancer")
    p.add_argument("--datasets", default=None, help="comma-separated subset")
    p.add_argument("--models", default=None, help="comma-separated subset (library/family)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.quick:
        budget = Budget(steps=600, batch=256, lr=2e-3, clip=5.0, seeds=1)
        names, n_train, n_test = ["gmm2", "ica8", "moons", "sensors"], 4000, 4000
    else:
        budget = Budget(steps=3000, batch=256, lr=1e-3, clip=5.0, seeds=3)
        names = ["gmm2", "ica8", "moons", "sensors", "breast_cancer"]
        n_train, n_test = 10000, 10000
    budget = Budget(
        steps=args.steps or budget.steps,
        batch=budget.batch,
        lr=budget.lr,
        clip=budget.clip,
        seeds=args.seeds or budget.seeds,
    )
    if args.datasets:
        names = args.datasets.split(",")
    models = make_models()
    if args.models:
        models = {k: models[k] for k in args.models.split(",")}
    models = _available(models)
    print(
        f"budget: {budget.steps} steps, batch {budget.batch}, Adam lr {budget.lr} cosine, "
        f"clip {budget.clip}, seeds {budget.seeds}; torch {torch.__version__}, "
        f"{args.threads} thread(s), {platform.processor() or platform.machine()}"
    )
    header = "| data set | model | params | test NLL | vs baseline | spread | s/run |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    started = time.perf_counter()
    for data in make_datasets(names, n_train, n_test):
        results: dict[str, tuple[float, float, int, float]] = {}
        for name, factory in models.items():
            nlls, t0 = [], time.perf_counter()
            params = 0
            for seed in range(budget.seeds):
                nll, params = train_and_score(factory, data, budget, seed)
                nlls.append(nll)
            secs = (time.perf_counter() - t0) / budget.seeds
            spread = max(nlls) - min(nlls)
            results[name] = (statistics.median(nlls), spread, params, secs)
            print(
                f"  {data.name:14s} {name:18s} {params:8d} params  NLL {results[name][0]:8.4f}"
                f"  ({secs:.1f} s/run)",
                flush=True,
            )
        if data.true_nll is not None:
            base, base_name = data.true_nll, "true"
        else:
            peers = {k: v[0] for k, v in results.items() if not k.startswith("flowserve/")}
            finite = {k: v for k, v in peers.items() if math.isfinite(v)}
            base_name = min(finite, key=finite.get) if finite else "none"
            base = finite.get(base_name, math.nan)
        lines.append(f"| {data.name} | baseline: {base_name} | | {base:.4f} | | | |")
        for name, (nll, spread, params, secs) in results.items():
            lines.append(
                f"| {data.name} | {name} | {params:,} | {nll:.4f} | {nll - base:+.4f} | "
                f"{spread:.3f} | {secs:.0f} |"
            )
    print(f"\ntotal {time.perf_counter() - started:.0f} s\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

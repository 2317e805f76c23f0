"""``flowserve train``: train a flow on a data file (or a demo set) and export an artifact.

Examples::

    flowserve train data.csv --name sensors --out models_repo
    flowserve train data.csv --time-budget 60 --threads 1
    flowserve train data.parquet --family realnvp --layers 8 --hidden 128 --epochs 200
    flowserve train data.csv --config train.toml --lr 3e-4 --param bins=12
    flowserve train --demo sensors --name sensors --out models_repo
    flowserve train data.csv --devices 4 --strategy ddp --accelerator gpu

Bad input (missing or unreadable file, non-numeric or constant columns, too few rows, unknown
columns or family, a bad config) prints one line to stderr and exits with status 2; a failed
export (parity, round trip) exits with status 1. The family defaults to ``auto``: candidate
families and sizes race on validation NLL inside the time budget (the leaderboard goes into the
report and the manifest). Results go to stdout; the progress bar and warnings go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

__all__ = ["configure", "run"]

# Flags that map one to one onto TrainConfig fields.
_CONFIG_FLAGS: dict[str, tuple[type, str]] = {
    "layers": (int, "number of flow layers"),
    "hidden": (int, "hidden width of the conditioner networks"),
    "time_budget": (
        float,
        "wall-clock seconds for everything before export: model selection, training and "
        "calibration (the learning-rate schedule follows the share of it used)",
    ),
    "threads": (int, "torch threads while training (default 1: fastest for small flows)"),
    "epochs": (int, "maximum number of epochs (default 100; a cap under --time-budget)"),
    "batch_size": (int, "mini-batch size (default: about rows/16, a power of two in 32-512)"),
    "lr": (float, "learning rate (default 1e-3)"),
    "weight_decay": (float, "Adam weight decay (default 0)"),
    "grad_clip": (float, "gradient-norm clipping, 0 disables (default 5)"),
    "patience": (int, "early-stopping patience in epochs (default 20)"),
    "seed": (int, "seed for splits, initialization and batches (default 0)"),
    "max_rows": (int, "randomly subsample the data to at most this many rows"),
    "val_fraction": (float, "share of rows for validation (default: 10-20%, sized for the table)"),
    "test_fraction": (
        float,
        "share of rows for the test split, which reports test NLL and calibrates (default 0.1)",
    ),
    "calibration_folds": (int, "folds for cross-fitted calibration (default 5)"),
    "num_nodes": (int, "number of nodes (Lightning Trainer num_nodes)"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("Examples::", 1)[1] if __doc__ else None
    parser.add_argument("data", nargs="?", type=Path, help="CSV, Parquet, NPY or NPZ file")
    parser.add_argument(
        "--demo", metavar="SET", help="train on a generated data set (sensors, moons)"
    )
    parser.add_argument("--demo-rows", type=int, default=4000, help="rows for --demo")
    parser.add_argument(
        "--family",
        help="flow family, or auto (default): race maf, nsf, nsf_ar and realnvp candidates",
    )
    parser.add_argument("--name", help="model name (default: the data file's stem)")
    parser.add_argument("--out", type=Path, default=Path("artifacts"), help="repository root")
    parser.add_argument("--version", type=int, help="version to write (default: next free)")
    parser.add_argument("--columns", help="comma-separated feature columns to use")
    parser.add_argument("--id-column", help="a row-identifier column to exclude")
    parser.add_argument("--config", type=Path, help="TOML or YAML config; flags override it")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="family-specific flow option, repeatable (e.g. --param bins=8)",
    )
    for key, (kind, help_text) in _CONFIG_FLAGS.items():
        parser.add_argument(
            "--" + key.replace("_", "-"), type=kind, help=help_text.replace("%", "%%")
        )
    parser.add_argument("--scheduler", choices=["cosine", "plateau", "none"])
    parser.add_argument(
        "--calibration",
        choices=["auto", "split", "cross-fit"],
        help="anomaly calibration scores: the test split (split), out-of-fold scores of fold "
        "models (cross-fit), or auto (default: split when the test split has >= 500 rows)",
    )
    parser.add_argument(
        "--dequantization",
        choices=["uniform", "variational"],
        help="image families: uniform noise in each integer cell (default), or a noise model "
        "learned with the flow, which tightens the reported bits/dim bound",
    )
    parser.add_argument(
        "--power-transform",
        choices=["auto", "none"],
        help="real columns: a Yeo-Johnson power transform of the clearly skewed ones before "
        "standardizing, part of the model (auto, default), or standardize only (none)",
    )
    parser.add_argument(
        "--nan-policy",
        choices=["drop", "error"],
        help="rows with NaN/Inf: drop them with a warning (default) or fail",
    )
    parser.add_argument("--resume", type=Path, help="Lightning checkpoint to continue from")
    parser.add_argument(
        "--checkpoint-dir", type=Path, help="default: OUT/NAME/.checkpoints/VERSION"
    )
    parser.add_argument("--accelerator", help="cpu, gpu, auto, ... (Lightning)")
    parser.add_argument("--devices", help="number or list of devices, or auto (Lightning)")
    parser.add_argument("--strategy", help="auto, ddp, ddp_spawn, ... (Lightning)")
    parser.add_argument("--no-torchscript", action="store_true", help="skip model.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _error(message: str) -> int:
    print(f"flowserve train: error: {message}", file=sys.stderr)
    return 2


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from flowserve.models.config import parse_param

    values: dict[str, Any] = {key: getattr(args, key) for key in _CONFIG_FLAGS}
    for key in (
        "scheduler",
        "nan_policy",
        "accelerator",
        "devices",
        "strategy",
        "calibration",
        "dequantization",
        "power_transform",
    ):
        values[key] = getattr(args, key)
    if values["devices"] is not None and values["devices"].isdigit():
        values["devices"] = int(values["devices"])
    if args.param:
        values["params"] = dict(parse_param(p) for p in args.param)
    return values


def run(args: argparse.Namespace) -> int:
    # Checks that need no torch come first: importing the training side takes seconds.
    if (args.data is None) == (args.demo is None):
        return _error("give a data file or --demo SET (exactly one)")
    if args.data is not None and not args.data.is_file():
        return _error(f"{args.data}: no such file")
    from flowserve.models.config import ConfigError
    from flowserve.models.data import DataError

    with warnings.catch_warnings():
        # Warnings about the data (NaN rows dropped) as one readable line each.
        warnings.simplefilter("default", UserWarning)
        warnings.showwarning = _show_warning
        try:
            return _run(args)
        except (DataError, ConfigError) as e:
            return _error(str(e))


def _run(args: argparse.Namespace) -> int:
    from flowserve.models.config import ConfigError
    from flowserve.models.datasets import make_dataset
    from flowserve.models.export import ExportError
    from flowserve.models.training import TrainingError, train

    if args.demo is not None:
        try:
            data: Any = make_dataset(args.demo, args.demo_rows, seed=args.seed or 0)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        name = args.name or args.demo
        source = f"demo:{args.demo} (rows={args.demo_rows}, seed={args.seed or 0})"
    else:
        data = args.data
        name = args.name or args.data.stem
        source = None
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    try:
        result = train(
            data,
            family=args.family,
            name=name,
            out=args.out,
            version=args.version,
            columns=columns,
            id_column=args.id_column,
            config_file=args.config,
            resume=args.resume,
            checkpoint_dir=args.checkpoint_dir,
            progress=not args.no_progress,
            torchscript=not args.no_torchscript,
            source=source,
            **_overrides(args),
        )
    except (ExportError, TrainingError) as e:
        print(f"flowserve train: failed: {e}", file=sys.stderr)
        return 1
    if result is None:  # a DDP worker process: rank zero reports
        return 0
    m = result.metrics
    print(
        f"wrote {result.artifact_dir} ({result.manifest.family}, dim {result.manifest.dim}): "
        f"test NLL {m['test_nll']:.4f} nats/row, val {m['val_nll']:.4f}, "
        f"train {m['train_nll']:.4f}, {m['epochs']} epochs, "
        f"{m['training_seconds']:.1f} s training"
    )
    powered = result.manifest.preprocessing.power_transformed(result.manifest.feature_names)
    if powered:
        more = f" and {len(powered) - 6} more" if len(powered) > 6 else ""
        print(
            f"power transform (Yeo-Johnson) on {len(powered)} of {result.manifest.dim} skewed "
            f"columns: {', '.join(powered[:6])}{more} (--power-transform none turns it off)"
        )
    selection = result.config.get("selection")
    if selection:
        ranked = ", ".join(
            f"{e['label']} {e['val_nll']:.3f}"
            for e in selection["leaderboard"]
            if e["val_nll"] is not None
        )
        print(f"model selection (validation NLL): {ranked}")
    return 0


def _show_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    # One readable line per warning, without the source line that Python prints by default.
    print(f"flowserve train: warning: {message}", file=sys.stderr)

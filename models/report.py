"""The training report written next to an artifact: metrics, loss curve, samples vs data.

Files (written before export, so the manifest's checksums cover them):

- ``metrics.json``: NLL in nats per row on train/validation/test, bits/dim, epochs, rows.
- ``config.yaml``: the resolved training config.
- ``loss_curve.png``: train and validation NLL per epoch, the best epoch marked.
- ``samples.png``: pairwise scatter of the first features, model samples over data (images:
  training images over model samples).

Figures are drawn with matplotlib's Agg canvas directly (no global backend switch, no display).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "CONFIG_FILE",
    "IMAGE_SAMPLES",
    "LOSS_CURVE_FILE",
    "METRICS_FILE",
    "SAMPLES_FILE",
    "plot_image_samples",
    "plot_loss_curve",
    "plot_samples",
    "write_report",
]

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
LOSS_CURVE_FILE = "loss_curve.png"
SAMPLES_FILE = "samples.png"
IMAGE_SAMPLES = 8  # model samples an image model's report shows
MAX_PAIR_FEATURES = 4
_DPI = 80
# No software/date metadata: the same run gives byte-identical figures.
_PNG_META = {"Software": None}


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=_DPI, metadata=_PNG_META)


def plot_loss_curve(
    history: Sequence[dict[str, float]], path: Path, best_epoch: int | None = None
) -> Path:
    """Train and validation NLL per epoch (nats per row)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    epochs = [h["epoch"] for h in history]
    for key, label in (("train_nll", "train"), ("val_nll", "validation")):
        ys = [h.get(key, math.nan) for h in history]
        ax.plot(epochs, ys, marker="." if len(epochs) < 30 else None, label=label)
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label="best")
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL (nats per row)")
    ax.set_title("training curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_samples(
    data: np.ndarray,
    samples: np.ndarray,
    feature_names: Sequence[str],
    path: Path,
    max_features: int = MAX_PAIR_FEATURES,
    max_points: int = 2000,
) -> Path:
    """Pairwise scatter of the first ``max_features`` features: data (grey) and samples (red).

    One feature gives overlaid histograms instead.
    """
    k = min(max_features, data.shape[1])
    data, samples = data[:max_points, :k], samples[:max_points, :k]
    # Axis limits from the data, so a few wild samples do not squash the picture.
    lo, hi = np.quantile(data, 0.005, axis=0), np.quantile(data, 0.995, axis=0)
    pad = np.maximum(0.15 * (hi - lo), 0.5 * (hi == lo))  # a constant feature: +-0.5 around it
    lo, hi = lo - pad, hi + pad
    if k == 1:
        fig = Figure(figsize=(5, 4))
        ax = fig.add_subplot()
        bins = np.linspace(lo[0], hi[0], 60)
        ax.hist(data[:, 0], bins=bins, density=True, alpha=0.5, color="grey", label="data")
        ax.hist(samples[:, 0], bins=bins, density=True, alpha=0.5, color="tab:red", label="model")
        ax.set_xlabel(feature_names[0])
        ax.legend()
    else:
        pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
        cols = min(3, len(pairs))
        rows = math.ceil(len(pairs) / cols)
        fig = Figure(figsize=(3.2 * cols, 3.0 * rows))
        for n, (i, j) in enumerate(pairs):
            ax = fig.add_subplot(rows, cols, n + 1)
            ax.scatter(data[:, i], data[:, j], s=2, alpha=0.3, color="grey", label="data")
            ax.scatter(samples[:, i], samples[:, j], s=2, alpha=0.3, color="tab:red", label="model")
            ax.set_xlim(lo[i], hi[i])
            ax.set_ylim(lo[j], hi[j])
            ax.set_xlabel(feature_names[i], fontsize=8)
            ax.set_ylabel(feature_names[j], fontsize=8)
            ax.tick_params(labelsize=7)
            if n == 0:
                ax.legend(fontsize=7, markerscale=4, loc="best")
    fig.suptitle("model samples (red) vs data (grey)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_image_samples(
    data: np.ndarray,
    samples: np.ndarray,
    shape: Sequence[int],
    path: Path,
    count: int = IMAGE_SAMPLES,
) -> Path:
    """Images: ``count`` training images (top row) over ``count`` model samples (bottom row),
    flat rows shown as their ``(C, H, W)`` shape (grey for one channel, RGB for three)."""
    c, h, w = (int(v) for v in shape)
    count = min(count, len(data), len(samples))
    lo, hi = float(np.min(data)), float(np.max(data))
    fig = Figure(figsize=(1.2 * count, 2.6))
    for row, (rows, label) in enumerate(((data, "data"), (samples, "model"))):
        for n in range(count):
            ax = fig.add_subplot(2, count, row * count + n + 1)
            image = np.clip(rows[n].reshape(c, h, w), lo, hi)
            if c == 1:
                ax.imshow(image[0], cmap="gray_r", vmin=lo, vmax=hi)
            else:
                ax.imshow(np.moveaxis((image - lo) / max(hi - lo, 1e-12), 0, -1))
            ax.set_xticks([])
            ax.set_yticks([])
            if n == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle("model samples (bottom) vs data (top)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return path


def _plain(value: Any) -> Any:
    """JSON/YAML-safe values (numpy scalars, paths, non-finite floats as None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_report(
    out_dir: Path,
    *,
    metrics: dict[str, Any],
    history: Sequence[dict[str, float]],
    best_epoch: int | None,
    data: np.ndarray,
    samples: np.ndarray,
    feature_names: Sequence[str],
    config: dict[str, Any],
    image_shape: Sequence[int] | None = None,
) -> list[Path]:
    """Write every report file into ``out_dir``; returns their paths. With ``image_shape``
    (image data), ``samples.png`` shows images rather than pairs of pixels."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / METRICS_FILE
    metrics_path.write_text(
        json.dumps(_plain({**metrics, "history": list(history)}), indent=2) + "\n"
    )
    config_path = out_dir / CONFIG_FILE
    config_path.write_text(yaml.safe_dump(_plain(config), sort_keys=False))
    return [
        metrics_path,
        config_path,
        plot_loss_curve(history, out_dir / LOSS_CURVE_FILE, best_epoch),
        plot_samples(data, samples, feature_names, out_dir / SAMPLES_FILE)
        if image_shape is None
        else plot_image_samples(data, samples, image_shape, out_dir / SAMPLES_FILE),
    ]

"""Generated data sets: two moons, and a 4-feature "sensors" set for anomaly scoring.

These are what ``flowserve train --demo NAME`` trains on, and what the default model is made
from. Every generator is deterministic in its seed and returns a :class:`pandas.DataFrame` with
named float columns, so it round-trips through CSV/Parquet like user data does.

The ``sensors`` set mimics a machine with two operating regimes (idle and working): speed drives
temperature, vibration and power through nonlinear, heteroscedastic relations. Its anomalies keep
each feature within its normal range but break the joint relations (a hot idle machine, a fast
machine drawing no power), so only a joint density notices them.

Run as a script to write a CSV: ``python -m flowserve.models.datasets sensors out.csv --rows 4000``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "DATASETS",
    "SENSOR_FEATURES",
    "main",
    "make_dataset",
    "sensor_anomalies",
    "sensors",
    "two_moons",
    "write_dataset",
]

SENSOR_FEATURES = ["speed_rpm", "temperature_c", "vibration_mm_s", "power_kw"]


def two_moons(n: int, seed: int = 0, noise: float = 0.08) -> pd.DataFrame:
    """Two interleaved half circles (columns ``x``, ``y``), a classic non-Gaussian 2-D set."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.0, np.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    pts = np.stack([x, y], axis=1) + noise * rng.standard_normal((n, 2))
    return pd.DataFrame(pts.astype(np.float32), columns=["x", "y"])


def _sensor_readings(speed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Temperature, vibration and power for each speed (the machine's normal physics)."""
    n = speed.shape[0]
    s = (speed - 600.0) / 2400.0  # relative load in about [0, 1]
    temperature = 35.0 + 40.0 * s**2 + 1.5 * rng.standard_normal(n)
    # vibration grows with load and resonates near one speed; multiplicative noise
    vibration = (0.8 + 3.0 * np.abs(s) ** 1.5 * (1.0 + 0.3 * np.sin(6.0 * s))) * np.exp(
        0.08 * rng.standard_normal(n)
    )
    power = 0.5 + 12.0 * np.abs(s) ** 3 + 0.02 * (temperature - 35.0) + 0.3 * rng.standard_normal(n)
    return np.stack([temperature, vibration, power], axis=1)


def sensors(n: int, seed: int = 0) -> pd.DataFrame:
    """Normal readings of a machine with an idle (30%) and a working (70%) regime."""
    rng = np.random.default_rng(seed)
    idle = rng.random(n) < 0.3
    speed = np.where(
        idle, 800.0 + 40.0 * rng.standard_normal(n), 1500.0 + 1500.0 * rng.beta(2, 2, n)
    )
    cols = np.column_stack([speed, _sensor_readings(speed, rng)])
    return pd.DataFrame(cols.astype(np.float32), columns=SENSOR_FEATURES)


def sensor_anomalies(n: int, seed: int = 0) -> pd.DataFrame:
    """Readings that break the joint relations while each feature stays in its normal range."""
    rng = np.random.default_rng(seed)
    normal = sensors(n, seed=seed + 1_000_003).to_numpy(dtype=np.float64)
    out = normal.copy()
    kind = rng.integers(0, 3, n)
    # 0: idle-speed machine running hot; 1: fast machine drawing idle power; 2: vibration of the
    # opposite regime
    slow = normal[:, 0] < 1200.0
    out[:, 1] = np.where(
        kind == 0, np.where(slow, 68.0, 36.0) + 2.0 * rng.standard_normal(n), out[:, 1]
    )
    out[:, 3] = np.where(
        kind == 1, np.where(slow, 9.0, 0.6) + 0.3 * rng.standard_normal(n), out[:, 3]
    )
    out[:, 2] = np.where(
        kind == 2, np.where(slow, 3.6, 0.9) * np.exp(0.05 * rng.standard_normal(n)), out[:, 2]
    )
    return pd.DataFrame(out.astype(np.float32), columns=SENSOR_FEATURES)


DATASETS: dict[str, Callable[[int, int], pd.DataFrame]] = {
    "moons": two_moons,
    "sensors": sensors,
}


def make_dataset(name: str, n: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Generate the data set ``name`` (one of :data:`DATASETS`) with ``n`` rows."""
    if name not in DATASETS:
        raise ValueError(f"unknown demo data set {name!r}; known: {', '.join(sorted(DATASETS))}")
    if n < 1:
        raise ValueError(f"a data set needs at least 1 row, got {n}")
    return DATASETS[name](n, seed)


def write_dataset(name: str, path: Path, n: int = 4000, seed: int = 0) -> Path:
    """Write a generated data set to CSV (or Parquet for a ``.parquet`` path)."""
    path = Path(path)
    frame = make_dataset(name, n, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".parquet", ".pq"):
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flowserve.models.datasets", description="write a generated data set"
    )
    parser.add_argument("name", choices=sorted(DATASETS))
    parser.add_argument("path", type=Path, help="output .csv or .parquet file")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_dataset(args.name, args.path, n=args.rows, seed=args.seed)
    print(f"wrote {args.rows} rows of {args.name!r} to {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training data: loading, validation, splits and the fitted standardization.

Formats (by file suffix): CSV/TSV with a header row, Parquet, NPY (a 2-D array) and NPZ (one 2-D
array, or the array named ``x``/``X``/``data``). Array files get feature names ``x0, x1, ...``.

Policy for bad values (stated once here, recorded in the artifact's manifest):

- ``nan_policy="drop"`` (default): rows holding NaN or +/-Inf in any chosen column are dropped,
  with a warning that counts them; ``"error"``: such rows fail the load, naming the columns.
- Non-numeric columns, constant columns (they have no density), unknown column names, empty data
  and too few rows fail with a :class:`DataError` whose message names the problem.

Rows are shuffled into train/validation/test splits with a seed; the standardization (mean and
standard deviation per feature, after a Yeo-Johnson power transform of clearly skewed columns)
is fitted on the training split only and becomes part of the model
(``flowserve.models.base.Standardize``), so the model scores raw rows.

Preparation follows the kind of data (:data:`flowserve.artifact.DataKind`, recorded in the
manifest; the family decides it, see :func:`flowserve.models.preprocess.data_kind_of`):

- ``real``: as above (standardized; constant columns refused).
- ``angle``: radians, wrapped to ``[-pi, pi)``, never standardized.
- ``unit_vector``: rows of 3 values with norm 1 within
  :data:`~flowserve.artifact.UNIT_NORM_TOLERANCE` (others fail the load, counted), normalized
  exactly, never standardized.
- ``image``: non-negative integers (pixels; constant pixels such as borders are fine), never
  standardized; ``num_values`` is the largest value + 1 unless given.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from flowserve.artifact import UNIT_NORM_TOLERANCE, DataKind
from flowserve.models.power import PowerSpec, fit_yeo_johnson, yeo_johnson_numpy

__all__ = [
    "ARRAY_KEYS",
    "FORMATS",
    "MIN_ROWS",
    "DataError",
    "NanPolicy",
    "PreparedData",
    "Table",
    "check_data_kind",
    "clean_table",
    "fit_standardize",
    "load_table",
    "prepare_data",
    "split_indices",
    "table_from_array",
]

NanPolicy = Literal["drop", "error"]

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".npy": "npy",
    ".npz": "npz",
}
ARRAY_KEYS = ("x", "X", "data")
# Train needs a few batches' worth, validation and test at least a handful each (test rows also
# calibrate anomaly scoring and check export parity).
MIN_ROWS = 20


class DataError(ValueError):
    """The training data cannot be used; the message names the problem (file, column, count)."""


@dataclass(frozen=True)
class Table:
    """Numeric rows with a name per column."""

    values: np.ndarray  # [n, dim] float64
    feature_names: list[str]


def _read_frame(path: Path, kind: str) -> pd.DataFrame:
    try:
        if kind == "csv":
            return pd.read_csv(path)
        if kind == "tsv":
            return pd.read_csv(path, sep="\t")
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: the file is empty") from e
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read as {kind.upper()} ({e})") from e


def _read_array(path: Path, kind: str) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read as {kind.upper()} ({e})") from e
    if kind == "npz":
        with loaded:
            keys = list(loaded.keys())
            key = next((k for k in ARRAY_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise DataError(
                    f"{path}: NPZ holds {len(keys)} arrays ({', '.join(keys) or 'none'}); "
                    f"name the data array one of {', '.join(ARRAY_KEYS)}"
                )
            arr = loaded[key]
    else:
        arr = loaded
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 2-D array [rows, features], got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise DataError(f"{path}: the array is not numeric (dtype {arr.dtype})")
    return arr


def _select(
    frame: pd.DataFrame, columns: list[str] | None, id_column: str | None, source: str
) -> pd.DataFrame:
    known = [str(c) for c in frame.columns]
    frame = frame.set_axis(known, axis=1)
    for wanted in [*(columns or []), *([id_column] if id_column else [])]:
        if wanted not in known:
            raise DataError(
                f"{source}: unknown column {wanted!r}; the columns are: {', '.join(known)}"
            )
    if columns:
        frame = frame[[c for c in columns if c != id_column]]
    elif id_column:
        frame = frame.drop(columns=[id_column])
    if not columns:
        _warn_identifier_columns(frame, source)
    if frame.shape[1] == 0:
        raise DataError(f"{source}: no feature columns left to train on")
    if frame.shape[0] == 0:  # checked first: a header-only CSV has untyped (object) columns
        raise DataError(f"{source}: the data has no rows")
    non_numeric = [
        c
        for c in frame.columns
        if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
    ]
    if non_numeric:
        raise DataError(
            f"{source}: non-numeric column(s) {', '.join(repr(c) for c in non_numeric)}; "
            "drop them with --columns or mark an identifier with --id-column"
        )
    return frame


# Column names that usually hold row identifiers, not measurements.
_ID_NAME = re.compile(r"^(id|index|key|uuid|row|row_?num(ber)?|unnamed: ?\d+)$|(^|_)id$", re.I)


def _warn_identifier_columns(frame: pd.DataFrame, source: str) -> None:
    """Warn when a numeric column named like a row identifier (``id``, ``*_id``) would be
    trained as a feature: a density over identifiers flags every new id as an anomaly."""
    suspects = [
        c for c in frame.columns if _ID_NAME.search(str(c)) and frame[c].dtype.kind in "iuf"
    ]
    if suspects:
        names = ", ".join(repr(c) for c in suspects)
        warnings.warn(
            f"{source}: column(s) {names} look like row identifiers but are trained as "
            f"features; exclude one with --id-column {suspects[0]} or choose --columns",
            UserWarning,
            stacklevel=3,
        )


def table_from_array(
    data: np.ndarray | pd.DataFrame,
    columns: list[str] | None = None,
    id_column: str | None = None,
    source: str = "data",
) -> Table:
    """A :class:`Table` from an in-memory array or data frame (same checks as files)."""
    if isinstance(data, pd.DataFrame):
        frame = data
    else:
        arr = np.asarray(data)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise DataError(f"{source}: expected a 2-D array [rows, features], got {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise DataError(f"{source}: the array is not numeric (dtype {arr.dtype})")
        frame = pd.DataFrame(arr, columns=[f"x{i}" for i in range(arr.shape[1])])
    frame = _select(frame, columns, id_column, source)
    return Table(frame.to_numpy(dtype=np.float64), list(frame.columns))


def load_table(
    path: Path | str, columns: list[str] | None = None, id_column: str | None = None
) -> Table:
    """Read a data file (see the module docstring for formats) into a numeric :class:`Table`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path}: unknown data format {path.suffix or '(no suffix)'!r}; "
            f"use one of {', '.join(sorted(FORMATS))}"
        )
    if kind in ("npy", "npz"):
        return table_from_array(_read_array(path, kind), columns, id_column, str(path))
    frame = _read_frame(path, kind)
    if frame.shape[1] == 0:
        raise DataError(f"{path}: the file has no columns")
    return table_from_array(frame, columns, id_column, str(path))


def clean_table(
    table: Table,
    nan_policy: NanPolicy = "drop",
    min_rows: int = MIN_ROWS,
    source: str = "data",
    allow_constant: bool = False,
) -> tuple[Table, int]:
    """Apply the NaN/Inf policy and check row count and constant columns (unless
    ``allow_constant``: image pixels may be constant).

    Returns the clean table and how many rows were dropped.
    """
    if nan_policy not in ("drop", "error"):
        raise DataError(f"unknown NaN policy {nan_policy!r}; use 'drop' or 'error'")
    values = table.values
    if values.shape[0] == 0:
        raise DataError(f"{source}: the data has no rows")
    bad = ~np.isfinite(values)
    bad_rows = bad.any(axis=1)
    dropped = int(bad_rows.sum())
    if dropped:
        cols = [table.feature_names[j] for j in np.flatnonzero(bad.any(axis=0))]
        where = f"{dropped} of {values.shape[0]} rows hold NaN or Inf (columns: {', '.join(cols)})"
        if nan_policy == "error":
            raise DataError(f"{source}: {where}; fix them or use --nan-policy drop")
        warnings.warn(f"{source}: {where}; dropping those rows", stacklevel=2)
        values = values[~bad_rows]
    if values.shape[0] < min_rows:
        raise DataError(
            f"{source}: {values.shape[0]} usable rows; training needs at least {min_rows} "
            "(for train, validation and test splits)"
        )
    constant = [
        name
        for name, lo, hi in zip(table.feature_names, values.min(0), values.max(0), strict=True)
        if lo == hi and not allow_constant
    ]
    if constant:
        raise DataError(
            f"{source}: constant column(s) {', '.join(repr(c) for c in constant)} have no "
            "density; drop them with --columns"
        )
    return Table(values, table.feature_names), dropped


def validation_rows(n: int) -> int:
    """Validation rows for a table of ``n`` rows when no fraction is given: 10%, raised towards
    20% (at most 200 rows) on small tables, where a 10% split makes early stopping and model
    selection noisy."""
    return max(2, round(0.1 * n), min(round(0.2 * n), 200))


def split_indices(
    n: int, val_fraction: float | None, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffled train/validation/test row indices.

    Validation gets >= 2 rows (``val_fraction=None``: :func:`validation_rows`); the test split
    gets >= 2 rows unless ``test_fraction`` is 0 (a caller that scores its own held-out data).
    """
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise DataError("the validation fraction must be in (0, 1)")
    if not 0.0 <= test_fraction < 1.0:
        raise DataError("the test fraction must be in [0, 1)")
    n_val = validation_rows(n) if val_fraction is None else max(2, round(n * val_fraction))
    n_test = max(2, round(n * test_fraction)) if test_fraction > 0 else 0
    if n - n_val - n_test < 0.1 * n:
        raise DataError("validation + test splits must leave at least 10% for training")
    order = np.random.default_rng(seed).permutation(n)
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


PowerPolicy = Literal["auto", "none"]


def fit_standardize(
    train: np.ndarray, power: PowerSpec | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation of the training rows (float32), after ``power``'s
    transform when given."""
    if power is not None:
        train, _ = yeo_johnson_numpy((train - power.center) / power.spread, power.lambdas)
    mean = train.mean(axis=0)
    scale = train.std(axis=0)
    # A column constant on the training split but not overall would divide by zero.
    scale = np.where(scale > 0, scale, 1.0)
    return mean.astype(np.float32), scale.astype(np.float32)


def _show(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in rows[:5])
    return shown + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")


def check_data_kind(
    values: np.ndarray, kind: DataKind, source: str = "data"
) -> tuple[np.ndarray, int | None]:
    """Rows of ``kind`` checked and put in canonical form (float64), and ``num_values`` for
    images (else ``None``); raises :class:`DataError` naming the rows that do not fit."""
    if kind == "real":
        return values, None
    if kind == "angle":
        return values - 2 * np.pi * np.floor((values + np.pi) / (2 * np.pi)), None
    if kind == "unit_vector":
        if values.shape[1] != 3:
            raise DataError(f"{source}: unit vectors need 3 columns, got {values.shape[1]}")
        norm = np.linalg.norm(values, axis=1)
        off = np.flatnonzero(np.abs(norm - 1.0) > UNIT_NORM_TOLERANCE)
        if off.size:
            raise DataError(
                f"{source}: {off.size} of {len(values)} rows are not unit vectors "
                f"(|norm - 1| > {UNIT_NORM_TOLERANCE:g}; rows {_show(off)}); normalize them first"
            )
        return values / norm[:, None], None
    if kind == "image":
        off = np.flatnonzero(((values != np.rint(values)) | (values < 0)).any(axis=1))
        if off.size:
            raise DataError(
                f"{source}: {off.size} of {len(values)} rows hold pixels that are not "
                f"non-negative integers (rows {_show(off)}); image families model integer levels"
            )
        return values, int(values.max()) + 1
    raise DataError(f"unknown data kind {kind!r}; use real, angle, unit_vector or image")


@dataclass(frozen=True)
class PreparedData:
    """Clean, split, float32 data plus the standardization fitted on its training split
    (``mean``/``scale`` are ``None`` for data kinds that are never standardized)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    feature_names: list[str]
    mean: np.ndarray | None
    scale: np.ndarray | None
    dropped_rows: int
    nan_policy: NanPolicy
    source: str
    data_kind: DataKind = "real"
    num_values: int | None = None  # images: integer levels are 0 .. num_values - 1
    power: PowerSpec | None = None  # real data: Yeo-Johnson powers applied before standardizing

    @property
    def dim(self) -> int:
        return self.train.shape[1]


def prepare_data(
    data: Path | str | np.ndarray | pd.DataFrame,
    *,
    columns: list[str] | None = None,
    id_column: str | None = None,
    nan_policy: NanPolicy = "drop",
    max_rows: int | None = None,
    val_fraction: float | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
    source: str | None = None,
    data_kind: DataKind = "real",
    validation: np.ndarray | pd.DataFrame | None = None,
    power_transform: PowerPolicy = "auto",
) -> PreparedData:
    """Load (from a path or an in-memory array/frame), clean, subsample, split, standardize.

    Real columns that are clearly skewed on the training split get a Yeo-Johnson power transform
    before standardizing (``power_transform="auto"``; :mod:`flowserve.models.power`), ``"none"``
    standardizes only.

    ``source`` names in-memory data in messages and in the saved config (default ``"data"``);
    ``data_kind`` decides the checks and the preparation (see the module docstring).
    ``validation`` (rows with the same features) is the validation split as given: then ``data``
    is split into train and test only.
    """
    if isinstance(data, (str, Path)):
        source = str(data)
        table = load_table(data, columns, id_column)
    else:
        source = source or "data"
        table = table_from_array(data, columns, id_column, source)
    table, dropped = clean_table(
        table, nan_policy, source=source, allow_constant=data_kind == "image"
    )
    values, num_values = check_data_kind(table.values, data_kind, source)
    if max_rows is not None and values.shape[0] > max_rows:
        if max_rows < MIN_ROWS:
            raise DataError(f"--max-rows {max_rows} is below the minimum of {MIN_ROWS} rows")
        keep = np.sort(np.random.default_rng(seed + 1).choice(values.shape[0], max_rows, False))
        values = values[keep]
    x = values.astype(np.float32)
    if validation is None:
        tr, va, te = split_indices(values.shape[0], val_fraction, test_fraction, seed)
        val = x[va]
    else:
        given = table_from_array(validation, columns, id_column, "validation_data")
        if given.values.shape[1] != x.shape[1]:
            raise DataError(
                f"validation_data has {given.values.shape[1]} features; the data has {x.shape[1]}"
            )
        given, _ = clean_table(
            given, nan_policy, min_rows=2, source="validation_data", allow_constant=True
        )
        val = given.values.astype(np.float32)
        n = values.shape[0]
        order = np.random.default_rng(seed).permutation(n)
        n_test = max(2, round(n * test_fraction)) if test_fraction > 0 else 0
        tr, te = order[n_test:], order[:n_test]
    power, mean, scale = None, None, None
    if data_kind == "real":
        if power_transform == "auto":
            power = fit_yeo_johnson(values[tr])
            power = power if power.active else None
        mean, scale = fit_standardize(values[tr], power)
    return PreparedData(
        train=x[tr],
        val=val,
        test=x[te],
        feature_names=table.feature_names,
        mean=mean,
        scale=scale,
        dropped_rows=dropped,
        nan_policy=nan_policy,
        source=source,
        data_kind=data_kind,
        num_values=num_values,
        power=power,
    )

"""Bulk offline scoring on pandas partitions: the service's ONNX scoring, without HTTP.

:func:`score_frame` scores one pandas DataFrame with the same torch-free runtime class the
service uses (:class:`~flowserve.service.runtime.OnnxFlowModel`), so its numbers are the
service's ``/score`` numbers. It is a plain partition function: :func:`score_dask` maps it over
a Dask DataFrame, and the same function runs as a Spark ``mapInPandas`` UDF (docs/bulk-scoring.md).
Artifacts are loaded once per process and cached (:func:`load_model`), so a worker that scores
many partitions loads the model once.

Example:
    >>> scores = score_frame(df, "models/sensors/3")                    # doctest: +SKIP
    >>> ddf_scores = score_dask(dd.read_parquet("in/"), "models/sensors/3")  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from flowserve.artifact import ArtifactError, version_dirs
from flowserve_client import _protocol
from flowserve_client._protocol import (
    STATUS_NON_FINITE_INPUT,
    STATUS_NON_FINITE_LOG_PROB,
    STATUS_OK,
)

from .runtime import OnnxFlowModel

if TYPE_CHECKING:
    import dask.dataframe as dd

__all__ = [
    "SCORE_COLUMNS",
    "STATUS_NON_FINITE_INPUT",
    "STATUS_NON_FINITE_LOG_PROB",
    "STATUS_OK",
    "NonFiniteRows",
    "load_model",
    "resolve_artifact",
    "score_dask",
    "score_frame",
    "score_frame_iter",
    "score_meta",
]

# The output columns after the ``keep`` ones, in order (the client's ``flowserve score`` writes
# the same). The status column says why a row's numbers are what they are: a row that could not
# be scored is flagged (is_anomaly True), never reported normal: Inf or 1e308 is the most
# anomalous reading.
_COLUMNS = [c for c in _protocol.SCORE_COLUMNS if c.offline]
SCORE_COLUMNS = [c.name for c in _COLUMNS]
Errors = Literal["raise", "coerce"]


class NonFiniteRows(ValueError):
    """Rows hold NaN or Inf features and ``errors="raise"``; ``index`` holds their labels."""

    def __init__(self, index: Sequence[Any], hint: str = "pass errors='coerce'") -> None:
        self.index = list(index)
        shown = ", ".join(str(i) for i in self.index[:10])
        more = ", ..." if len(self.index) > 10 else ""
        super().__init__(
            f"{len(self.index)} row(s) hold NaN or Inf features (index {shown}{more}); {hint} to "
            f"score them anyway (flagged as anomalies, status {STATUS_NON_FINITE_INPUT!r})"
        )


_load_lock = threading.Lock()


@lru_cache(maxsize=8)
def _cached_model(directory: str, intra_op_threads: int) -> OnnxFlowModel:
    model = OnnxFlowModel(Path(directory), intra_op_threads=intra_op_threads)
    model.warm_up()
    return model


def load_model(artifact_dir: str | Path, intra_op_threads: int = 1) -> OnnxFlowModel:
    """The artifact at ``artifact_dir``, verified and loaded once per process (cached).

    ``intra_op_threads=1`` by default: a Dask/Spark worker already runs one task per core.
    """
    # The lock keeps two threads of one worker from loading the same artifact twice.
    with _load_lock:
        return _cached_model(str(Path(artifact_dir).resolve()), intra_op_threads)


def resolve_artifact(root: str | Path, name: str, version: int | None = None) -> Path:
    """``<root>/<name>/<version>/``, the newest version when ``version`` is None."""
    versions = version_dirs(Path(root), name)
    if not versions:
        raise ArtifactError(f"no model {name!r} under {root} (expected {root}/{name}/<version>/)")
    if version is None:
        return versions[max(versions)]
    if version not in versions:
        raise ArtifactError(
            f"model {name!r} has no version {version} under {root} (has {sorted(versions)})"
        )
    return versions[version]


def _model(artifact_dir_or_model: str | Path | OnnxFlowModel) -> OnnxFlowModel:
    if isinstance(artifact_dir_or_model, OnnxFlowModel):
        return artifact_dir_or_model
    return load_model(artifact_dir_or_model)


def _feature_matrix(df: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"the data lacks column(s) {missing}; the model reads {list(columns)} "
            "(pass columns=[...] to name the input columns in feature order)"
        )
    non_numeric = [c for c in columns if not pd.api.types.is_numeric_dtype(df[c].dtype)]
    if non_numeric:
        raise ValueError(f"column(s) {non_numeric} are not numeric")
    with np.errstate(over="ignore"):  # beyond float32 becomes Inf: caught as non-finite
        return df[list(columns)].to_numpy(dtype=np.float32)


def score_frame(
    df: pd.DataFrame,
    artifact_dir_or_model: str | Path | OnnxFlowModel,
    columns: Sequence[str] | None = None,
    *,
    fpr: float | None = None,
    keep: Sequence[str] = (),
    errors: Errors = "raise",
) -> pd.DataFrame:
    """Anomaly scores of every row of ``df``, as the service's ``/score`` computes them.

    Arguments:
        df: one partition; the model's feature columns are read, others ignored.
        artifact_dir_or_model: a version directory (loaded once per process) or a loaded model.
        columns: the input columns holding the model's features, in feature order (default:
            the manifest's feature names).
        fpr: false-positive rate for ``is_anomaly`` (default: the calibration's).
        keep: input columns copied to the output first (e.g. an id to join on).
        errors: ``"raise"`` rejects rows with NaN/Inf features (or values beyond float32
            range), raising :class:`NonFiniteRows` with their index (as the service does);
            ``"coerce"`` gives them NaN scores, ``is_anomaly`` True and status
            ``non_finite_input``.

    Returns a DataFrame with ``df``'s index: the ``keep`` columns, then ``log_prob``,
    ``score`` (= -log_prob), ``percentile`` (0-100), ``p_value`` (conformal), ``is_anomaly``
    (``p_value <= fpr``) and ``status`` (``ok``, ``non_finite_input``, ``non_finite_log_prob``).
    Raises ``ValueError`` for an ``fpr`` below the calibration's attainable minimum.
    """
    model = _model(artifact_dir_or_model)
    columns = list(columns) if columns is not None else list(model.manifest.feature_names)
    if len(columns) != model.dim:
        raise ValueError(f"columns names {len(columns)} columns, the model reads {model.dim}")
    x = _feature_matrix(df, columns)
    # float32 is what the graphs read: 1e308 is Inf there, and caught here with NaN and Inf.
    finite = np.isfinite(x).all(axis=1)
    if errors == "raise" and not finite.all():
        raise NonFiniteRows(df.index[np.flatnonzero(~finite)])
    log_prob = np.full(len(x), np.nan, dtype=np.float64)
    folds = model.manifest.calibration.folds
    fold_log_prob = None if folds is None else np.full((len(x), folds), np.nan)
    if finite.any():
        lp, fold_lp = model.score_log_probs(x[finite] if not finite.all() else x)
        log_prob[finite] = lp
        if fold_log_prob is not None:
            fold_log_prob[finite] = fold_lp
    result = model.score_log_prob(log_prob.astype(np.float32), fpr, fold_log_prob)
    percentile = np.asarray(result.percentile, dtype=np.float64)
    p_value = np.asarray(result.p_value, dtype=np.float64)
    percentile[~finite] = np.nan
    p_value[~finite] = np.nan
    status = np.where(
        finite,
        np.where(np.isfinite(log_prob), STATUS_OK, STATUS_NON_FINITE_LOG_PROB),
        STATUS_NON_FINITE_INPUT,
    )
    values = {
        "log_prob": log_prob,
        "score": -log_prob,
        "percentile": percentile,
        "p_value": p_value,
        # NaN log-likelihoods (unscorable rows) are flagged by the threshold test; say so anyway.
        "is_anomaly": np.asarray(result.is_anomaly, dtype=bool) | ~finite,
        "status": status,
    }
    out = pd.DataFrame(index=df.index)
    for name in keep:
        out[name] = df[name]
    for column in _COLUMNS:
        out[column.name] = pd.Series(values[column.name], index=df.index, dtype=column.dtype)
    return out


def score_frame_iter(
    frames: Iterator[pd.DataFrame],
    artifact_dir: str | Path,
    columns: Sequence[str] | None = None,
    **kwargs: Any,
) -> Iterator[pd.DataFrame]:
    """:func:`score_frame` over an iterator of frames: the shape Spark's ``mapInPandas`` wants."""
    for frame in frames:
        yield score_frame(frame, artifact_dir, columns, **kwargs)


def score_meta(input_meta: pd.DataFrame, keep: Sequence[str] = ()) -> pd.DataFrame:
    """The empty output frame (columns and dtypes) of :func:`score_frame`, for Dask's ``meta``."""
    meta = pd.DataFrame(index=input_meta.index[:0])
    for name in keep:
        meta[name] = input_meta[name].iloc[:0]
    for column in _COLUMNS:
        meta[column.name] = pd.Series(dtype=column.dtype)  # as score_frame's columns
    return meta


def score_dask(
    ddf: dd.DataFrame,
    artifact_dir: str | Path,
    columns: Sequence[str] | None = None,
    *,
    fpr: float | None = None,
    keep: Sequence[str] = (),
    errors: Errors = "raise",
) -> dd.DataFrame:
    """:func:`score_frame` over every partition of a Dask DataFrame (lazy; partition order and
    index kept). Only the artifact *path* travels to the workers; each loads it once."""
    # Fail here, on the client, when the artifact is missing or broken, not on every worker.
    model = load_model(artifact_dir)
    if columns is None:
        columns = list(model.manifest.feature_names)
    path = str(Path(artifact_dir).resolve())
    return ddf.map_partitions(
        score_frame,
        path,
        list(columns),
        fpr=fpr,
        keep=list(keep),
        errors=errors,
        meta=score_meta(ddf._meta, keep),
    )

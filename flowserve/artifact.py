"""The artifact contract: the one definition both the training side and the service import.

An artifact is a directory ``<root>/<name>/<version>/`` holding ``manifest.json`` plus the files
it lists (ONNX graphs for both directions, optionally a TorchScript file, a report). This module
has no torch and no onnxruntime dependency: it is pydantic + numpy only.

ONNX graph contract (both graphs work on flat float32 rows of the *raw* feature space; the
preprocessing and its log-determinant live inside the graphs):

- ``forward.onnx``: input ``x`` ``[batch, dim]`` -> outputs ``z`` ``[batch, dim]`` and
  ``log_prob`` ``[batch]`` (log-density of the raw row, in nats).
- ``inverse.onnx``: input ``z`` ``[batch, dim]`` -> output ``x`` ``[batch, dim]``.

Sampling is base noise (see :class:`BaseSpec`) pushed through ``inverse.onnx``.

Anomaly scoring: ``score = -log_prob``. The calibration holds quantiles of the held-out
log-likelihood; a row is an anomaly at false-positive rate ``fpr`` when its log-likelihood is
below the ``fpr``-quantile of held-out log-likelihood.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "FORWARD_GRAPH",
    "INVERSE_GRAPH",
    "MANIFEST_FILE",
    "SCHEMA_VERSION",
    "TORCHSCRIPT_FILE",
    "ArtifactError",
    "BaseSpec",
    "Calibration",
    "Manifest",
    "Metrics",
    "Parity",
    "Preprocessing",
    "calibration_levels",
    "load_manifest",
    "next_version",
    "roundtrip_error",
    "sha256_file",
    "verify_artifact",
    "version_dirs",
    "write_manifest",
]

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
FORWARD_GRAPH = "forward.onnx"
INVERSE_GRAPH = "inverse.onnx"
TORCHSCRIPT_FILE = "model.pt"


class ArtifactError(Exception):
    """An artifact directory is missing, malformed, or does not match its manifest."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseSpec(_Strict):
    """Base distribution of the latent space.

    ``normal``: independent standard normal in every latent coordinate (sampling scales it by
    the temperature). ``uniform``: independent uniform on ``[low, high)`` per coordinate (flows on
    circles and tori); the temperature does not apply.
    """

    kind: Literal["normal", "uniform"] = "normal"
    low: float | None = None
    high: float | None = None

    def sample(self, n: int, dim: int, temperature: float, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "normal":
            return (temperature * rng.standard_normal((n, dim))).astype(np.float32)
        assert self.low is not None and self.high is not None
        return rng.uniform(self.low, self.high, size=(n, dim)).astype(np.float32)


class Preprocessing(_Strict):
    """What the graphs do to a raw row before the flow; informational, the graphs apply it.

    ``standardize``: ``(x - mean) / scale`` per feature, its log-determinant ``-sum(log scale)``
    included in ``log_prob``. ``dequantization``: for integer data, the kind used in training
    (``uniform`` or ``variational``); at serving time the graphs score ``x`` as given.
    """

    standardize_mean: list[float] | None = None
    standardize_scale: list[float] | None = None
    dequantization: Literal["uniform", "variational"] | None = None
    nan_policy: Literal["drop", "error"] = "drop"


class Metrics(_Strict):
    """Mean negative log-likelihood (nats per row) on each split; bits/dim where it applies."""

    train_nll: float | None = None
    val_nll: float | None = None
    test_nll: float | None = None
    bits_per_dim: float | None = None
    epochs: int | None = None
    train_rows: int | None = None


def calibration_levels() -> list[float]:
    """Quantile levels stored in a calibration: fine in the lower tail, where thresholds live."""
    tail = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3]
    grid = np.round(np.linspace(0.0, 1.0, 201), 6).tolist()
    return sorted(set(tail + grid))


class Calibration(_Strict):
    """Quantiles of held-out log-likelihood, for anomaly scoring.

    ``levels[i]`` is the probability that a held-out row's log-likelihood is at most
    ``log_prob_quantiles[i]``. ``default_fpr`` is the false-positive rate the service uses when a
    request names none, and ``threshold`` the log-likelihood threshold at that rate.
    """

    levels: list[float]
    log_prob_quantiles: list[float]
    n_rows: int
    default_fpr: float = Field(0.01, gt=0.0, lt=1.0)
    threshold: float

    @model_validator(mode="after")
    def _check(self) -> Calibration:
        if len(self.levels) != len(self.log_prob_quantiles) or len(self.levels) < 2:
            raise ValueError("levels and log_prob_quantiles must have the same length (>= 2)")
        if np.any(np.diff(self.levels) <= 0) or np.any(np.diff(self.log_prob_quantiles) < 0):
            raise ValueError("calibration levels and quantiles must be increasing")
        return self

    @classmethod
    def from_log_probs(cls, log_probs: np.ndarray, default_fpr: float = 0.01) -> Calibration:
        """Calibrate on held-out log-likelihoods (finite values only)."""
        lp = np.asarray(log_probs, dtype=np.float64)
        lp = lp[np.isfinite(lp)]
        if lp.size < 2:
            raise ValueError("calibration needs at least 2 finite held-out log-likelihoods")
        levels = calibration_levels()
        q = np.quantile(lp, levels)
        q = np.maximum.accumulate(q)
        threshold = float(np.interp(default_fpr, levels, q))
        return cls(
            levels=levels,
            log_prob_quantiles=q.tolist(),
            n_rows=int(lp.size),
            default_fpr=default_fpr,
            threshold=threshold,
        )

    def threshold_for(self, fpr: float | None = None) -> float:
        """Log-likelihood below which a row is an anomaly at false-positive rate ``fpr``."""
        if fpr is None:
            return self.threshold
        return float(np.interp(fpr, self.levels, self.log_prob_quantiles))

    def percentile(self, log_prob: np.ndarray) -> np.ndarray:
        """Anomaly percentile in [0, 100]: the share of held-out rows more likely than each row.

        100 means less likely than every held-out row; 50 is a typical row.
        """
        cdf = np.interp(
            np.asarray(log_prob, dtype=np.float64),
            self.log_prob_quantiles,
            self.levels,
            left=0.0,
            right=1.0,
        )
        return 100.0 * (1.0 - cdf)


def roundtrip_error(x: np.ndarray, x_back: np.ndarray, scale: np.ndarray, base: BaseSpec) -> float:
    """Max per-feature round-trip error ``|x - x'| / scale`` (inf if anything is not finite).

    With a uniform base (angles on circles and tori) a difference of one whole period is no
    error: ``-pi`` and ``pi`` are the same angle.
    """
    diff = np.abs(np.asarray(x_back, np.float64) - np.asarray(x, np.float64))
    if base.kind == "uniform" and base.low is not None and base.high is not None:
        period = base.high - base.low
        diff = np.abs(diff - period * np.round(diff / period))
    err = diff / scale
    return float(np.max(err)) if err.size and np.all(np.isfinite(err)) else float("inf")


class Parity(_Strict):
    """What export measured on held-out rows."""

    rows: int
    max_abs_log_prob_diff: float = Field(description="ONNX Runtime vs torch, nats")
    log_prob_tolerance: float
    roundtrip_max_abs_error: float = Field(
        description="max |x - decode(encode(x))| via ONNX, in units of each feature's scale"
    )
    roundtrip_tolerance: float
    torchscript_max_abs_log_prob_diff: float | None = None


class Manifest(_Strict):
    """``manifest.json``: everything needed to serve, audit and reproduce one model version."""

    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    version: int = Field(ge=1)
    family: str
    hyperparameters: dict[str, Any]
    dim: int = Field(ge=1)
    input_shape: list[int] = Field(description="shape of one row before flattening")
    feature_names: list[str]
    dtype: Literal["float32"] = "float32"
    base: BaseSpec = BaseSpec()
    preprocessing: Preprocessing = Preprocessing()
    metrics: Metrics = Metrics()
    calibration: Calibration
    parity: Parity
    graphs: dict[str, str] = Field(
        default_factory=lambda: {"forward": FORWARD_GRAPH, "inverse": INVERSE_GRAPH}
    )
    torchscript: str | None = None
    opset: int
    files: dict[str, str] = Field(description="relative path -> sha256 of every other file")
    library_versions: dict[str, str] = {}
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    training_config: dict[str, Any] = {}

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {self.schema_version} is not supported (expected {SCHEMA_VERSION})"
            )
        if len(self.feature_names) != self.dim:
            raise ValueError(f"{len(self.feature_names)} feature_names for dim {self.dim}")
        if int(np.prod(self.input_shape)) != self.dim:
            raise ValueError(f"input_shape {self.input_shape} does not flatten to dim {self.dim}")
        for role in ("forward", "inverse"):
            if role not in self.graphs:
                raise ValueError(f"graphs must name a '{role}' graph")
        return self


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    path = Path(directory) / MANIFEST_FILE
    path.write_text(manifest.model_dump_json(indent=2) + "\n")
    return path


def load_manifest(directory: Path) -> Manifest:
    """Read and validate ``manifest.json``; raises :class:`ArtifactError` with the reason."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{directory}: no {MANIFEST_FILE}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from e
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise ArtifactError(f"{path}: invalid manifest at {where}: {first['msg']}") from e


def verify_artifact(directory: Path) -> Manifest:
    """Validate the manifest and the sha256 of every file it lists (and the graphs exist)."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    needed = set(manifest.graphs.values()) | ({manifest.torchscript} - {None})
    missing_from_list = needed - set(manifest.files)
    if missing_from_list:
        raise ArtifactError(
            f"{directory}: manifest lists no checksum for {sorted(missing_from_list)}"
        )
    for rel, expected in manifest.files.items():
        path = directory / rel
        if not path.is_file():
            raise ArtifactError(f"{directory}: file {rel} listed in the manifest is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"{directory}: checksum mismatch for {rel} (manifest {expected[:12]}…, "
                f"file {actual[:12]}…): the artifact is corrupted or was modified"
            )
    return manifest


def version_dirs(root: Path, name: str) -> dict[int, Path]:
    """The version directories ``<root>/<name>/<int>/`` that exist, by version number."""
    base = Path(root) / name
    if not base.is_dir():
        return {}
    return {int(p.name): p for p in base.iterdir() if p.is_dir() and p.name.isdigit()}


def next_version(root: Path, name: str) -> int:
    """The next free version number for ``name`` under ``root`` (1 for a new name)."""
    return max(version_dirs(root, name), default=0) + 1

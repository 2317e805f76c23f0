"""Request and response bodies, named by role; they document the API in OpenAPI.

Row-carrying requests are parsed by :mod:`flowserve.service.codec` straight into numpy (faster
and with row-level error messages); these models describe the same JSON for the docs and validate
the small option fields (``fpr``, ``n``, ``temperature``, ``seed``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

__all__ = [
    "CalibrationSummary",
    "DecodeRequest",
    "DecodeResponse",
    "DriftInfo",
    "EncodeResponse",
    "ErrorBody",
    "ErrorDetail",
    "ExplainOptions",
    "ExplainRequest",
    "ExplainResponse",
    "HealthResponse",
    "LogProbResponse",
    "ModelInfo",
    "ModelList",
    "ReadyResponse",
    "ReloadResponse",
    "RowsRequest",
    "SampleRequest",
    "SampleResponse",
    "ScoreOptions",
    "ScoreRequest",
    "ScoreResponse",
    "VersionInfo",
]

Row = list[float] | dict[str, float]


class _Request(BaseModel):
    # strict: "0.1" is not a number and true is not a count
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _integral(cls, value: Any, info: ValidationInfo) -> Any:
        # JSON Schema's integer includes 5.0: integral floats count for int fields (strings and
        # booleans stay refused).
        field = cls.model_fields.get(info.field_name or "")
        types = _types(field.annotation) if field is not None else set()
        if isinstance(value, float) and value.is_integer() and int in types and float not in types:
            return int(value)
        return value


def _types(annotation: Any) -> set[Any]:
    args = get_args(annotation)
    return set().union(*map(_types, args)) if args else {annotation}


class RowsRequest(_Request):
    """Rows in the raw feature space: lists of ``dim`` numbers, or objects keyed by the model's
    feature names (all required, no others)."""

    inputs: list[Row] = Field(
        min_length=1,
        description="rows: [[x1, x2, ...], ...] or [{'feature': value, ...}, ...]",
        examples=[[[0.1, -1.2, 3.4]]],
    )


class ScoreOptions(_Request):
    fpr: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="false-positive rate for is_anomaly, at least the model's min_fpr = "
        "1/(n+1) (default: the model's calibration)",
    )
    fdr: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="false-discovery rate: also select rows by Benjamini-Hochberg on the "
        "batch's p-values (fdr_selected)",
    )


class ScoreRequest(RowsRequest, ScoreOptions):
    """Rows to score for anomalies at a false-positive rate."""


class ExplainOptions(_Request):
    method: Literal["auto", "chain_rule", "shapley"] = Field(
        "auto",
        description="chain_rule: the exact decomposition (models that ship one); shapley: "
        "Shapley values against a baseline; auto: chain_rule where available",
    )
    permutations: int = Field(
        16,
        ge=1,
        le=256,
        description="random feature orders (each with its reverse) when the model has more "
        "than 10 features; ignored (exact) otherwise",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seed of the sampled orders")


class ExplainRequest(RowsRequest, ExplainOptions):
    """Rows whose anomaly scores to attribute to their features."""

    baseline: Row | None = Field(
        None, description="the reference row (default: the model's central row, decode(0))"
    )


class DecodeRequest(_Request):
    """Latent rows (``dim`` numbers each) to map back to the data space."""

    inputs: list[list[float]] = Field(min_length=1, description="latent rows z")


class SampleRequest(_Request):
    """How many rows to draw from the model, at which temperature, with which seed."""

    n: int = Field(1, ge=1, description="rows to draw (at most the server's max_sample)")
    temperature: float = Field(1.0, gt=0.0, description="scales the base noise (at most 10)")
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="same seed, same rows (0 to 2**63 - 1)"
    )


class ModelAnswer(BaseModel):
    model: str = Field(description="the model that answered")
    version: int = Field(description="the version that answered")


class LogProbResponse(ModelAnswer):
    log_prob: list[float | None] = Field(description="log-density per row, nats (null: -inf)")


class ScoreResponse(ModelAnswer):
    fpr: float
    threshold: float = Field(description="log-likelihood below which a row is an anomaly")
    log_prob: list[float | None]
    score: list[float | None] = Field(description="-log_prob")
    percentile: list[float | None] = Field(
        description="0-100: share of held-out rows more likely (null where log_prob is NaN)"
    )
    p_value: list[float] = Field(
        description="conformal p-value (1 + #{calibration scores >= score}) / (n + 1)"
    )
    is_anomaly: list[bool] = Field(description="p_value <= fpr (equivalently log_prob < threshold)")
    fdr: float | None = Field(None, description="the requested false-discovery rate, if any")
    fdr_selected: list[bool] | None = Field(
        None, description="rows selected by Benjamini-Hochberg at fdr (when fdr is given)"
    )


class ExplainResponse(ModelAnswer):
    kind: Literal["chain_rule", "shapley_exact", "shapley_sampled"] = Field(
        description="the exact chain-rule decomposition, exact Shapley values over all 2**dim "
        "hybrid rows, or a sampled estimate"
    )
    feature_names: list[str]
    order: list[str] | None = Field(
        None, description="chain_rule: the features in conditioning order"
    )
    baseline: list[float] | None = Field(description="the reference row (null: chain_rule)")
    baseline_score: float | None = Field(description="-log_prob of the baseline row")
    score: list[float | None] = Field(description="-log_prob of each row")
    contributions: list[list[float | None]] = Field(
        description="per row and feature; each row sums to score - baseline_score (chain_rule: "
        "-log p(x_i | x before i), summing to score)"
    )
    permutations: int | None = Field(description="orders sampled (null: exact)")


class EncodeResponse(ModelAnswer):
    z: list[list[float | None]]
    log_det: list[float | None] = Field(description="log|det dz/dx| incl. preprocessing")


class DecodeResponse(ModelAnswer):
    x: list[list[float | None]]


class SampleResponse(ModelAnswer):
    samples: list[list[float | None]]


class CalibrationSummary(BaseModel):
    default_fpr: float
    threshold: float
    n_rows: int = Field(description="calibration rows n")
    method: str = Field(description="split, cross-fit or holdout")
    min_fpr: float = Field(description="smallest attainable false-positive rate, 1/(n+1)")
    exact: bool = Field(description="conformal p-values from stored scores (else interpolated)")
    folds: int | None = Field(
        None,
        description="cross-fit: the fold models whose scores cross-conformal p-values also "
        "use (threshold is then indicative; a row is flagged when p_value <= fpr)",
    )


class DriftInfo(BaseModel):
    """Served scores of the last window_rows rows against the calibration distribution."""

    window_rows: int
    ks: float = Field(description="KS statistic of the window's p-values against no drift")
    ks_critical: float = Field(description="its 5% critical value")
    psi: float = Field(description="population stability index (> 0.25: major shift)")
    flag_rate: float
    expected_flag_rate: float
    status: Literal["insufficient", "ok", "drift"]


class VersionInfo(BaseModel):
    version: int
    status: Literal["ready", "failed"]
    error: str | None = None
    reload_error: str | None = Field(
        None,
        description="why the last attempt to replace this ready version with changed files "
        "failed (the loaded version kept serving); null when it did not fail",
    )
    reload_failed_at: datetime | None = None
    family: str | None = None
    dim: int | None = None
    input_shape: list[int] | None = None
    feature_names: list[str] | None = None
    base: str | None = None
    data_kind: str | None = Field(
        None, description="real, angle, unit_vector or image: which rows the model takes"
    )
    power_transformed: list[str] | None = Field(
        None,
        description="the features the model puts through a Yeo-Johnson power transform before "
        "standardizing (manifest preprocessing.power_transform); empty when none",
    )
    runtime: str | None = None
    metrics: dict[str, float | int | str | None] | None = Field(
        None, description="bits_per_dim_kind: which bits/dim (a dequantized bound for images)"
    )
    calibration: CalibrationSummary | None = None
    drift: DriftInfo | None = Field(None, description="null until rows have been scored")
    created_at: datetime | None = None


class ModelInfo(BaseModel):
    name: str
    default_version: int | None = Field(description="newest ready version (null: none ready)")
    versions: list[VersionInfo]


class ModelList(BaseModel):
    default: str | None
    models: list[ModelInfo]


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready", "not_ready"]
    models: dict[str, int | None] = Field(description="name -> default version")
    failed: list[str] = Field(default_factory=list, description="'name/version' that failed")


class ReloadResponse(ModelList):
    generation: int


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str = Field(description="machine-readable error code")
    message: str = Field(description="what was wrong, in a sentence")


class ErrorBody(BaseModel):
    error: ErrorDetail

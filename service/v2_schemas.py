"""Open Inference Protocol (V2) bodies, for the OpenAPI document.

The V2 routes parse their bodies themselves (:mod:`flowserve.service.v2_tensors`, which also
reads the binary tensor extension); these models describe the same JSON for clients and docs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = [
    "V2_BODY_SCHEMAS",
    "V2Error",
    "V2InferenceRequest",
    "V2InferenceResponse",
    "V2InputTensor",
    "V2OutputTensor",
    "V2RepositoryIndexRequest",
    "V2RequestedOutput",
]

Datatype = Literal[
    "FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
    "UINT64",
]  # fmt: skip
OutputName = Literal["log_prob", "z", "score", "percentile", "is_anomaly", "p_value"]


class V2InputTensor(BaseModel):
    """The one input, ``x``: ``[N, dim]`` rows, flat or nested row-major ``data`` of the
    declared datatype, or raw bytes after the JSON header (``parameters.binary_data_size``)."""

    name: Literal["x"]
    shape: list[int] = Field(min_length=2, description="[N, dim]", examples=[[1, 4]])
    datatype: Datatype
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size: byte count of this tensor in the binary section"
    )
    data: list[Any] | None = Field(None, examples=[[2184.4, 51.9, 2.14, 4.13]])


class V2RequestedOutput(BaseModel):
    name: OutputName
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data: true to return this output as raw bytes"
    )


class V2InferenceRequest(BaseModel):
    """``parameters`` may carry ``fpr`` (false-positive rate for ``is_anomaly``) and
    ``binary_data_output`` (every output as raw bytes)."""

    id: str | None = None
    inputs: list[V2InputTensor] = Field(min_length=1, max_length=1)
    outputs: list[V2RequestedOutput] | None = Field(None, min_length=1)
    parameters: dict[str, Any] | None = Field(None, examples=[{"fpr": 0.01}])


class V2OutputTensor(BaseModel):
    name: OutputName
    datatype: Literal["FP32", "FP64", "BOOL"]
    shape: list[int]
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size when the output follows the JSON header as bytes"
    )
    data: list[Any] | None = None


class V2InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, float] = Field(description="the fpr and threshold used")
    outputs: list[V2OutputTensor]


class V2RepositoryIndexRequest(BaseModel):
    ready: bool | None = Field(None, description="true: list only versions that are ready")


class V2Error(BaseModel):
    """Every /v2 error: the protocol's shape, one message string."""

    error: str


V2_BODY_SCHEMAS = (V2InferenceRequest, V2RepositoryIndexRequest)

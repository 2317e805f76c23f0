"""Service settings: one pydantic-settings class read from ``FLOWSERVE_*`` environment variables.

The CLI builds the same class from its flags (flags override the environment), and tests pass an
instance straight to :func:`flowserve.service.app.create_app`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

import flowserve

__all__ = ["DEFAULT_MODEL_ROOT", "ServiceSettings"]

# The small model bundled with the package, so a fresh install answers with nothing else.
DEFAULT_MODEL_ROOT = Path(flowserve.__file__).resolve().parent / "default_model"


class ServiceSettings(BaseSettings):
    """Everything the service reads from its environment (prefix ``FLOWSERVE_``)."""

    model_config = SettingsConfigDict(env_prefix="FLOWSERVE_", extra="ignore")

    model_root: Path = Field(
        default_factory=lambda: DEFAULT_MODEL_ROOT, description="<root>/<name>/<version>/"
    )
    default_model: str | None = Field(None, description="default: 'sensors', else the first name")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated; empty means no authentication"
    )
    max_rows: int = Field(100_000, ge=1, description="most rows in one JSON request")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_sample: int = Field(10_000, ge=1)
    max_temperature: float = Field(10.0, gt=0)
    ort_intra_op_threads: int = Field(1, ge=0, description="0 lets ONNX Runtime choose")
    ort_inter_op_threads: int = Field(1, ge=0)
    inference_threads: int = Field(2, ge=1, description="threads running inference calls")
    inline_max_rows: int = Field(
        8,
        ge=0,
        description="requests of at most this many rows may run on the event loop, skipping "
        "the thread hop, when the model's measured cost is under inline_max_ms "
        "(0 = always in a worker thread)",
    )
    inline_max_ms: float = Field(
        0.25,
        ge=0.0,
        description="most event-loop time one inline request may take, as measured for the "
        "model at load (small models only; larger ones always run in worker threads)",
    )
    runtime: Literal["onnx", "torchscript"] = Field(
        "onnx", description="prefer TorchScript where an artifact has one (needs torch)"
    )
    batching: bool = True
    max_batch_size: int = Field(256, ge=1, description="rows; larger requests run unbatched")
    max_batch_delay_ms: float = Field(
        0.0, ge=0.0, description="wait this long to fill a batch; 0 merges only queued requests"
    )
    watch: bool = False
    watch_interval_s: float = Field(2.0, gt=0)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

"""Service settings: one pydantic-settings class read from ``FLOWSERVE_*`` environment variables.

The CLI builds the same class from its flags (flags override the environment), and tests pass an
instance straight to :func:`flowserve.service.app.create_app`.

Keys never come from the command line (``ps`` shows it to every user): model keys come from
``FLOWSERVE_API_KEYS`` or ``FLOWSERVE_API_KEY_FILE``, admin keys from ``FLOWSERVE_ADMIN_KEYS`` or
``FLOWSERVE_ADMIN_KEY_FILE`` (comma- or newline-separated). A key list that is set but holds no key
(``" , "``) is an error, not "authentication off". Admin endpoints are off unless an admin key is
configured: closed by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

import flowserve

__all__ = ["DEFAULT_MODEL_ROOT", "ServiceSettings"]

# The small model bundled with the package, so a fresh install answers with nothing else.
DEFAULT_MODEL_ROOT = Path(flowserve.__file__).resolve().parent / "default_model"


def _split(text: str) -> list[str]:
    return [k.strip() for line in text.splitlines() for k in line.split(",") if k.strip()]


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
        default_factory=list,
        description="model-endpoint keys, comma-separated; unset means no authentication",
    )
    api_key_file: Path | None = Field(None, description="file of model keys (one per line)")
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="keys for /admin/*, comma-separated; unset means admin endpoints are off",
    )
    admin_key_file: Path | None = Field(None, description="file of admin keys (one per line)")
    max_rows: int = Field(100_000, ge=1, description="most rows in one JSON request")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_json_values: int = Field(
        2_000_000,
        ge=64,
        description="most values (numbers, rows, fields) in one JSON body, checked before "
        "parsing; bounds a request's parse memory at about 50 bytes per value",
    )
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
    max_in_flight: int = Field(
        256,
        ge=0,
        description="most requests in progress at once; more get 503 with Retry-After "
        "(health, readiness and metrics are exempt; 0 = no limit)",
    )
    drain_s: float = Field(
        5.0,
        ge=0.0,
        description="on SIGTERM, /readyz answers 503 for this long before the listener closes",
    )
    shutdown_timeout_s: float = Field(
        20.0, gt=0.0, description="after draining, how long in-flight requests may still take"
    )
    keep_alive_timeout_s: float = Field(5.0, gt=0.0, description="idle keep-alive connections")
    header_timeout_s: float = Field(
        10.0, gt=0.0, description="a connection must send its request head within this time"
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = Field(
        True, description="one log line per request (flowserve.access logger, with request ID)"
    )
    log_format: Literal["text", "json"] = Field("text", description="json: one object per line")
    tracing: bool = Field(
        False, description="OpenTelemetry server spans per request (the 'tracing' extra)"
    )

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return []  # unset (e.g. FLOWSERVE_API_KEYS="" from a compose default)
            keys = _split(value)
            if not keys:
                raise ValueError(f"the key list {value!r} holds no key; unset it or name a key")
            return keys
        return value

    @model_validator(mode="after")
    def _read_key_files(self) -> ServiceSettings:
        for file_field, keys_field in (
            ("api_key_file", "api_keys"),
            ("admin_key_file", "admin_keys"),
        ):
            path = getattr(self, file_field)
            if path is None:
                continue
            try:
                text = Path(path).read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"{file_field} {path} cannot be read: {e}") from e
            keys = _split(text)
            if not keys:
                raise ValueError(f"{file_field} {path} holds no key")
            merged = list(dict.fromkeys([*getattr(self, keys_field), *keys]))
            object.__setattr__(self, keys_field, merged)
        if set(self.admin_keys) & set(self.api_keys):
            raise ValueError("an admin key must not also be a model key")
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

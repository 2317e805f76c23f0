"""Service settings: one pydantic-settings class read from ``FLOWSERVE_*`` environment variables.

Each field is the one definition of a setting: the CLI generates its ``flowserve serve`` flag from
the field (flags override the environment), the settings table in ``docs/api.md`` is generated
from it, and tests pass an instance straight to :func:`flowserve.service.app.create_app`.

Keys never come from the command line (``ps`` shows it to every user): model keys come from
``FLOWSERVE_API_KEYS`` or ``FLOWSERVE_API_KEY_FILE``, admin keys from ``FLOWSERVE_ADMIN_KEYS`` or
``FLOWSERVE_ADMIN_KEY_FILE`` (comma- or newline-separated). A key list that is set but holds no key
(``" , "``) is an error, not "authentication off". Admin endpoints are off unless an admin key is
configured: closed by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

import flowserve

__all__ = ["DEFAULT_MODEL_ROOT", "Flag", "ServiceSettings"]

# The small model bundled with the package, so a fresh install answers with nothing else.
DEFAULT_MODEL_ROOT = Path(flowserve.__file__).resolve().parent / "default_model"


def _split(text: str) -> list[str]:
    return [k.strip() for line in text.splitlines() for k in line.split(",") if k.strip()]


@dataclass(frozen=True)
class Flag:
    """How a setting appears on the ``flowserve serve`` command line, where that differs from
    the default (``--<name-with-dashes>``, its value named after its type).

    Arguments:
        name: The flag, when it is not the field name with dashes.
        metavar: What the flag's value is called in ``--help``.
        on_argv: ``False`` for secrets: the flag is refused (``ps`` shows a command line to
            every user), the setting is read from the environment only.
    """

    name: str | None = None
    metavar: str | None = None
    on_argv: bool = True


class ServiceSettings(BaseSettings):
    """Everything the service reads from its environment (prefix ``FLOWSERVE_``).

    Each field is one setting: its environment variable is ``FLOWSERVE_<NAME>``, its
    ``flowserve serve`` flag is generated from the field (:mod:`flowserve.service.cli`), and the
    settings table in ``docs/api.md`` is generated from it too, so the description is its help.
    """

    model_config = SettingsConfigDict(env_prefix="FLOWSERVE_", extra="ignore")

    model_root: Annotated[Path, Flag("--models", "ROOT")] = Field(
        default_factory=lambda: DEFAULT_MODEL_ROOT,
        description="model repository <ROOT>/<name>/<version>/; unset: the bundled default model",
    )
    default_model: Annotated[str | None, Flag(metavar="NAME")] = Field(
        None,
        description="model served at /log_prob etc.; unset: 'sensors' if present, else the "
        "first name",
    )
    host: Annotated[str, Flag(metavar="ADDR")] = Field("127.0.0.1", description="bind address")
    port: Annotated[int, Flag(metavar="PORT")] = Field(
        8000, ge=0, le=65535, description="TCP port; 0 picks a free one"
    )
    workers: int = Field(
        1,
        ge=1,
        description="uvicorn worker processes; with more than 1 each loads the models itself and "
        "watches the model root",
    )
    api_keys: Annotated[list[str], NoDecode, Flag(on_argv=False)] = Field(
        default_factory=list,
        description="model-endpoint keys, comma-separated; unset means no authentication",
    )
    admin_keys: Annotated[list[str], NoDecode, Flag(on_argv=False)] = Field(
        default_factory=list,
        description="keys for /admin/*, comma-separated; unset means admin endpoints are off",
    )
    api_key_file: Annotated[Path | None, Flag(metavar="FILE")] = Field(
        None,
        description="file of model keys (one per line): model endpoints need one of them in "
        "X-API-Key",
    )
    admin_key_file: Annotated[Path | None, Flag(metavar="FILE")] = Field(
        None, description="file of admin keys (one per line) for /admin/*"
    )
    max_rows: int = Field(100_000, ge=1, description="most rows in one JSON request")
    max_body_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="largest request body, in bytes"
    )
    max_json_values: int = Field(
        2_000_000,
        ge=64,
        description="most values (numbers, rows, fields) in one JSON body, checked before "
        "parsing; bounds a request's parse memory at about 50 bytes per value",
    )
    max_sample: int = Field(10_000, ge=1, description="largest n for /sample")
    max_temperature: float = Field(
        10.0, gt=0, description="highest temperature /sample accepts (normal bases)"
    )
    ort_intra_op_threads: int = Field(
        1, ge=0, description="ONNX Runtime threads per inference call; 0 lets ONNX Runtime choose"
    )
    ort_inter_op_threads: int = Field(1, ge=0, description="ONNX Runtime inter-op threads")
    inference_threads: int = Field(
        2,
        ge=1,
        description="threads running inference calls at once; requests of 16384 rows or more "
        "are split across them",
    )
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
        "onnx",
        description="torchscript: serve an artifact's model.pt where it has one (needs torch; "
        "the same answers within the export's parity tolerance)",
    )
    batching: bool = Field(
        True, description="server-side dynamic batching of concurrent requests to one model"
    )
    max_batch_size: int = Field(
        256, ge=1, description="most rows in one merged batch; larger requests run unbatched"
    )
    max_batch_delay_ms: float = Field(
        0.0, ge=0.0, description="wait this long to fill a batch; 0 merges only queued requests"
    )
    fast_lane: bool = Field(
        True,
        description="answer POST inference routes (the model endpoints, V2 infer) without "
        "FastAPI's route matching: the same route functions, errors and OpenAPI, less work per "
        "request",
    )
    watch: bool = Field(False, description="poll the model root and load new or changed versions")
    watch_interval_s: float = Field(
        2.0, gt=0, description="seconds between two polls of the model root (with watch)"
    )
    max_in_flight: int = Field(
        256,
        ge=0,
        description="most requests in progress at once; more get 503 with Retry-After "
        "(health, readiness and metrics are exempt; 0 = no limit)",
    )
    drain_s: float = Field(
        5.0,
        ge=0.0,
        description="on SIGTERM, /readyz answers 503 for this many seconds before the listener "
        "closes",
    )
    shutdown_timeout_s: float = Field(
        20.0,
        gt=0.0,
        description="after draining, how many seconds in-flight requests may still take",
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0.0, description="seconds an idle keep-alive connection stays open"
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0.0,
        description="seconds a connection has to send its request head",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="lowest level of log record written"
    )
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

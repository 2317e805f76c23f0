"""Training configuration: defaults per family, a TOML/YAML file, and flags on top.

Precedence (later wins): generic defaults < the family's defaults < the config file < flags.
A config file holds the same keys as :class:`TrainConfig` (``family``, ``epochs``, ...), with
family-specific flow options under ``params``::

    family = "nsf"
    epochs = 80
    [params]
    bins = 8

The resolved config is saved with every artifact (``config.yaml`` and the manifest's
``training_config``), so a model can be retrained exactly.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flowserve.models.hparams import canonical_hparams

__all__ = [
    "AUTO_FAMILY",
    "CALIBRATION_METHODS",
    "DEFAULT_FAMILY",
    "FAMILY_DEFAULTS",
    "ConfigError",
    "TrainConfig",
    "flow_hparams",
    "load_config_file",
    "parse_param",
    "resolve_config",
]

# "auto" races candidate families and sizes on validation NLL (flowserve.models.selection);
# an explicit family skips the race.
DEFAULT_FAMILY = "auto"
AUTO_FAMILY = "auto"

# With a time budget and no --epochs, the epoch count is only a safety cap.
BUDGET_EPOCH_CAP = 100_000

Calibration = Literal["auto", "split", "cross-fit"]
CALIBRATION_METHODS: tuple[str, ...] = get_args(Calibration)

# Per-family overrides of the generic defaults in TrainConfig; flow options go under "params".
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "planar": {"layers": 16, "lr": 5e-3},
    "radial": {"layers": 16, "lr": 5e-3},
    "nice": {"layers": 8, "hidden": 64},
    "realnvp": {"layers": 8, "hidden": 64},
    "glow": {"layers": 6, "hidden": 64},
    "maf": {"layers": 5, "hidden": 64},
    "iaf": {"layers": 5, "hidden": 64},
    "nsf": {"layers": 4, "hidden": 64, "params": {"bins": 8}},
    "nsf_ar": {"layers": 3, "hidden": 64, "params": {"bins": 8}},
    "ffjord": {"layers": 1, "hidden": 64, "epochs": 50, "batch_size": 512},
    # Glow's learned prior at each split, weight decay and variational dequantization: on digits
    # 2.307 -> 2.250 -> 2.214 -> 2.172 bits/dim, one added at a time (benchmarks/README).
    "glow_image": {
        "weight_decay": 1e-3,
        "dequantization": "variational",
        "params": {"learned_prior": True},
    },
}


class ConfigError(ValueError):
    """A config file or option is invalid; the message names the key or the file."""


def _message(error: ValidationError) -> str:
    """One line for the first problem, ``key must be ..., got value``."""
    first = error.errors()[0]
    key = str(first["loc"][0]) if first["loc"] else ""
    ctx, value = first.get("ctx", {}), first.get("input")
    kind = first["type"]
    if kind in ("greater_than", "greater_than_equal"):
        op, bound = (">", ctx["gt"]) if kind == "greater_than" else (">=", ctx["ge"])
        return f"{key} must be {op} {bound:g}, got {value}"
    if kind == "literal_error":
        choices = get_args(TrainConfig.model_fields[key].annotation)
        return f"{key} must be one of {', '.join(choices)}, got {value!r}"
    return f"{key}: {first['msg']}, got {value!r}" if key else first["msg"]


Positive = Annotated[int, Field(ge=1)]


class TrainConfig(BaseModel):
    """Everything that decides a training run (flow, optimization, data split, hardware).

    Immutable; an invalid value raises :class:`ConfigError` naming the key.

    Example:
        >>> TrainConfig(family="maf", epochs=3).max_epochs
        3
        >>> TrainConfig(epochs=0)
        Traceback (most recent call last):
            ...
        flowserve.models.config.ConfigError: epochs must be >= 1, got 0
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str = DEFAULT_FAMILY
    layers: Positive | None = None  # None: the family's default
    hidden: Positive | None = None
    params: dict[str, Any] = Field(default_factory=dict)  # family-specific flow options
    epochs: Positive | None = None  # None: 100, or BUDGET_EPOCH_CAP under a time budget
    batch_size: Positive | None = None  # None: scaled to the training rows (batch_size_for)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = 0.0
    # cosine (on the share of the budget or epochs used) | plateau | none
    scheduler: Literal["cosine", "plateau", "none"] = "cosine"
    grad_clip: float = Field(5.0, ge=0)
    patience: Positive = 20  # early-stopping epochs without a better validation NLL
    seed: int = 0
    # wall-clock seconds for everything before export
    time_budget: float | None = Field(None, gt=0)
    threads: Positive = 1  # torch intra-op threads while training (small flows: 1 is fastest)
    # image families: uniform noise, or a noise model q(u | x) learned with the flow
    dequantization: Literal["uniform", "variational"] = "uniform"
    # real columns: a Yeo-Johnson power transform of clearly skewed columns (auto), or none
    power_transform: Literal["auto", "none"] = "auto"
    calibration: Calibration = "auto"  # flowserve.models.calibrate
    calibration_folds: int = Field(5, ge=2)
    max_rows: int | None = None
    val_fraction: float | None = None  # None: sized for the table (data.split_indices)
    test_fraction: float = 0.1
    nan_policy: Literal["drop", "error"] = "drop"
    accelerator: str = "auto"
    devices: str | int = "auto"
    strategy: str = "auto"
    num_nodes: Positive = 1

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise ConfigError(_message(e)) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied, checked like a new config."""
        return TrainConfig(**{**self.model_dump(), **changes})

    @property
    def max_epochs(self) -> int:
        """The epoch cap: ``epochs`` if set, else 100 (or a safety cap under a time budget)."""
        if self.epochs is not None:
            return self.epochs
        return BUDGET_EPOCH_CAP if self.time_budget is not None else 100

    def batch_size_for(self, rows: int) -> int:
        """``batch_size`` if set, else about 1/16 of the training rows as a power of two in
        [32, 256]: small tables get enough steps per epoch, large ones efficient batches. (Under
        a time budget more, smaller steps beat fewer, larger ones: 256 rather than 512 on gmm16's
        16,000 rows at 60 s, maf 5x128 18.635 -> 18.610 nats, nsf_ar 5x128 18.663 -> 18.579.)"""
        if self.batch_size is not None:
            return self.batch_size
        target = max(rows, 1) / 16
        return int(min(256, max(32, 2 ** round(math.log2(max(target, 1.0))))))


_KEYS = set(TrainConfig.model_fields)


def _check_keys(values: dict[str, Any], source: str) -> None:
    unknown = sorted(set(values) - _KEYS)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}"
        )


def load_config_file(path: Path | str) -> dict[str, Any]:
    """Read a ``.toml`` or ``.yaml``/``.yml`` config file into a dict of known keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    suffix = path.suffix.lower()
    import tomllib  # Python >= 3.11; only config files need it

    try:
        if suffix == ".toml":
            values = tomllib.loads(path.read_text())
        elif suffix in (".yaml", ".yml"):
            values = yaml.safe_load(path.read_text()) or {}
        else:
            raise ConfigError(f"{path}: unknown config format {suffix!r}; use .toml or .yaml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot parse ({str(e).splitlines()[0]})") from e
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values")
    _check_keys(values, str(path))
    if "params" in values and not isinstance(values["params"], dict):
        raise ConfigError(f"{path}: 'params' must be a mapping of flow options")
    return values


def parse_param(text: str) -> tuple[str, Any]:
    """``key=value`` from ``--param``; the value is read as YAML (``8`` is an int)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--param expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def resolve_config(
    file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Merge defaults, the family's defaults, file values and overrides (``None`` = unset)."""
    file_values = dict(file_values or {})
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    _check_keys(overrides, "options")
    family = str(overrides.get("family", file_values.get("family", DEFAULT_FAMILY))).lower()
    merged: dict[str, Any] = {"family": family}
    params: dict[str, Any] = {}
    for layer in (FAMILY_DEFAULTS.get(family, {}), file_values, overrides):
        params.update(layer.get("params") or {})
        merged.update({k: v for k, v in layer.items() if k != "params"})
    merged["family"] = family
    try:
        merged["params"] = canonical_hparams(params)  # old option names, with a warning
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return TrainConfig(**merged)


def flow_hparams(config: TrainConfig, builder: Any) -> dict[str, Any]:
    """The keyword arguments for ``build_flow``: ``layers``/``hidden`` where the family takes
    them (planar has no hidden width), plus every family-specific ``params`` entry."""
    try:
        sig = inspect.signature(builder)
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        accepted = set(sig.parameters)
    except (TypeError, ValueError):
        accepts_any, accepted = True, set()
    hparams: dict[str, Any] = {}
    for key in ("layers", "hidden"):
        value = getattr(config, key)
        if value is not None and (accepts_any or key in accepted):
            hparams[key] = value
    hparams.update(config.params)
    return hparams

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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

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
CALIBRATION_METHODS = ("auto", "split", "cross-fit")

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
}


class ConfigError(ValueError):
    """A config file or option is invalid; the message names the key or the file."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (flow, optimization, data split, hardware)."""

    family: str = DEFAULT_FAMILY
    layers: int | None = None  # None: the family's default
    hidden: int | None = None
    params: dict[str, Any] = field(default_factory=dict)  # family-specific flow options
    epochs: int | None = None  # None: 100, or BUDGET_EPOCH_CAP under a time budget
    batch_size: int | None = None  # None: scaled to the training rows (batch_size_for)
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str = "cosine"  # cosine (on the share of the budget or epochs used) | plateau | none
    grad_clip: float = 5.0
    patience: int = 20  # early-stopping epochs without a better validation NLL
    seed: int = 0
    time_budget: float | None = None  # wall-clock seconds for everything before export
    threads: int = 1  # torch intra-op threads while training (small flows: 1 is fastest)
    calibration: str = "auto"  # auto | split | cross-fit (flowserve.models.calibrate)
    calibration_folds: int = 5
    max_rows: int | None = None
    val_fraction: float | None = None  # None: sized for the table (data.split_indices)
    test_fraction: float = 0.1
    nan_policy: str = "drop"
    accelerator: str = "auto"
    devices: str | int = "auto"
    strategy: str = "auto"
    num_nodes: int = 1

    def __post_init__(self) -> None:
        checks = [
            (self.epochs is None or self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (
                self.batch_size is None or self.batch_size >= 1,
                f"batch_size must be >= 1, got {self.batch_size}",
            ),
            (
                self.time_budget is None or self.time_budget > 0,
                f"time_budget must be > 0 seconds, got {self.time_budget}",
            ),
            (self.threads >= 1, f"threads must be >= 1, got {self.threads}"),
            (
                self.calibration in CALIBRATION_METHODS,
                f"calibration must be one of {', '.join(CALIBRATION_METHODS)}, "
                f"got {self.calibration!r}",
            ),
            (
                self.calibration_folds >= 2,
                f"calibration_folds must be >= 2, got {self.calibration_folds}",
            ),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}"),
            (self.num_nodes >= 1, f"num_nodes must be >= 1, got {self.num_nodes}"),
            (
                self.scheduler in ("cosine", "plateau", "none"),
                f"scheduler must be cosine, plateau or none, got {self.scheduler!r}",
            ),
            (
                self.nan_policy in ("drop", "error"),
                f"nan_policy must be drop or error, got {self.nan_policy!r}",
            ),
            (self.layers is None or self.layers >= 1, f"layers must be >= 1, got {self.layers}"),
            (self.hidden is None or self.hidden >= 1, f"hidden must be >= 1, got {self.hidden}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def max_epochs(self) -> int:
        """The epoch cap: ``epochs`` if set, else 100 (or a safety cap under a time budget)."""
        if self.epochs is not None:
            return self.epochs
        return BUDGET_EPOCH_CAP if self.time_budget is not None else 100

    def batch_size_for(self, rows: int) -> int:
        """``batch_size`` if set, else about 1/16 of the training rows as a power of two in
        [32, 512]: small tables get enough steps per epoch, large ones efficient batches."""
        if self.batch_size is not None:
            return self.batch_size
        target = max(rows, 1) / 16
        return int(min(512, max(32, 2 ** round(math.log2(max(target, 1.0))))))


_KEYS = {f.name for f in fields(TrainConfig)}


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
        return TrainConfig(**merged)
    except TypeError as e:
        raise ConfigError(str(e)) from e
    except ValueError as e:
        raise ConfigError(str(e)) from e


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

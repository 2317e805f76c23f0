"""``flowserve serve``: serve a model repository over HTTP with uvicorn.

The flags are generated from the fields of :class:`~flowserve.service.settings.ServiceSettings`
(:func:`setting_flags`), so a new setting gets its flag, its ``--help`` line and its row in the
settings table of ``docs/api.md`` (:func:`settings_table`) from its one definition. Flags override
``FLOWSERVE_*`` environment variables, which override the defaults.

With ``--workers`` above 1 each uvicorn worker process builds its own app (and loads the models)
from the environment, and the workers share their Prometheus metrics through a multiprocess
directory that lives as long as the command (see
:func:`~flowserve.service.metrics.multiprocess_metrics_dir`).
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

__all__ = [
    "SettingFlag",
    "configure",
    "run",
    "setting_flags",
    "settings_from_args",
    "settings_table",
]

_KEYS_ON_ARGV = (
    "{flag} is not accepted: keys on the command line are visible to every user in ps; "
    "set FLOWSERVE_API_KEYS or pass --api-key-file FILE (admin keys: FLOWSERVE_ADMIN_KEYS or "
    "--admin-key-file FILE)"
)


@dataclass(frozen=True)
class SettingFlag:
    """One setting as the command line and the docs show it, derived from its field.

    Arguments:
        field: The :class:`~flowserve.service.settings.ServiceSettings` field name.
        flag: The ``flowserve serve`` option, e.g. ``--max-rows``.
        env: The environment variable, e.g. ``FLOWSERVE_MAX_ROWS``.
        default: The default, or ``None`` where the description tells what unset means.
        help: The field's description.
        on_argv: ``False`` for secrets, which only the environment may set.
        kind: What argparse converts the value to (``bool``: an on/off flag pair).
        choices: The allowed values of a ``Literal`` setting.
        metavar: What ``--help`` calls the value.
    """

    field: str
    flag: str
    env: str
    default: object
    help: str
    on_argv: bool
    kind: type
    choices: tuple[str, ...] | None
    metavar: str | None


def _value_type(annotation: Any) -> tuple[type, tuple[str, ...] | None]:
    """The argparse type of a field's annotation, and its choices: ``X | None`` is ``X``, a
    ``Literal`` is text with choices, and paths and names are text (pydantic converts them)."""
    inner = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return str, tuple(inner)
    if get_origin(annotation) in (Union, UnionType) and len(inner) == 1:
        return _value_type(inner[0])
    return (annotation, None) if annotation in (bool, int, float) else (str, None)


def _metavar(name: str, kind: type) -> str:
    if name.endswith("_ms"):
        return "MS"
    if name.endswith("_s"):
        return "SECONDS"
    return "N" if kind is int else "X" if kind is float else "VALUE"


def _default(info: FieldInfo) -> object:
    default = info.get_default(call_default_factory=False)
    # Computed defaults (the bundled model root, empty key lists): the description tells them.
    return None if default is PydanticUndefined else default


def _shown(value: object, true: str = "true", false: str = "false") -> str:
    if isinstance(value, bool):
        return true if value else false
    return f"{value:g}" if isinstance(value, float) else str(value)


def setting_flags() -> list[SettingFlag]:
    """Every setting's flag, environment variable, default and help, in the class's order.

    The settings class is the only definition: a new field gets its flag, its ``--help`` line
    and its row in the docs' settings table from here.
    """
    from .settings import Flag, ServiceSettings

    prefix = ServiceSettings.model_config.get("env_prefix", "")
    flags = []
    for name, info in ServiceSettings.model_fields.items():
        spec = next((m for m in info.metadata if isinstance(m, Flag)), Flag())
        kind, choices = _value_type(info.annotation)
        plain = choices is None and kind is not bool  # argparse names choices and on/off itself
        flags.append(
            SettingFlag(
                field=name,
                flag=spec.name or "--" + name.replace("_", "-"),
                env=f"{prefix}{name}".upper(),
                default=_default(info),
                help=info.description or "",
                on_argv=spec.on_argv,
                kind=kind,
                choices=choices,
                metavar=spec.metavar or (_metavar(name, kind) if plain else None),
            )
        )
    return flags


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Every flag has an environment variable (shown with it); a flag overrides it. Keys "
        "come from the environment or a key file only, never from the command line."
    )
    for s in setting_flags():
        if not s.on_argv:
            # Accepted only to refuse it with a pointer to the safe ways (see run).
            parser.add_argument(s.flag, dest=s.field, help=argparse.SUPPRESS)
            continue
        where = s.env if s.default is None else f"default {_shown(s.default, 'on', 'off')}; {s.env}"
        text = f"{s.help} ({where})".replace("%", "%%")  # argparse formats help with %
        if s.kind is bool:
            parser.add_argument(
                s.flag, dest=s.field, action=argparse.BooleanOptionalAction, help=text
            )
        else:
            parser.add_argument(
                s.flag, dest=s.field, type=s.kind, choices=s.choices, metavar=s.metavar, help=text
            )


def settings_table() -> str:
    """The settings as a Markdown table (setting, environment variable, flag, default, meaning):
    what ``docs/api.md`` holds (``python scripts/api_docs.py`` rewrites it there)."""
    rows = [
        "| setting | environment | flag | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for s in setting_flags():
        flag = f"`{s.flag}`" if s.on_argv else "(environment only)"
        default = "" if s.default is None else f"`{_shown(s.default)}`"
        meaning = s.help.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        rows.append(f"| `{s.field}` | `{s.env}` | {flag} | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


def settings_from_args(args: argparse.Namespace) -> Any:
    from .settings import ServiceSettings

    overrides = {
        s.field: getattr(args, s.field)
        for s in setting_flags()
        if s.on_argv and getattr(args, s.field, None) is not None
    }
    return ServiceSettings(**overrides)


def _export_env(settings: Any) -> None:
    # Worker processes (--workers > 1) rebuild the app from the environment.
    for s in setting_flags():
        value = getattr(settings, s.field)
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(value)
        os.environ[s.env] = _shown(value) if isinstance(value, bool) else str(value)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from .app import create_app
    from .metrics import multiprocess_metrics_dir
    from .request_log import configure_logging
    from .server import serve

    log = logging.getLogger("flowserve.service")
    on_argv = [
        s.flag
        for s in setting_flags()
        if not s.on_argv and getattr(args, s.field, None) is not None
    ]
    if on_argv:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        log.error(_KEYS_ON_ARGV.format(flag=on_argv[0]))
        return 2
    try:
        settings = settings_from_args(args)
    except ValidationError as e:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            log.error("invalid setting %s: %s", where, err["msg"])
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if not settings.model_root.is_dir():
        log.error("model root %s does not exist (pass --models ROOT)", settings.model_root)
        return 2
    if settings.workers == 1:
        return serve(settings, create_app(settings))
    if not settings.watch:
        # /admin/reload reaches only the worker that answers it; watching the model root
        # is what brings every worker to the new versions.
        log.info(
            "%d workers: watching the model root so every worker picks up new versions",
            settings.workers,
        )
        settings = settings.model_copy(update={"watch": True})
    _export_env(settings)
    # Set before uvicorn spawns the workers: they import prometheus-client with it set.
    with multiprocess_metrics_dir():
        return serve(settings, "flowserve.service.app:create_app")

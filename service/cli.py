"""``flowserve serve``: serve a model repository over HTTP with uvicorn.

Flags override ``FLOWSERVE_*`` environment variables, which override the defaults in
:class:`~flowserve.service.settings.ServiceSettings`. With ``--workers`` above 1 each uvicorn
worker process builds its own app (and loads the models) from the environment, and the workers
share their Prometheus metrics through a multiprocess directory that lives as long as the command
(see :func:`~flowserve.service.metrics.multiprocess_metrics_dir`).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

__all__ = ["configure", "run", "settings_from_args"]

# flag -> settings field (None values are left to the environment / defaults)
_FLAGS: dict[str, str] = {
    "models": "model_root",
    "default_model": "default_model",
    "host": "host",
    "port": "port",
    "workers": "workers",
    "api_key_file": "api_key_file",
    "admin_key_file": "admin_key_file",
    "max_rows": "max_rows",
    "max_body_bytes": "max_body_bytes",
    "max_sample": "max_sample",
    "ort_intra_op_threads": "ort_intra_op_threads",
    "ort_inter_op_threads": "ort_inter_op_threads",
    "inference_threads": "inference_threads",
    "inline_max_rows": "inline_max_rows",
    "inline_max_ms": "inline_max_ms",
    "runtime": "runtime",
    "batching": "batching",
    "max_batch_size": "max_batch_size",
    "max_batch_delay_ms": "max_batch_delay_ms",
    "watch": "watch",
    "log_level": "log_level",
    "access_log": "access_log",
    "log_format": "log_format",
    "tracing": "tracing",
    "max_in_flight": "max_in_flight",
    "drain_s": "drain_s",
    "shutdown_timeout_s": "shutdown_timeout_s",
}

_KEYS_ON_ARGV = (
    "--api-keys is not accepted: keys on the command line are visible to every user in ps; "
    "set FLOWSERVE_API_KEYS or pass --api-key-file FILE (admin keys: FLOWSERVE_ADMIN_KEYS or "
    "--admin-key-file FILE)"
)


def configure(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a(
        "--models",
        metavar="ROOT",
        help="model repository <ROOT>/<name>/<version>/ (default: the bundled default model)",
    )
    a("--default-model", metavar="NAME", help="model served at /log_prob etc. (default: sensors)")
    a("--host", help="bind address (default 127.0.0.1)")
    a("--port", type=int, help="port (default 8000; 0 picks a free one)")
    a("--workers", type=int, help="uvicorn worker processes (default 1)")
    a("--api-keys", help=argparse.SUPPRESS)  # refused with a pointer to the safe ways
    a(
        "--api-key-file",
        metavar="FILE",
        help="model endpoints need one of the keys in FILE (one per line; or FLOWSERVE_API_KEYS)",
    )
    a(
        "--admin-key-file",
        metavar="FILE",
        help="/admin/* needs one of the keys in FILE (or FLOWSERVE_ADMIN_KEYS); without admin "
        "keys the admin endpoints are off",
    )
    a("--max-rows", type=int, help="most rows in one JSON request")
    a("--max-body-bytes", type=int, help="largest request body")
    a("--max-sample", type=int, help="largest n for /sample")
    a("--ort-intra-op-threads", type=int, help="ONNX Runtime threads per call")
    a("--ort-inter-op-threads", type=int, help="ONNX Runtime inter-op threads")
    a("--inference-threads", type=int, help="concurrent inference calls")
    a("--inline-max-rows", type=int, help="run tiny requests on the event loop (small models)")
    a("--inline-max-ms", type=float, help="most measured cost of an inline request (0: never)")
    a("--runtime", choices=["onnx", "torchscript"], help="prefer TorchScript (needs torch)")
    a(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="server-side dynamic batching (default on)",
    )
    a("--max-batch-size", type=int, help="rows per merged batch")
    a("--max-batch-delay-ms", type=float, help="wait up to this long to fill a batch")
    a(
        "--watch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="poll the model root and reload on change",
    )
    a("--max-in-flight", type=int, help="most requests in progress; more get 503 (0: no limit)")
    a("--drain-s", type=float, help="on SIGTERM, /readyz is 503 this long before closing")
    a("--shutdown-timeout-s", type=float, help="then wait this long for in-flight requests")
    a("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    a(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one log line per request, with its X-Request-ID (default on)",
    )
    a("--log-format", choices=["text", "json"], help="json: one JSON object per log line")
    a(
        "--tracing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="OpenTelemetry spans per request (needs the 'tracing' extra)",
    )


def settings_from_args(args: argparse.Namespace) -> Any:
    from .settings import ServiceSettings

    overrides = {
        field: getattr(args, flag)
        for flag, field in _FLAGS.items()
        if getattr(args, flag, None) is not None
    }
    return ServiceSettings(**overrides)


def _export_env(settings: Any) -> None:
    # Worker processes (--workers > 1) rebuild the app from the environment.
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(value)
        os.environ[f"FLOWSERVE_{name.upper()}"] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from .app import create_app
    from .metrics import multiprocess_metrics_dir
    from .request_log import configure_logging
    from .server import serve

    log = logging.getLogger("flowserve.service")
    if getattr(args, "api_keys", None) is not None:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
        log.error(_KEYS_ON_ARGV)
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

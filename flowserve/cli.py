"""The ``flowserve`` console command.

Each subcommand lives with its side and is imported only when called, so ``flowserve serve``
never imports torch and ``flowserve train`` never imports FastAPI; ``flowserve verify`` belongs to
neither side (a serving install verifies artifacts too). A subcommand module provides
``configure(parser)`` (adds its arguments) and ``run(args) -> int`` (the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("flowserve.models.train_cli", "train a flow on a data file and export an artifact"),
    "verify": ("flowserve.verify", "check an artifact's checksums and ONNX parity"),
    "serve": ("flowserve.service.cli", "serve a model repository over HTTP"),
    "score": ("flowserve_client.cli", "score a CSV/Parquet file against a running service"),
    "batch-score": ("flowserve.service.bulk_cli", "score a Parquet/CSV file locally or on Dask"),
}


def _configure(parser: argparse.ArgumentParser, module: str) -> None:
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        parser.error(f"this subcommand needs an extra that is not installed ({e.name}): {e}")
    mod.configure(parser)


def _version() -> str:
    from flowserve import __version__

    return f"flowserve {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="flowserve", add_help=False)
    parser.add_argument("command", nargs="?")
    known, _ = parser.parse_known_args(argv[:1])
    full = _full_parser(known.command)
    args = full.parse_args(argv)
    if not getattr(args, "command", None):
        full.print_help()
        return 2
    mod = importlib.import_module(args._module)
    return int(mod.run(args) or 0)


def _full_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowserve",
        description="Normalizing flows trained on your data, served over HTTP.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == command:
            _configure(p, module)
    return parser


if __name__ == "__main__":
    sys.exit(main())

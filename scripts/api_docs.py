"""Write the generated tables of docs/api.md: the error codes and the settings.

Each table has one definition in code (``ERROR_CODES`` in
``clients/python/flowserve_client/_protocol.py``; the fields of ``ServiceSettings``, rendered by
``flowserve.service.cli.settings_table``); docs/api.md holds a rendering of it between two
marker comments, which tests compare with :func:`update`. After adding or changing an error
code or a setting, run::

    python scripts/api_docs.py           # rewrite the tables in docs/api.md
    python scripts/api_docs.py --check   # exit 1 when docs/api.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from flowserve.service.cli import settings_table
from flowserve_client._protocol import ERROR_CODES

__all__ = ["DOCS", "TABLES", "error_table", "update"]

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def error_table() -> str:
    """The Markdown table of every error code."""
    lines = [
        "| code | status | client exception | when (details) |",
        "|---|---|---|---|",
        *(f"| `{e.code}` | {e.status} | `{e.exception}` | {e.meaning} |" for e in ERROR_CODES),
    ]
    return "\n".join(lines) + "\n"


# Each generated block: (begin marker, end marker, what writes what lies between them).
TABLES: tuple[tuple[str, str, Callable[[], str]], ...] = (
    (
        "<!-- error codes: written by scripts/api_docs.py -->\n",
        "<!-- end of error codes -->\n",
        error_table,
    ),
    (
        "<!-- settings table: written by scripts/api_docs.py from ServiceSettings -->\n",
        "<!-- end of settings table -->\n",
        settings_table,
    ),
)


def update(text: str) -> str:
    """``text`` (docs/api.md) with every generated table replaced by its current rendering."""
    for begin, end, render in TABLES:
        head, found, rest = text.partition(begin)
        _, found_end, tail = rest.partition(end)
        if not found or not found_end:
            raise ValueError(f"docs/api.md lacks the markers {begin.strip()} ... {end.strip()}")
        text = head + begin + render() + end + tail
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    text = DOCS.read_text()
    fresh = update(text)
    if args.check:
        if fresh != text:
            print(f"{DOCS} is out of date: run python scripts/api_docs.py", file=sys.stderr)
            return 1
        return 0
    if fresh != text:
        DOCS.write_text(fresh)
        print(f"rewrote the generated tables in {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

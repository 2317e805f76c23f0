"""Write the error-code table of docs/api.md from the one table of error codes.

The table is ``ERROR_CODES`` in ``clients/python/flowserve_client/_protocol.py``; the docs hold a
rendering of it between two marker comments, which tests/test_protocol.py compares with
:func:`render`. After adding or changing an error code, run::

    python scripts/error_codes_doc.py           # rewrite the table in docs/api.md
    python scripts/error_codes_doc.py --check   # exit 1 when docs/api.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flowserve_client._protocol import ERROR_CODES

__all__ = ["BEGIN", "DOCS", "END", "render", "update"]

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"
BEGIN = "<!-- error codes: written by scripts/error_codes_doc.py -->"
END = "<!-- end of error codes -->"


def render() -> str:
    """The Markdown table of every error code, between the markers."""
    lines = [
        BEGIN,
        "| code | status | client exception | when (details) |",
        "|---|---|---|---|",
        *(f"| `{e.code}` | {e.status} | `{e.exception}` | {e.meaning} |" for e in ERROR_CODES),
        END,
    ]
    return "\n".join(lines)


def update(text: str) -> str:
    """``text`` (docs/api.md) with its error-code table replaced by :func:`render`."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"docs/api.md lacks the markers {BEGIN!r} ... {END!r}")
    return text[:start] + render() + text[end + len(END) :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    text = DOCS.read_text()
    fresh = update(text)
    if args.check:
        if fresh != text:
            print(f"{DOCS} is out of date: run python scripts/error_codes_doc.py", file=sys.stderr)
            return 1
        return 0
    DOCS.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())

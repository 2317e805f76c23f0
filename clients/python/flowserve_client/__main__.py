"""``python -m flowserve_client`` / ``flowserve-score``: the score command without flowserve."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .cli import configure, run

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flowserve-score",
        description="Score a CSV/Parquet file against a running flowserve service.",
    )
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

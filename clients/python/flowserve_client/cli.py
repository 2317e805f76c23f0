"""``flowserve score``: score a CSV or Parquet file against a running service, in chunks.

The file is streamed (pyarrow record batches for Parquet, pandas ``chunksize`` for CSV), each
chunk is scored with :class:`FlowClient` (``.npy`` bodies for large chunks) and its scores are
appended to a CSV on stdout (or ``--output``), in input row order. Columns: the id column when
``--id-column`` is given, then ``log_prob``, ``score``, ``percentile``, ``is_anomaly``.
Progress goes to stderr. Needs pandas, pyarrow (Parquet only) and tqdm.

Example::

    flowserve score --url http://localhost:8000 --id-column id data.parquet > scores.csv
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from ._client import FlowClient
from ._exceptions import FlowServeError, InvalidInput

__all__ = ["OUTPUT_COLUMNS", "configure", "iter_chunks", "run", "score_file"]

OUTPUT_COLUMNS = ["log_prob", "score", "percentile", "is_anomaly"]
DEFAULT_CHUNK_ROWS = 10_000


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``score`` arguments to ``parser``."""
    parser.add_argument("input", help="a .csv or .parquet file ('-' reads CSV from stdin)")
    parser.add_argument(
        "--url",
        default=os.environ.get("FLOWSERVE_URL"),
        required="FLOWSERVE_URL" not in os.environ,
        help="service base URL, e.g. http://localhost:8000 (env FLOWSERVE_URL)",
    )
    parser.add_argument("--model", help="model name (default: the service's default model)")
    parser.add_argument("--version", type=int, help="model version (default: the newest)")
    parser.add_argument("--id-column", help="input column copied to the output to join on")
    parser.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK_ROWS, help="rows per request"
    )
    parser.add_argument("--fpr", type=float, help="false-positive rate for is_anomaly")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("FLOWSERVE_API_KEY"),
        help="API key (env FLOWSERVE_API_KEY)",
    )
    parser.add_argument("--output", "-o", help="write the CSV here instead of stdout")
    parser.add_argument(
        "--concurrency", type=int, default=1, help="requests in flight at once (order is kept)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def iter_chunks(path: str, chunk_rows: int) -> tuple[Iterator[Any], int | None]:
    """DataFrame chunks of a CSV or Parquet file, and its row count when cheaply known."""
    if chunk_rows < 1:
        raise ValueError(f"--chunk-size must be at least 1, got {chunk_rows}")
    import pandas as pd

    if path == "-":
        return iter(pd.read_csv(sys.stdin, chunksize=chunk_rows)), None
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"input file {path} does not exist")
    suffix = file.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(file)
        batches = (b.to_pandas() for b in parquet.iter_batches(batch_size=chunk_rows))
        return batches, parquet.metadata.num_rows
    if suffix in (".csv", ".txt") or file.name.lower().endswith((".csv.gz", ".csv.bz2")):
        return iter(pd.read_csv(file, chunksize=chunk_rows)), None
    raise ValueError(f"input {path}: unknown file type {suffix!r}; use .csv or .parquet")


def score_file(
    client: FlowClient,
    chunks: Iterator[Any],
    out: IO[str],
    *,
    id_column: str | None = None,
    fpr: float | None = None,
    concurrency: int = 1,
    progress: Any = None,
) -> int:
    """Score every chunk and append CSV rows to ``out`` in input order; returns the row count."""
    import pandas as pd

    def score(chunk: pd.DataFrame) -> pd.DataFrame:
        result = client.score(chunk, fpr=fpr)
        frame = result.to_frame()
        if id_column is not None:
            frame.insert(0, id_column, chunk[id_column].to_numpy())
        return frame

    rows = 0
    header = True
    # A bounded window of futures, consumed in submission order, keeps output order and memory.
    with ThreadPoolExecutor(max_workers=max(concurrency, 1)) as pool:
        pending: deque[Future[pd.DataFrame]] = deque()
        for chunk in chunks:
            if id_column is not None and id_column not in chunk.columns:
                raise ValueError(f"--id-column {id_column!r} is not a column of the input")
            pending.append(pool.submit(score, chunk))
            while len(pending) >= max(concurrency, 1):
                rows += _write(pending.popleft().result(), out, header, progress)
                header = False
        while pending:
            rows += _write(pending.popleft().result(), out, header, progress)
            header = False
    return rows


def _write(frame: Any, out: IO[str], header: bool, progress: Any) -> int:
    frame.to_csv(out, header=header, index=False)
    if progress is not None:
        progress.update(len(frame))
    return len(frame)


def run(args: argparse.Namespace) -> int:
    """Run ``flowserve score``; returns the exit status: 0 ok, 1 the service failed or could not
    be reached, 2 bad arguments or bad input (also when the service rejects the rows)."""
    if args.version is not None and args.model is None:
        print("flowserve score: error: --version needs --model", file=sys.stderr)
        return 2
    try:
        chunks, total = iter_chunks(args.input, args.chunk_size)
    except (OSError, ValueError) as e:
        print(f"flowserve score: error: {e}", file=sys.stderr)
        return 2
    try:
        from tqdm import tqdm
    except ImportError:  # the progress bar is optional
        tqdm = None
    with ExitStack() as stack:
        out = stack.enter_context(open(args.output, "w", newline="")) if args.output else sys.stdout
        progress = None
        if tqdm is not None and not args.no_progress:
            progress = stack.enter_context(
                tqdm(total=total, unit="rows", file=sys.stderr, desc="scoring")
            )
        client = stack.enter_context(
            FlowClient(
                args.url,
                api_key=args.api_key,
                model=args.model,
                version=args.version,
                timeout=args.timeout,
            )
        )
        try:
            n = score_file(
                client,
                chunks,
                out,
                id_column=args.id_column,
                fpr=args.fpr,
                concurrency=args.concurrency,
                progress=progress,
            )
        except FlowServeError as e:
            print(f"flowserve score: error: {e}", file=sys.stderr)
            return 2 if isinstance(e, InvalidInput) else 1
        except (ValueError, OSError) as e:
            print(f"flowserve score: error: {e}", file=sys.stderr)
            return 2
    if args.output:
        print(f"scored {n} rows -> {args.output}", file=sys.stderr)
    return 0

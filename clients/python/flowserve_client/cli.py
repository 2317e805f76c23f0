"""``flowserve score``: score a CSV or Parquet file against a running service, in chunks.

The file is streamed (the standard library's ``csv`` for CSV, pyarrow record batches for
Parquet), each chunk is scored with :class:`FlowClient` (``.npy`` bodies for large chunks) and
its scores are appended to a CSV on stdout (or ``--output``), in input row order. Columns: the
``--id-column`` columns, then ``log_prob``, ``score``, ``percentile``, ``p_value``,
``is_anomaly`` and ``status``. Feature columns are matched to the model's feature names.

Rows with NaN or Inf features stop the run with their row numbers (counted from the start of the
file, 0 being the first data row) unless ``--errors coerce``: then they are not sent, and come
out with empty scores, ``is_anomaly`` True and status ``non_finite_input``, never as normal.

Needs only the client's own dependencies (httpx, numpy) for CSV: it runs in the serving install.
Parquet needs pyarrow; tqdm, when installed, draws a progress bar on stderr.

Example::

    flowserve score --url http://localhost:8000 --id-column id data.parquet > scores.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ._client import FlowClient
from ._exceptions import FlowServeError, InvalidInput
from ._protocol import SCORE_COLUMNS, STATUS_NON_FINITE_INPUT, STATUS_OK

__all__ = ["OUTPUT_COLUMNS", "Chunk", "configure", "iter_chunks", "run", "score_file"]

# The score columns after the --id-column ones: those of the server's bulk tables.
OUTPUT_COLUMNS = [c.name for c in SCORE_COLUMNS if c.offline]
# Those read from the ScoreResult as numbers (empty cells where a row was not sent).
_NUMBER_COLUMNS = [c.name for c in SCORE_COLUMNS if c.offline and c.dtype is float]
DEFAULT_CHUNK_ROWS = 10_000
_MISSING = frozenset({"", "nan", "NaN", "NA", "N/A", "null", "NULL", "None"})


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
    parser.add_argument(
        "--id-column",
        action="append",
        default=[],
        help="input column copied to the output to join on (repeat for several)",
    )
    parser.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK_ROWS, help="rows per request"
    )
    parser.add_argument("--fpr", type=float, help="false-positive rate for is_anomaly")
    parser.add_argument(
        "--errors",
        choices=["raise", "coerce"],
        default="raise",
        help="rows with NaN/Inf: fail (default) or coerce: not sent, flagged as anomalies, "
        "status non_finite_input",
    )
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


@dataclass
class Chunk:
    """Consecutive rows of the input: ``start`` is the file row number of the first one."""

    start: int
    columns: dict[str, Sequence[Any]]
    rows: int

    def __len__(self) -> int:
        return self.rows

    def features(self, names: list[str]) -> np.ndarray:
        """The named columns as float64 ``[rows, len(names)]`` (missing values are NaN)."""
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise ValueError(
                f"the input lacks feature column(s) {missing}; the model expects {names}"
            )
        return np.stack([self._numbers(n) for n in names], axis=1).reshape(self.rows, len(names))

    def _numbers(self, name: str) -> np.ndarray:
        values = self.columns[name]
        try:
            return np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            pass
        out = np.empty(len(values))
        for i, v in enumerate(values):
            if v is None or (isinstance(v, str) and v.strip() in _MISSING):
                out[i] = math.nan
                continue
            try:
                out[i] = float(v)
            except (TypeError, ValueError):
                raise ValueError(
                    f"column {name!r}, row {self.start + i}: {v!r} is not a number"
                ) from None
        return out


def _csv_chunks(stream: IO[str], chunk_rows: int) -> Iterator[Chunk]:
    reader = csv.reader(stream)
    header = next(reader, None)
    if header is None:
        raise ValueError("the input is empty (no CSV header)")
    start, rows = 0, []
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(
                f"row {start + len(rows)} has {len(row)} fields, the header {len(header)}"
            )
        rows.append(row)
        if len(rows) == chunk_rows:
            yield _transposed(start, header, rows)
            start, rows = start + len(rows), []
    if rows:
        yield _transposed(start, header, rows)


def _transposed(start: int, header: list[str], rows: list[list[str]]) -> Chunk:
    columns = zip(*rows, strict=True)  # every row has len(header) fields (checked)
    return Chunk(start, dict(zip(header, columns, strict=True)), len(rows))


def _csv_file_chunks(file: Path, chunk_rows: int) -> Iterator[Chunk]:
    import bz2
    import gzip

    name = file.name.lower()
    opener: Any = gzip.open if name.endswith(".gz") else bz2.open if name.endswith(".bz2") else open
    with opener(file, "rt", newline="") as stream:
        yield from _csv_chunks(stream, chunk_rows)


def _parquet_chunks(file: Path, chunk_rows: int) -> tuple[Iterator[Chunk], int]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(
            "reading Parquet needs pyarrow: pip install pyarrow (or score a CSV file)"
        ) from None
    parquet = pq.ParquetFile(file)

    def chunks() -> Iterator[Chunk]:
        start = 0
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            columns = {
                name: batch.column(i).to_numpy(zero_copy_only=False)
                for i, name in enumerate(batch.schema.names)
            }
            yield Chunk(start, columns, batch.num_rows)
            start += batch.num_rows

    return chunks(), parquet.metadata.num_rows


def iter_chunks(path: str, chunk_rows: int) -> tuple[Iterator[Chunk], int | None]:
    """:class:`Chunk` s of a CSV or Parquet file, and its row count when cheaply known."""
    if chunk_rows < 1:
        raise ValueError(f"--chunk-size must be at least 1, got {chunk_rows}")
    if path == "-":
        return _csv_chunks(sys.stdin, chunk_rows), None
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"input file {path} does not exist")
    suffix = file.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return _parquet_chunks(file, chunk_rows)
    if suffix in (".csv", ".txt") or file.name.lower().endswith((".csv.gz", ".csv.bz2")):
        return _csv_file_chunks(file, chunk_rows), None
    raise ValueError(f"input {path}: unknown file type {suffix!r}; use .csv or .parquet")


def _rows_text(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:10])
    return shown + (", ..." if len(rows) > 10 else "")


def _score_chunk(
    client: FlowClient,
    chunk: Chunk,
    feature_names: list[str],
    id_columns: list[str],
    fpr: float | None,
    errors: str,
) -> list[list[Any]]:
    x = chunk.features(feature_names)
    with np.errstate(over="ignore"):  # the model reads float32: 1e308 is Inf there
        finite = np.isfinite(x.astype(np.float32)).all(axis=1)
    if not finite.all() and errors == "raise":
        bad = chunk.start + np.flatnonzero(~finite)
        raise ValueError(
            f"{len(bad)} row(s) hold NaN or Inf features (rows {_rows_text(bad)}, counted from "
            "the start of the file); pass --errors coerce to score them anyway (flagged as "
            "anomalies, status non_finite_input)"
        )
    n = len(chunk)
    cols = {c: np.full(n, np.nan) for c in _NUMBER_COLUMNS}
    is_anomaly = np.ones(n, dtype=bool)
    if finite.any():
        result = client.score(x[finite], fpr=fpr)
        for name in _NUMBER_COLUMNS:
            value = getattr(result, name)
            if value is not None:
                cols[name][finite] = value
        is_anomaly[finite] = result.is_anomaly
    cells: dict[str, list[Any]] = {c: [_cell(v) for v in cols[c]] for c in _NUMBER_COLUMNS}
    cells["is_anomaly"] = [bool(v) for v in is_anomaly]
    cells["status"] = [STATUS_OK if ok else STATUS_NON_FINITE_INPUT for ok in finite]
    ids = [[_cell(v) for v in chunk.columns[c]] for c in id_columns]
    return [list(row) for row in zip(*ids, *(cells[c] for c in OUTPUT_COLUMNS), strict=True)]


def _cell(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def score_file(
    client: FlowClient,
    chunks: Iterator[Chunk],
    out: IO[str],
    *,
    id_columns: Sequence[str] = (),
    fpr: float | None = None,
    errors: str = "raise",
    concurrency: int = 1,
    progress: Any = None,
) -> int:
    """Score every chunk and append CSV rows to ``out`` in input order; returns the row count."""
    ids = list(id_columns)
    feature_names = client.feature_names()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*ids, *OUTPUT_COLUMNS])
    rows = 0
    # A bounded window of futures, consumed in submission order, keeps output order and memory.
    with ThreadPoolExecutor(max_workers=max(concurrency, 1)) as pool:
        pending: deque[Future[list[list[Any]]]] = deque()
        for chunk in chunks:
            for name in ids:
                if name not in chunk.columns:
                    raise ValueError(f"--id-column {name!r} is not a column of the input")
            pending.append(
                pool.submit(_score_chunk, client, chunk, feature_names, ids, fpr, errors)
            )
            while len(pending) >= max(concurrency, 1):
                rows += _write(pending.popleft().result(), writer, progress)
        while pending:
            rows += _write(pending.popleft().result(), writer, progress)
    return rows


def _write(lines: list[list[Any]], writer: Any, progress: Any) -> int:
    writer.writerows(lines)
    if progress is not None:
        progress.update(len(lines))
    return len(lines)


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
                id_columns=args.id_column,
                fpr=args.fpr,
                errors=args.errors,
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

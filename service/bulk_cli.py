"""``flowserve batch-score``: score a Parquet/CSV file offline, in this process or on Dask.

Without ``--scheduler`` or ``--local-workers`` the file is streamed here in record batches into
one output file. With ``--local-workers N`` a local Dask cluster of N processes scores the
partitions; with ``--scheduler ADDRESS`` an existing Dask cluster does (its workers need
``flowserve[dask]`` installed and must see the artifact path). Dask writes Parquet output as a
directory of part files (readable as one data set by pandas, pyarrow, Spark).

Example::

    flowserve batch-score events.parquet scores.parquet --models /models --model sensors \\
        --local-workers 4 --id-column event_id

Output columns: the ``--id-column`` columns, then ``log_prob``, ``score``, ``percentile``,
``p_value``, ``is_anomaly`` and ``status`` (:func:`~flowserve.service.bulk.score_frame`). Row
numbers in errors count data rows from the start of the file (0 is the first row after a CSV
header) in local mode; on Dask they are the partition's index.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flowserve.artifact import ArtifactError

from .bulk import NonFiniteRows, load_model, resolve_artifact, score_dask, score_frame

__all__ = ["configure", "run", "score_local"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``batch-score`` arguments to ``parser``."""
    parser.add_argument("input", help="a .parquet file or directory, or a .csv file")
    parser.add_argument("output", help="where to write the scores (.parquet or .csv)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model-dir", help="one artifact version directory")
    which.add_argument("--models", help="a model root <root>/<name>/<version>/ (with --model)")
    parser.add_argument("--model", help="model name under --models")
    parser.add_argument("--version", type=int, help="model version (default: the newest)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running Dask scheduler")
    where.add_argument(
        "--local-workers", type=int, default=0, help="start a local Dask cluster of N processes"
    )
    parser.add_argument("--columns", nargs="+", help="input columns in feature order")
    parser.add_argument(
        "--id-column",
        action="append",
        default=[],
        help="input column copied to the output to join on (repeat for several)",
    )
    parser.add_argument("--keep", nargs="+", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--fpr", type=float, help="false-positive rate for is_anomaly")
    parser.add_argument(
        "--errors",
        choices=["raise", "coerce"],
        default="raise",
        help="rows with NaN/Inf: fail (default) or coerce: NaN scores, flagged as anomalies, "
        "status non_finite_input",
    )
    parser.add_argument(
        "--chunk-size", type=int, default=100_000, help="rows per batch (local mode)"
    )


def score_local(
    input_path: Path, output_path: Path, artifact: Path, chunk_rows: int, **kwargs: Any
) -> int:
    """Stream ``input_path`` through :func:`score_frame` into one output file; returns rows."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    model = load_model(artifact)
    if input_path.suffix.lower() == ".csv":
        frames = iter(pd.read_csv(input_path, chunksize=chunk_rows))
    else:
        dataset = pq.ParquetFile(input_path)
        frames = (b.to_pandas() for b in dataset.iter_batches(batch_size=chunk_rows))
    rows = 0
    writer: Any = None
    try:
        for i, frame in enumerate(frames):
            # Row numbers in errors count from the start of the file, not of the batch.
            frame.index = pd.RangeIndex(rows, rows + len(frame))
            scores = score_frame(frame, model, kwargs.get("columns"), **_score_kwargs(kwargs))
            if output_path.suffix.lower() == ".csv":
                scores.to_csv(output_path, mode="w" if i == 0 else "a", header=i == 0, index=False)
            else:
                table = pa.Table.from_pandas(scores, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(output_path, table.schema)
                writer.write_table(table)
            rows += len(scores)
    finally:
        if writer is not None:
            writer.close()
    return rows


def _score(input_path: Path, output_path: Path, artifact: Path, args: argparse.Namespace) -> str:
    if args.scheduler or args.local_workers > 0:
        _score_on_dask(input_path, output_path, artifact, args)
        return "all"  # counting would cost a second pass over the data
    rows = score_local(
        input_path,
        output_path,
        artifact,
        args.chunk_size,
        columns=args.columns,
        fpr=args.fpr,
        keep=args.id_column,
        errors=args.errors,
    )
    return str(rows)


def _score_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in ("fpr", "keep", "errors") if k in kwargs}


def _score_on_dask(
    input_path: Path, output_path: Path, artifact: Path, args: argparse.Namespace
) -> None:
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    if args.scheduler:
        client = Client(args.scheduler)
        cluster = None
    else:
        cluster = LocalCluster(n_workers=args.local_workers, threads_per_worker=1, processes=True)
        client = Client(cluster)
    try:
        if input_path.suffix.lower() == ".csv":
            ddf = dd.read_csv(str(input_path), blocksize="64MB")
        else:
            ddf = dd.read_parquet(str(input_path), split_row_groups="adaptive")
        scores = score_dask(
            ddf, artifact, args.columns, fpr=args.fpr, keep=args.id_column, errors=args.errors
        )
        if output_path.suffix.lower() == ".csv":
            scores.to_csv(str(output_path), single_file=True, index=False)
        else:
            scores.to_parquet(str(output_path), write_index=False)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


@contextlib.contextmanager
def _atomic_output(output_path: Path) -> Iterator[Path]:
    """A temporary path next to ``output_path`` (same suffix, same file system), renamed onto
    it on success; on any failure it is removed, so nothing is left at either path."""
    tmp = output_path.with_name(f".{output_path.stem}.tmp-{os.getpid()}{output_path.suffix}")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise
    if output_path.is_dir() and tmp.is_dir():  # Dask's Parquet output is a directory
        shutil.rmtree(output_path)
    os.replace(tmp, output_path)


def run(args: argparse.Namespace) -> int:
    """Run ``flowserve batch-score``; 0 ok, 2 bad arguments or input (and no output written)."""
    input_path, output_path = Path(args.input), Path(args.output)
    if args.keep:
        print(
            "flowserve batch-score: warning: --keep is deprecated, use --id-column "
            "(once per column)",
            file=sys.stderr,
        )
        args.id_column = [*args.id_column, *args.keep]
    if not input_path.exists():
        print(f"flowserve batch-score: error: input {input_path} does not exist", file=sys.stderr)
        return 2
    try:
        if args.model_dir:
            artifact = Path(args.model_dir)
        elif not args.model:
            print("flowserve batch-score: error: --models needs --model NAME", file=sys.stderr)
            return 2
        else:
            artifact = resolve_artifact(args.models, args.model, args.version)
        load_model(artifact)  # fail fast on a broken artifact, before any cluster starts
        start = time.perf_counter()
        with _atomic_output(output_path) as partial:
            rows = _score(input_path, partial, artifact, args)
    except NonFiniteRows as e:
        rows = ", ".join(str(i) for i in e.index[:10]) + (", ..." if len(e.index) > 10 else "")
        print(
            f"flowserve batch-score: error: {len(e.index)} row(s) hold NaN or Inf features "
            f"(rows {rows}, counted from the start of the file); pass --errors coerce to score "
            "them anyway (flagged as anomalies, status non_finite_input)",
            file=sys.stderr,
        )
        return 2
    except (ArtifactError, ValueError, OSError) as e:
        print(f"flowserve batch-score: error: {e}", file=sys.stderr)
        return 2
    took = time.perf_counter() - start
    print(f"scored {rows} rows with {artifact} -> {output_path} in {took:.1f} s", file=sys.stderr)
    return 0

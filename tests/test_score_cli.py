"""``flowserve score``: chunked CSV/Parquet scoring against a real server process."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flowserve.cli import main
from flowserve_client import FlowClient
from tests.live_server import free_port, live_server
from tests.service_fixtures import AffineFlow, affine_flow, build_affine_artifact

COLUMNS = ["log_prob", "score", "percentile", "p_value", "is_anomaly", "status"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, AffineFlow]]:
    root = tmp_path_factory.mktemp("models")
    _, flow = build_affine_artifact(root, "sensors", 1, affine_flow(3, seed=21))
    with live_server(root) as url:
        yield url, flow


@pytest.fixture(scope="module")
def table(server: tuple[str, AffineFlow]) -> pd.DataFrame:
    flow = server[1]
    x = flow.sample(1234, seed=5)
    x[::100] += 9.0
    frame = pd.DataFrame(x, columns=flow.feature_names)
    # Columns out of feature order plus an id and a text column: matched by name, ignored.
    frame = frame[["f1", "f2", "f0"]]
    frame.insert(0, "event_id", [f"e{i:05d}" for i in range(len(frame))])
    frame["note"] = "x"
    return frame


def _expected(url: str, frame: pd.DataFrame) -> pd.DataFrame:
    with FlowClient(url) as client:
        return client.score(frame).to_frame()


def test_csv_in_chunks_keeps_order_and_id(
    server: tuple[str, AffineFlow],
    table: pd.DataFrame,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = server
    src = tmp_path / "in.csv"
    table.to_csv(src, index=False)
    argv = ["score", "--url", url, "--id-column", "event_id", "--chunk-size", "100", str(src)]
    assert main([*argv, "--concurrency", "3"]) == 0
    captured = capsys.readouterr()
    out = pd.read_csv(io.StringIO(captured.out))
    assert list(out.columns) == ["event_id", *COLUMNS]
    assert out["event_id"].tolist() == table["event_id"].tolist()
    expected = _expected(url, table)
    np.testing.assert_allclose(out["log_prob"], expected["log_prob"], rtol=1e-6)
    np.testing.assert_allclose(out["percentile"], expected["percentile"], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(out["is_anomaly"], expected["is_anomaly"])
    assert out["is_anomaly"].iloc[::100].all()
    assert "rows" in captured.err  # the progress bar went to stderr


def test_parquet_batches_to_output_file(
    server: tuple[str, AffineFlow], table: pd.DataFrame, tmp_path: Path
) -> None:
    url, _ = server
    src = tmp_path / "in.parquet"
    table.to_parquet(src, row_group_size=300)
    dst = tmp_path / "scores.csv"
    argv = ["score", "--url", url, "--chunk-size", "250", "--fpr", "0.2", "--no-progress"]
    assert main([*argv, "--output", str(dst), str(src)]) == 0
    out = pd.read_csv(dst)
    assert list(out.columns) == COLUMNS  # no id column asked for
    assert len(out) == len(table)
    with FlowClient(url) as client:
        expected = client.score(table, fpr=0.2)
    np.testing.assert_allclose(out["log_prob"], expected.log_prob, rtol=1e-6)
    np.testing.assert_array_equal(out["is_anomaly"], expected.is_anomaly)


def test_errors_exit_with_a_message(
    server: tuple[str, AffineFlow],
    table: pd.DataFrame,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = server
    src = tmp_path / "in.csv"
    table.to_csv(src, index=False)
    assert main(["score", "--url", url, "--id-column", "nope", str(src)]) == 2
    assert "--id-column 'nope'" in capsys.readouterr().err
    assert main(["score", "--url", url, str(tmp_path / "missing.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["score", "--url", url, "--model", "ghost", "--no-progress", str(src)]) == 1
    assert "ghost" in capsys.readouterr().err
    table.drop(columns=["f0"]).to_csv(src, index=False)
    assert main(["score", "--url", url, "--no-progress", str(src)]) == 2
    assert "['f0']" in capsys.readouterr().err
    dead = f"http://127.0.0.1:{free_port()}"
    assert main(["score", "--url", dead, "--no-progress", str(src)]) == 1


def test_console_command_writes_only_csv_to_stdout(
    server: tuple[str, AffineFlow], table: pd.DataFrame, tmp_path: Path
) -> None:
    url, _ = server
    src = tmp_path / "in.csv"
    table.head(20).to_csv(src, index=False)
    cmd = [sys.executable, "-m", "flowserve.cli", "score", "--url", url, "--id-column", "event_id"]
    done = subprocess.run([*cmd, str(src)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = pd.read_csv(io.StringIO(done.stdout))
    assert out.shape == (20, 7)


_NO_PANDAS = (
    "import sys; sys.modules['pandas'] = None; sys.modules['pyarrow'] = None; "
    "from flowserve.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _without_pandas(*argv: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", _NO_PANDAS, "score", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_serving_install_scores_csv_without_pandas(
    server: tuple[str, AffineFlow], table: pd.DataFrame, tmp_path: Path
) -> None:
    url, _ = server
    broken = table.head(300).copy()
    broken.loc[120, "f0"] = np.nan
    broken.loc[250, "f1"] = np.inf
    broken.loc[251, "f2"] = 1e308  # Inf in float32, what the model reads
    src = tmp_path / "in.csv"
    broken.to_csv(src, index=False)
    common = ["--url", url, "--chunk-size", "100", "--no-progress", "--id-column", "event_id"]
    done = _without_pandas(*common, str(src))
    assert done.returncode == 2, done.stderr
    assert done.stdout.count("\n") == 101  # header + the first chunk, streamed before the error
    # the second chunk (rows 100-199) fails first; its row numbers count from the file's start
    assert "rows 120, counted from the start of the file" in done.stderr
    assert "--errors coerce" in done.stderr and "Traceback" not in done.stderr
    done = _without_pandas(*common, "--errors", "coerce", str(src))
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr  # 1e308 is Inf in float32, without numpy's noise
    out = pd.read_csv(io.StringIO(done.stdout))
    assert list(out.columns) == ["event_id", *COLUMNS]
    assert out["event_id"].tolist() == broken["event_id"].tolist()
    bad = [120, 250, 251]
    assert out.loc[bad, "is_anomaly"].all() and out.loc[bad, "log_prob"].isna().all()
    assert out.loc[bad, "status"].tolist() == ["non_finite_input"] * 3
    assert (out["status"].drop(bad) == "ok").all()
    expected = _expected(url, broken.drop(bad))
    np.testing.assert_allclose(out["log_prob"].drop(bad), expected["log_prob"], rtol=1e-6)
    np.testing.assert_allclose(out["p_value"].drop(bad), expected["p_value"], rtol=1e-6)
    np.testing.assert_array_equal(out["is_anomaly"].drop(bad), expected["is_anomaly"])


def test_parquet_without_pyarrow_says_what_to_install(
    server: tuple[str, AffineFlow], table: pd.DataFrame, tmp_path: Path
) -> None:
    src = tmp_path / "in.parquet"
    table.head(5).to_parquet(src)
    done = _without_pandas("--url", server[0], str(src))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "flowserve score: error: reading Parquet needs pyarrow: pip install pyarrow (or score "
        "a CSV file)"
    ]

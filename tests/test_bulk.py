"""Bulk scoring: score_frame on pandas, score_dask on a 2-worker local cluster, batch-score CLI.

The reference is the service itself: every score must equal what ``/score`` answers for the same
rows (same runtime class, same calibration), and the test flow's closed-form log-density.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flowserve.service import bulk, bulk_cli
from flowserve.service.runtime import OnnxFlowModel
from tests.service_fixtures import AffineFlow, affine_flow, build_affine_artifact, service_client

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AffineFlow]:
    root = tmp_path_factory.mktemp("models")
    return build_affine_artifact(root, "toy", 1, affine_flow(3, seed=4))


@pytest.fixture(scope="module")
def frame(artifact: tuple[Path, AffineFlow]) -> pd.DataFrame:
    flow = artifact[1]
    x = flow.sample(600, seed=1)
    x[::50] += 6.0  # some clear outliers
    df = pd.DataFrame(x, columns=flow.feature_names)
    df.insert(0, "id", np.arange(1000, 1000 + len(df)))
    return df


def _service_scores(model_dir: Path, rows: np.ndarray, fpr: float | None) -> dict:
    """What the service's POST /score answers for ``rows`` (in-process app)."""
    body: dict = {"inputs": rows.tolist()}
    if fpr is not None:
        body["fpr"] = fpr
    with service_client(model_dir.parent.parent, batching=False) as client:
        response = client.post("/models/toy/score", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_score_frame_matches_the_service_and_closed_form(
    artifact: tuple[Path, AffineFlow], frame: pd.DataFrame
) -> None:
    model_dir, flow = artifact
    out = bulk.score_frame(frame, model_dir, keep=["id"], fpr=0.05)
    assert list(out.columns) == ["id", *bulk.SCORE_COLUMNS]
    assert (out["status"] == "ok").all()
    assert out.index.equals(frame.index)
    np.testing.assert_array_equal(out["id"], frame["id"])
    x = frame[flow.feature_names].to_numpy()
    np.testing.assert_allclose(out["log_prob"], flow.log_prob(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out["score"], -out["log_prob"])
    assert out["is_anomaly"].iloc[::50].all()  # the shifted rows
    served = _service_scores(model_dir, x, 0.05)
    np.testing.assert_allclose(out["log_prob"], served["log_prob"], rtol=1e-6)
    np.testing.assert_allclose(out["percentile"], served["percentile"], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(out["is_anomaly"], served["is_anomaly"])
    np.testing.assert_allclose(out["p_value"], served["p_value"], rtol=1e-12)


def test_score_frame_columns_and_errors(
    artifact: tuple[Path, AffineFlow], frame: pd.DataFrame
) -> None:
    model_dir, _ = artifact
    renamed = frame.rename(columns={"f0": "temp", "f1": "rpm", "f2": "load"})
    by_columns = bulk.score_frame(renamed, model_dir, columns=["temp", "rpm", "load"])
    plain = bulk.score_frame(frame, model_dir)
    pd.testing.assert_frame_equal(by_columns, plain)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['f0', 'f1', 'f2'\]"):
        bulk.score_frame(renamed, model_dir)
    broken = frame.copy()
    # NaN, Inf and 1e308 (Inf in float32, what the model reads): never reported normal
    broken.loc[3, "f1"] = np.nan
    broken.loc[7, "f0"] = np.inf
    broken.loc[9, "f2"] = 1e308
    with pytest.raises(
        bulk.NonFiniteRows, match=r"3 row\(s\) hold NaN or Inf features \(index 3, 7, 9"
    ):
        bulk.score_frame(broken, model_dir)
    coerced = bulk.score_frame(broken, model_dir, errors="coerce")
    bad = [3, 7, 9]
    assert coerced["log_prob"].isna().tolist() == [i in bad for i in range(len(frame))]
    assert coerced.loc[bad, "is_anomaly"].all() and coerced.loc[bad, "p_value"].isna().all()
    assert (coerced.loc[bad, "status"] == bulk.STATUS_NON_FINITE_INPUT).all()
    assert (coerced["status"].drop(bad) == bulk.STATUS_OK).all()
    np.testing.assert_array_equal(coerced["log_prob"].drop(bad), plain["log_prob"].drop(bad))
    with pytest.raises(ValueError, match="smallest attainable"):
        bulk.score_frame(frame, model_dir, fpr=1e-5)


def test_score_frame_iter_is_the_spark_shape(
    artifact: tuple[Path, AffineFlow], frame: pd.DataFrame
) -> None:
    model_dir, _ = artifact
    parts: Iterator[pd.DataFrame] = (frame.iloc[i : i + 200] for i in range(0, len(frame), 200))
    out = pd.concat(bulk.score_frame_iter(parts, model_dir, keep=["id"]))
    pd.testing.assert_frame_equal(out, bulk.score_frame(frame, model_dir, keep=["id"]))


def test_model_is_loaded_once_per_process(artifact: tuple[Path, AffineFlow]) -> None:
    model_dir, _ = artifact
    first = bulk.load_model(model_dir)
    assert bulk.load_model(str(model_dir)) is first
    assert isinstance(first, OnnxFlowModel)


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.Client]:
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            worker_dashboard_address=None,
        ) as local,
        distributed.Client(local, timeout="60s") as client,
    ):
        yield client


@pytest.mark.slow
def test_score_dask_on_two_workers_equals_the_service(
    artifact: tuple[Path, AffineFlow], frame: pd.DataFrame, cluster: distributed.Client
) -> None:
    model_dir, flow = artifact
    ddf = dd.from_pandas(frame, npartitions=6)
    lazy = bulk.score_dask(ddf, model_dir, keep=["id"])
    out = lazy.compute()
    assert list(out.columns) == ["id", *bulk.SCORE_COLUMNS]
    np.testing.assert_array_equal(out["id"], frame["id"])  # row order kept
    served = _service_scores(model_dir, frame[flow.feature_names].to_numpy(), None)
    np.testing.assert_allclose(out["log_prob"], served["log_prob"], rtol=1e-6)
    np.testing.assert_allclose(out["score"], served["score"], rtol=1e-6)
    np.testing.assert_allclose(out["percentile"], served["percentile"], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(out["is_anomaly"], served["is_anomaly"])
    # Both workers took part, and each loaded the artifact at most once for its 3+ partitions.
    loads = cluster.run(lambda: bulk._cached_model.cache_info().misses)
    assert len(loads) == 2
    assert all(n <= 1 for n in loads.values()), loads


def _cli_args(**kwargs: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bulk_cli.configure(parser)
    argv = [str(kwargs.pop("input")), str(kwargs.pop("output"))]
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag, *([str(v) for v in value] if isinstance(value, list) else [str(value)])]
    return parser.parse_args(argv)


def test_batch_score_cli_local(
    artifact: tuple[Path, AffineFlow], frame: pd.DataFrame, tmp_path: Path
) -> None:
    model_dir, _ = artifact
    src = tmp_path / "in.parquet"
    frame.to_parquet(src, row_group_size=128)
    dst = tmp_path / "out.parquet"
    args = _cli_args(
        input=src, output=dst, models=model_dir.parent.parent, model="toy", id_column="id",
        chunk_size=100,
    )  # fmt: skip
    assert bulk_cli.run(args) == 0
    got = pd.read_parquet(dst)
    expected = bulk.score_frame(frame, model_dir, keep=["id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)


def test_batch_score_cli_errors(artifact: tuple[Path, AffineFlow], tmp_path: Path) -> None:
    model_dir, _ = artifact
    src = tmp_path / "in.csv"
    pd.DataFrame({"a": [1.0]}).to_csv(src, index=False)
    missing = _cli_args(input=src, output=tmp_path / "o.csv", models=tmp_path, model="nope")
    assert bulk_cli.run(missing) == 2
    wrong = _cli_args(input=src, output=tmp_path / "o.csv", model_dir=model_dir)
    assert bulk_cli.run(wrong) == 2


def test_batch_score_cli_names_file_rows_and_the_flag(
    artifact: tuple[Path, AffineFlow],
    frame: pd.DataFrame,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_dir, _ = artifact
    broken = frame.copy()
    broken.loc[[250, 260, 431], "f0"] = np.inf
    src = tmp_path / "in.csv"
    broken.to_csv(src, index=False)
    dst = tmp_path / "o.csv"
    args = _cli_args(input=src, output=dst, model_dir=model_dir, chunk_size=100)
    assert bulk_cli.run(args) == 2
    err = capsys.readouterr().err
    # the third chunk of 100 fails first: its rows numbered from the start of the file
    assert "2 row(s)" in err and "rows 250, 260, counted from the start of the file" in err
    assert "--errors coerce" in err and "errors='coerce'" not in err
    # the id option is --id-column, as in `flowserve score`; --keep still works, with a warning
    coerce = _cli_args(
        input=src, output=dst, model_dir=model_dir, chunk_size=100, errors="coerce",
        id_column="id",
    )  # fmt: skip
    assert bulk_cli.run(coerce) == 0
    out = pd.read_csv(dst)
    assert list(out.columns) == ["id", *bulk.SCORE_COLUMNS]
    assert out.loc[[250, 260, 431], "is_anomaly"].all()
    assert out.loc[[250, 260, 431], "status"].tolist() == ["non_finite_input"] * 3
    old = _cli_args(input=src, output=dst, model_dir=model_dir, errors="coerce", keep=["id"])
    assert bulk_cli.run(old) == 0
    assert "--keep is deprecated" in capsys.readouterr().err
    pd.testing.assert_frame_equal(pd.read_csv(dst), out)


@pytest.mark.slow
def test_batch_score_cli_on_a_running_scheduler(
    artifact: tuple[Path, AffineFlow],
    frame: pd.DataFrame,
    cluster: distributed.Client,
    tmp_path: Path,
) -> None:
    model_dir, _ = artifact
    src = tmp_path / "in.parquet"
    frame.to_parquet(src, row_group_size=128)
    dst = tmp_path / "out.parquet"
    args = _cli_args(
        input=src, output=dst, model_dir=model_dir, id_column="id",
        scheduler=cluster.scheduler_info()["address"],
    )  # fmt: skip
    assert bulk_cli.run(args) == 0
    got = pd.read_parquet(dst).reset_index(drop=True)
    expected = bulk.score_frame(frame, model_dir, keep=["id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)

"""The training side: data loading and validation, config, the Lightning loop, the estimator."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from flowserve.artifact import load_manifest, verify_artifact
from flowserve.models.config import (
    ConfigError,
    TrainConfig,
    load_config_file,
    parse_param,
    resolve_config,
)
from flowserve.models.data import DataError, load_table, prepare_data, split_indices
from flowserve.models.datasets import make_dataset, sensor_anomalies, sensors
from flowserve.models.estimator import FlowDensityEstimator, NotFittedError
from flowserve.models.training import INIT_ROWS, build_model, data_dependent_init, fit_flow, train
from tests.flow_cases import VECTOR_FAMILIES

TINY = {"family": "realnvp", "layers": 2, "hidden": 8, "epochs": 2, "batch_size": 64}


def frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    return make_dataset("moons", n, seed=seed)


# --- data ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".npy", ".npz"])
def test_every_format_reads_the_same_rows(tmp_path: Path, suffix: str) -> None:
    df = frame(50)
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".tsv":
        df.to_csv(path, index=False, sep="\t")
    elif suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif suffix == ".npy":
        np.save(path, df.to_numpy())
    else:
        np.savez(path, x=df.to_numpy(), labels=np.zeros(50))
    table = load_table(path)
    np.testing.assert_allclose(table.values, df.to_numpy(), rtol=1e-6)
    expected = ["x", "y"] if suffix in (".csv", ".tsv", ".parquet") else ["x0", "x1"]
    assert table.feature_names == expected


def test_columns_and_id_column(tmp_path: Path) -> None:
    df = frame(30).assign(id=np.arange(30), z=np.linspace(0, 1, 30))
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    assert load_table(path, id_column="id").feature_names == ["x", "y", "z"]
    assert load_table(path, columns=["z", "x"]).feature_names == ["z", "x"]
    with pytest.raises(DataError, match=r"unknown column 'w'.*x, y, id, z"):
        load_table(path, columns=["x", "w"])


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "empty"),
        ("a,b\n", "no rows"),
        ("a,b,name\n1,2,foo\n3,4,bar\n", "non-numeric column.*'name'"),
    ],
)
def test_bad_csv_content(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        prepare_data(path)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_table(tmp_path / "missing.csv")
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"unknown data format '\.xlsx'"):
        load_table(tmp_path / "d.xlsx")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="cannot read as PARQUET"):
        load_table(tmp_path / "bad.parquet")
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 2)), b=np.zeros((3, 2)))
    with pytest.raises(DataError, match="2 arrays"):
        load_table(tmp_path / "two.npz")


def test_constant_columns_and_too_few_rows_are_named() -> None:
    x = frame(100).assign(c=1.0, d=2.0)
    with pytest.raises(DataError, match=r"constant column.*'c', 'd'"):
        prepare_data(x)
    with pytest.raises(DataError, match=r"5 usable rows.*at least 20"):
        prepare_data(frame(5))


def test_nan_policy() -> None:
    x = frame(100).to_numpy().copy()
    x[3, 0], x[7, 1], x[9, 1] = np.nan, np.inf, -np.inf
    with pytest.warns(UserWarning, match=r"3 of 100 rows hold NaN or Inf.*x0, x1"):
        prepared = prepare_data(x)
    assert prepared.dropped_rows == 3
    assert len(prepared.train) + len(prepared.val) + len(prepared.test) == 97
    with pytest.raises(DataError, match="3 of 100 rows hold NaN or Inf"):
        prepare_data(x, nan_policy="error")


def test_splits_are_disjoint_seeded_and_standardization_uses_train_only() -> None:
    tr, va, te = split_indices(100, 0.1, 0.2, seed=1)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(100))
    assert (len(tr), len(va), len(te)) == (70, 10, 20)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(split_indices(100, 0.1, 0.2, 1), (tr, va, te), strict=True)
    )
    prepared = prepare_data(frame(300), seed=3)
    np.testing.assert_allclose(prepared.mean, prepared.train.mean(0), rtol=1e-5)
    np.testing.assert_allclose(prepared.scale, prepared.train.std(0), rtol=1e-5)


def test_max_rows_subsamples() -> None:
    prepared = prepare_data(frame(500), max_rows=100)
    assert len(prepared.train) + len(prepared.val) + len(prepared.test) == 100


# --- config -------------------------------------------------------------------------------------


def test_config_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('family = "nsf"\nepochs = 7\nlr = 0.01\n[params]\nbins = 5\n')
    config = resolve_config(load_config_file(cfg), {"lr": 0.002, "params": {"tails": 4.0}})
    assert config.family == "nsf" and config.epochs == 7 and config.lr == 0.002
    # the family's defaults (layers, bins) sit under the file's values
    assert config.layers == 4 and config.params == {"bins": 5, "tails": 4.0}
    yml = tmp_path / "c.yaml"
    yml.write_text("family: realnvp\nhidden: 32\n")
    assert resolve_config(load_config_file(yml), {}).hidden == 32


def test_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text("epoch = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key.*epoch"):
        load_config_file(bad)
    bad.write_text("epochs = [\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config_file(bad)
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="key=value"):
        parse_param("bins")
    assert parse_param("bins=8") == ("bins", 8)
    assert parse_param("tails=3.5") == ("tails", 3.5)


# --- training -----------------------------------------------------------------------------------


def test_train_writes_a_verified_artifact_with_raw_space_density(tmp_path: Path) -> None:
    x = sensors(300, seed=0)
    result = train(x, name="s", out=tmp_path, progress=False, torchscript=False, **TINY)
    assert result is not None and result.artifact_dir == tmp_path / "s" / "1"
    manifest = verify_artifact(result.artifact_dir)
    for name in ("metrics.json", "config.yaml", "loss_curve.png", "samples.png"):
        assert name in manifest.files
    assert manifest.feature_names == list(x.columns)
    assert manifest.training_config["epochs"] == 2
    assert manifest.metrics.test_nll == pytest.approx(result.metrics["test_nll"])
    metrics = json.loads((result.artifact_dir / "metrics.json").read_text())
    assert len(metrics["history"]) == metrics["epochs"] == 2
    # Standardization sits inside the model: the density is of the raw rows (speed in rpm has a
    # scale of ~600, so its log-density is far below that of the standardized data). A skewed
    # column is centred by its power transform, which then runs before the standardization.
    pre = manifest.preprocessing
    power = pre.power_transform
    mean = np.asarray(pre.standardize_mean if power is None else power.center)
    assert abs(mean[0] - x["speed_rpm"].mean()) < 100
    assert metrics["test_nll"] > 10
    assert not (tmp_path / "s" / ".staging-1").exists()


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    x = frame(300)
    runs = [
        train(x, name="m", out=tmp_path / str(i), progress=False, torchscript=False, **TINY)
        for i in range(2)
    ]
    keys = ("train_nll", "val_nll", "test_nll")
    assert [runs[0].metrics[k] for k in keys] == [runs[1].metrics[k] for k in keys]
    other = train(
        x, name="m", out=tmp_path / "o", progress=False, torchscript=False, **{**TINY, "seed": 5}
    )
    assert other.metrics["test_nll"] != runs[0].metrics["test_nll"]


def test_resume_continues_from_a_checkpoint(tmp_path: Path) -> None:
    x = frame(300)
    first = train(x, name="m", out=tmp_path, progress=False, torchscript=False, **TINY)
    last = tmp_path / "m" / ".checkpoints" / "1" / "last.ckpt"
    assert last.is_file()
    second = train(
        x,
        name="m",
        out=tmp_path,
        resume=last,
        progress=False,
        torchscript=False,
        **{**TINY, "epochs": 4},
    )
    h1, h2 = first.history, second.history
    assert [h["epoch"] for h in h2] == [0, 1, 2, 3]
    assert h2[:2] == h1
    assert second.artifact_dir.name == "2"
    with pytest.raises(ConfigError, match="no such checkpoint"):
        train(x, name="m", out=tmp_path, resume=tmp_path / "nope.ckpt", progress=False, **TINY)


def test_early_stopping_keeps_the_best_epoch(tmp_path: Path) -> None:
    # lr so high that validation NLL gets worse: training stops early, best weights come back
    x = frame(300)
    result = train(
        x,
        name="m",
        out=tmp_path,
        progress=False,
        torchscript=False,
        **{**TINY, "epochs": 30, "patience": 2, "lr": 0.5, "grad_clip": 0.0},
    )
    history = result.history
    assert len(history) > result.metrics["best_epoch"] + 1, "the history goes past the best epoch"
    vals = [h["val_nll"] for h in history]
    best = int(np.nanargmin(vals))
    assert result.metrics["best_epoch"] == history[best]["epoch"]
    assert result.metrics["val_nll"] == pytest.approx(vals[best], rel=1e-4)


@pytest.mark.parametrize("family", sorted(VECTOR_FAMILIES))
def test_every_family_trains(tmp_path: Path, family: str) -> None:
    config = resolve_config({}, {"family": family, "epochs": 2, "batch_size": 128})
    config = resolve_config(
        {}, {**config.to_dict(), "layers": 2, "hidden": 8, "params": VECTOR_FAMILIES[family]}
    )
    prepared = prepare_data(frame(300))
    torch.manual_seed(0)
    fit = fit_flow(build_model(config, prepared), prepared, config, tmp_path, progress=False)
    assert len(fit.history) == 2
    assert all(np.isfinite(h["val_nll"]) for h in fit.history)
    # two epochs already beat the standard normal on standardized data (about 2.84 + log scale)
    with torch.no_grad():
        lp = fit.flow.log_prob(torch.from_numpy(prepared.val))
    assert torch.isfinite(lp).all()
    # data-dependent layers (Glow's actnorm) were initialized on a real batch
    for name, buf in fit.flow.named_buffers():
        if name.endswith("initialized"):
            assert bool(buf), f"{name} was never initialized"


def test_actnorm_initializes_on_the_first_training_rows() -> None:
    prepared = prepare_data(frame(300))
    config = resolve_config({}, {"family": "glow", "layers": 1, "hidden": 8})
    flow = build_model(config, prepared)
    data_dependent_init(flow, prepared.train)
    with torch.no_grad():
        # the first actnorm standardizes the (already standardized) first training rows
        x, _ = flow.preprocess(torch.from_numpy(prepared.train[:INIT_ROWS]))
        z, _ = flow.transform.transforms[0](x)
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(2), atol=1e-4)


def test_ddp_two_cpu_processes_write_one_artifact(tmp_path: Path) -> None:
    x = frame(400)
    result = train(
        x,
        name="ddp",
        out=tmp_path,
        progress=False,
        torchscript=False,
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",
        **TINY,
    )
    assert result is not None
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [".checkpoints", "1"]
    manifest = load_manifest(result.artifact_dir)
    assert manifest.training_config["devices"] == 2
    assert len(result.history) == 2
    assert np.isfinite(result.metrics["test_nll"])


# --- estimator ----------------------------------------------------------------------------------


def test_estimator_fit_score_sample_export(tmp_path: Path) -> None:
    x = sensors(600, seed=1).to_numpy()
    est = FlowDensityEstimator("realnvp", layers=2, hidden=16, epochs=5, seed=0)
    with pytest.raises(NotFittedError):
        est.score_samples(x)
    assert est.fit(x) is est
    assert est.n_features_in_ == 4 and len(est.history_) == 5
    lp = est.score_samples(x)
    assert lp.shape == (600,) and np.isfinite(lp).all()
    assert est.score(x) == pytest.approx(lp.mean())
    # rows that break the joint relations are less likely than normal rows
    anomalies = sensor_anomalies(200, seed=2).to_numpy()
    assert np.median(est.score_samples(anomalies)) < np.median(lp)
    s = est.sample(50, seed=3)
    assert s.shape == (50, 4) and np.array_equal(s, est.sample(50, seed=3))
    with pytest.raises(ValueError, match="fitted on 4 features"):
        est.score_samples(x[:, :3])
    result = est.export(tmp_path, "est", torchscript=False)
    assert verify_artifact(result.artifact_dir).name == "est"
    assert est.get_params()["layers"] == 2
    assert est.set_params(layers=3).layers == 3


def test_nan_warning_reaches_the_caller() -> None:
    x = frame(100).to_numpy().copy()
    x[0, 0] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FlowDensityEstimator("realnvp", layers=1, hidden=4, epochs=1).fit(x)
    assert any("1 of 100 rows" in str(w.message) for w in caught)


# --- generated data sets ------------------------------------------------------------------------


def test_generated_data_sets(tmp_path: Path) -> None:
    from flowserve.models.datasets import SENSOR_FEATURES
    from flowserve.models.datasets import main as datasets_main

    a, b = make_dataset("sensors", 100, seed=4), make_dataset("sensors", 100, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == SENSOR_FEATURES and np.isfinite(a.to_numpy()).all()
    odd = sensor_anomalies(100, seed=4)
    assert odd.shape == (100, 4)
    with pytest.raises(ValueError, match="unknown demo data set 'x'; known: moons, sensors"):
        make_dataset("x")
    assert datasets_main(["moons", str(tmp_path / "m.csv"), "--rows", "30"]) == 0
    assert load_table(tmp_path / "m.csv").values.shape == (30, 2)

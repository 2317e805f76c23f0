"""``flowserve train`` end to end: files in, a verified artifact out, one-line input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from flowserve.artifact import verify_artifact
from flowserve.cli import main
from flowserve.models.datasets import make_dataset

TINY = ["--family", "realnvp", "--layers", "2", "--hidden", "8", "--epochs", "2"]
FAST = [*TINY, "--no-progress", "--no-torchscript"]


def write_csv(path: Path, n: int = 200) -> Path:
    df = make_dataset("sensors", n, seed=0)
    df.insert(0, "row_id", np.arange(n))
    df.to_csv(path, index=False)
    return path


def test_train_csv_writes_versions_1_then_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_csv(tmp_path / "plant.csv")
    out = tmp_path / "repo"
    args = ["train", str(data), "--out", str(out), "--id-column", "row_id", *TINY, "--no-progress"]
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    first = out / "plant" / "1"  # the name defaults to the file's stem
    manifest = verify_artifact(first)
    assert manifest.feature_names == ["speed_rpm", "temperature_c", "vibration_mm_s", "power_kw"]
    assert manifest.torchscript == "model.pt"
    expected = {"forward.onnx", "inverse.onnx", "model.pt", "metrics.json", "config.yaml"}
    assert expected | {"loss_curve.png", "samples.png"} <= set(manifest.files)
    assert (first / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((first / "metrics.json").read_text())
    assert metrics["train_rows"] + metrics["val_rows"] + metrics["test_rows"] == 200
    assert main([*args, "--name", "plant", "--no-torchscript"]) == 0
    assert sorted(p.name for p in (out / "plant").iterdir() if p.name.isdigit()) == ["1", "2"]
    # checkpoints live outside the artifact
    assert not any(p.suffix == ".ckpt" for p in (out / "plant" / "2").iterdir())


def test_config_file_and_flag_override(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "d.csv")
    toml = tmp_path / "cfg.toml"
    toml.write_text('family = "realnvp"\nlayers = 2\nhidden = 8\nepochs = 3\nlr = 0.005\n')
    yml = tmp_path / "cfg.yaml"
    yml.write_text("family: nice\nlayers: 2\nhidden: 8\nepochs: 3\nparams: {}\n")
    for cfg, family in ((toml, "realnvp"), (yml, "nice")):
        out = tmp_path / cfg.suffix[1:]
        argv = ["train", str(data), "--out", str(out), "--config", str(cfg), "--epochs", "2"]
        assert (
            main([*argv, "--no-progress", "--no-torchscript", "--columns", "speed_rpm,power_kw"])
            == 0
        )
        art = out / "d" / "1"
        manifest = verify_artifact(art)
        assert manifest.family == family
        assert manifest.training_config["epochs"] == 2  # the flag beat the file
        assert manifest.training_config["layers"] == 2  # the file beat the family default
        assert manifest.feature_names == ["speed_rpm", "power_kw"]
        saved = yaml.safe_load((art / "config.yaml").read_text())
        assert saved["epochs"] == 2 and saved["family"] == family


def test_demo_and_params(tmp_path: Path) -> None:
    argv = ["train", "--demo", "moons", "--demo-rows", "300", "--out", str(tmp_path)]
    fam = ["--family", "nsf", "--layers", "1", "--hidden", "8", "--param", "bins=4"]
    assert main([*argv, *fam, "--epochs", "1", "--no-progress", "--no-torchscript"]) == 0
    manifest = verify_artifact(tmp_path / "moons" / "1")
    assert manifest.hyperparameters["bins"] == 4 and manifest.family == "nsf"
    assert manifest.training_config["data"]["source"] == "demo:moons (rows=300, seed=0)"


def test_npy_npz_parquet_inputs(tmp_path: Path) -> None:
    df = make_dataset("moons", 200, seed=1)
    np.save(tmp_path / "a.npy", df.to_numpy())
    np.savez(tmp_path / "b.npz", data=df.to_numpy())
    df.to_parquet(tmp_path / "c.parquet")
    for name in ("a.npy", "b.npz", "c.parquet"):
        assert main(["train", str(tmp_path / name), "--out", str(tmp_path / "r"), *FAST]) == 0
        stem = name.split(".")[0]
        assert verify_artifact(tmp_path / "r" / stem / "1").dim == 2


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    good = write_csv(tmp / "good.csv")
    (tmp / "text.csv").write_text("a,b,label\n1,2,x\n3,4,y\n")
    (tmp / "empty.csv").write_text("")
    (tmp / "weird.xlsx").write_text("x")
    (tmp / "broken.parquet").write_bytes(b"PAR1 not really")
    const = pd.DataFrame({"a": np.arange(50.0), "flat": 3.0})
    const.to_csv(tmp / "const.csv", index=False)
    pd.DataFrame({"a": np.arange(5.0), "b": np.arange(5.0) ** 2}).to_csv(
        tmp / "few.csv", index=False
    )
    (tmp / "bad.toml").write_text("epoch = 1\n")
    return [
        ([str(tmp / "missing.csv")], "missing.csv: no such file"),
        ([str(tmp / "weird.xlsx")], "unknown data format '.xlsx'"),
        ([str(tmp / "broken.parquet")], "cannot read as PARQUET"),
        ([str(tmp / "empty.csv")], "empty"),
        ([str(tmp / "text.csv")], "non-numeric column(s) 'label'"),
        ([str(tmp / "const.csv")], "constant column(s) 'flat'"),
        ([str(tmp / "few.csv")], "needs at least 20"),
        ([str(good), "--columns", "speed_rpm,nope"], "unknown column 'nope'"),
        ([str(good), "--family", "bogus"], "unknown flow family 'bogus'; known: "),
        ([str(good), "--config", str(tmp / "bad.toml")], "unknown key(s) epoch"),
        ([str(good), "--config", str(tmp / "none.yaml")], "no such config file"),
        ([str(good), "--param", "bins"], "--param expects key=value"),
        ([str(good), "--family", "maf", "--param", "nonsense=1"], "does not accept these options"),
        ([str(good), "--param", "nonsense=1"], "no candidate family of 'auto' accepts"),
        ([str(good), "--epochs", "0"], "epochs must be >= 1"),
        ([str(good), "--resume", str(tmp / "x.ckpt")], "no such checkpoint"),
        ([], "give a data file or --demo"),
        (["--demo", "nope"], "unknown demo data set 'nope'"),
    ]


def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--out", str(tmp_path / "repo"), "--no-progress", "--epochs", "1"]
    for argv, message in _bad_inputs(tmp_path):
        code = main(["train", *out, *argv])
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert message in err, (argv, err)
        # One error line, last; warnings about the data (an id-like column) may precede it.
        lines = err.splitlines()
        assert lines[-1].startswith("flowserve train: error: "), err
        assert all(line.startswith("flowserve train: warning: ") for line in lines[:-1]), err
        assert "Traceback" not in err
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").rglob("manifest.json"))


def test_existing_version_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_csv(tmp_path / "d.csv")
    argv = ["train", str(data), "--out", str(tmp_path), "--version", "3", *FAST]
    assert main(argv) == 0
    assert (tmp_path / "d" / "3" / "manifest.json").is_file()
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err


def test_nan_rows_are_dropped_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    df = make_dataset("moons", 200, seed=2)
    df.loc[[4, 9], "x"] = np.nan
    df.to_csv(tmp_path / "n.csv", index=False)
    assert main(["train", str(tmp_path / "n.csv"), "--out", str(tmp_path), *FAST]) == 0
    assert "2 of 200 rows hold NaN or Inf" in capsys.readouterr().err
    manifest = verify_artifact(tmp_path / "n" / "1")
    assert manifest.preprocessing.nan_policy == "drop"
    argv = ["train", str(tmp_path / "n.csv"), "--out", str(tmp_path), "--nan-policy", "error"]
    assert main([*argv, *FAST]) == 2
    assert "--nan-policy drop" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_subprocess_launcher_from_the_command_line(tmp_path: Path) -> None:
    # strategy "ddp" re-launches the command itself for rank 1: the real multi-process path
    import subprocess
    import sys

    data = write_csv(tmp_path / "d.csv")
    argv = [sys.executable, "-m", "flowserve.cli", "train", str(data), "--out", str(tmp_path)]
    argv += [*FAST, "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "GLOBAL_RANK: 1" in proc.stderr + proc.stdout
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [".checkpoints", "1"]
    assert verify_artifact(tmp_path / "d" / "1").training_config["devices"] == 2


@pytest.mark.parametrize("command", ["train", "verify", "serve", "score", "batch-score"])
def test_every_subcommand_help_renders(command: str, capsys: pytest.CaptureFixture) -> None:
    # argparse formats help lazily with %-interpolation: a bare "%" in one help text made
    # `flowserve train --help` crash with a traceback instead of printing the options.
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: flowserve " + command in capsys.readouterr().out

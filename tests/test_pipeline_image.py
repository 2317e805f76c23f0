"""Image families through the whole pipeline on scikit-learn's 8x8 digits (17 grey levels): the
CLI and train(), dequantized training, bits/dim as the dequantized bound, export, the served
graphs and the HTTP service (exact integer round trips, integer samples, refused pixels)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.datasets import load_digits

from flowserve.artifact import Manifest, load_manifest
from flowserve.cli import main as cli_main
from flowserve.models.data import prepare_data
from flowserve.models.training import train
from flowserve.service.runtime import load_flow_model
from tests.service_fixtures import service_client

K = 17


def _digits() -> np.ndarray:
    return load_digits().data.astype(np.float32)  # [1797, 64], levels 0..16


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("images")
    x = _digits()
    np.save(tmp / "digits.npy", x)
    out = tmp / "models"
    # Through the command line, the shape inferred from 64 pixels per row.
    code = cli_main(
        [
            "train",
            str(tmp / "digits.npy"),
            "--family",
            "glow_image",
            "--name",
            "glow",
            "--out",
            str(out),
            "--epochs",
            "3",
            "--hidden",
            "16",
            "--lr",
            "3e-3",
            "--param",
            "steps=2",
            "--no-progress",
            "--no-torchscript",
        ]
    )
    assert code == 0
    # Through train(), from a CSV, the shape given.
    pd.DataFrame(x, columns=[f"p{i}" for i in range(64)]).to_csv(tmp / "digits.csv", index=False)
    train(
        tmp / "digits.csv",
        family="realnvp_image",
        name="realnvp",
        out=out,
        epochs=3,
        hidden=16,
        lr=3e-3,
        params={"steps": 2, "shape": [1, 8, 8]},
        progress=False,
        torchscript=False,
    )
    return out


@pytest.fixture(scope="module")
def client(root: Path) -> Iterator[TestClient]:
    with service_client(root, default_model="glow") as c:
        yield c


def _manifest(root: Path, name: str) -> Manifest:
    return load_manifest(root / name / "1")


@pytest.mark.parametrize("name", ["glow", "realnvp"])
def test_manifest_declares_the_image_kind_and_the_bound(root: Path, name: str) -> None:
    m = _manifest(root, name)
    pre = m.preprocessing
    # glow_image's family default is the learned noise model; realnvp_image keeps uniform noise.
    expected = "variational" if name == "glow" else "uniform"
    assert (pre.data_kind, pre.num_values, pre.dequantization) == ("image", K, expected)
    assert pre.standardize_mean is None and m.input_shape == [1, 8, 8]
    assert m.metrics.bits_per_dim_kind == "dequantized_bound"
    # Digits have constant pixels (the left border is always 0): accepted for images.
    assert np.ptp(_digits(), axis=0).min() == 0


@pytest.mark.parametrize("name", ["glow", "realnvp"])
def test_bits_per_dim_is_the_dequantized_bound_of_the_served_graph(root: Path, name: str) -> None:
    m = _manifest(root, name)
    test = prepare_data(_digits(), data_kind="image", val_fraction=None, seed=0).test
    model = load_flow_model(root / name / "1")
    rng = np.random.default_rng(1)
    draws = [model.log_prob(test + rng.uniform(-0.5, 0.5, test.shape)) for _ in range(8)]
    lp = np.stack(draws).astype(np.float64)
    bits = -lp.mean() / (64 * math.log(2))
    # 8 x ~180 draws against export's 4: Monte Carlo error well below 0.05 bits/dim. With
    # variational dequantization the manifest reports the other bound of the same model,
    # E_q[log p(v) - log q(u|x)] (its validity is tested in test_image.py): near the uniform one.
    if m.preprocessing.dequantization == "variational":
        assert m.metrics.bits_per_dim == pytest.approx(bits, abs=0.5)
    else:
        assert m.metrics.bits_per_dim == pytest.approx(bits, abs=0.05)
    assert bits < math.log2(K)  # better than uniform over the 17 levels


@pytest.mark.parametrize("name", ["glow", "realnvp"])
def test_integer_round_trip_is_exact_through_the_service(client: TestClient, name: str) -> None:
    x = _digits()[:300]
    enc = client.post(f"/models/{name}/encode", json={"inputs": x.tolist()})
    assert enc.status_code == 200
    back = client.post(f"/models/{name}/decode", json={"inputs": enc.json()["z"]}).json()["x"]
    np.testing.assert_array_equal(np.rint(back), x)
    lp = client.post(f"/models/{name}/log_prob", json={"inputs": x[:5].tolist()}).json()
    assert np.all(np.isfinite(lp["log_prob"]))


@pytest.mark.parametrize("name", ["glow", "realnvp"])
def test_samples_are_integer_images(client: TestClient, name: str) -> None:
    r = client.post(f"/models/{name}/sample", json={"n": 50, "seed": 0})
    s = np.array(r.json()["samples"])
    assert s.shape == (50, 64)
    np.testing.assert_array_equal(s, np.rint(s))
    assert s.min() >= 0 and s.max() <= K - 1
    again = client.post(f"/models/{name}/sample", json={"n": 50, "seed": 0}).json()["samples"]
    np.testing.assert_array_equal(again, s)


def test_models_says_which_bound_bits_per_dim_is(client: TestClient) -> None:
    info = client.get("/models/glow").json()["versions"][0]
    assert info["data_kind"] == "image" and info["input_shape"] == [1, 8, 8]
    assert info["metrics"]["bits_per_dim_kind"] == "dequantized_bound"


@pytest.mark.parametrize("pixel", [0.5, 17.0, -1.0])
def test_pixels_off_the_integer_levels_are_refused(client: TestClient, pixel: float) -> None:
    x = _digits()[:3].copy()
    x[2, 10] = pixel
    r = client.post("/log_prob", json={"inputs": x.tolist()})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["rows"] == [2] and "not integers in [0, 16]" in err["message"]


@pytest.mark.parametrize("name", ["glow", "realnvp"])
def test_report_shows_images_not_pixel_pairs(root: Path, name: str) -> None:
    from flowserve.models.report import _DPI

    png = (root / name / "1" / "samples.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    # Two rows of eight images (data over samples), not a grid of pixel-pair scatter plots.
    assert (width, height) == (round(1.2 * 8 * _DPI), round(2.6 * _DPI))


def test_glow_trains_with_its_learned_prior_by_default(root: Path) -> None:
    import yaml

    flows = {
        name: yaml.safe_load((root / name / "1" / "config.yaml").read_text())["flow"]
        for name in ("glow", "realnvp")
    }
    assert flows["glow"]["learned_prior"] is True  # the family default, recorded with the model
    assert flows["realnvp"].get("learned_prior", False) is False


def test_variational_dequantization_through_the_cli(tmp_path: Path) -> None:
    x = _digits()[:400]
    np.save(tmp_path / "digits.npy", x)
    args = ["train", str(tmp_path / "digits.npy"), "--family", "glow_image", "--out"]
    args += [str(tmp_path / "m"), "--epochs", "2", "--hidden", "8", "--param", "steps=1"]
    args += ["--dequantization", "variational", "--no-progress", "--no-torchscript"]
    assert cli_main(args) == 0
    m = load_manifest(tmp_path / "m" / "digits" / "1")
    assert m.preprocessing.dequantization == "variational"
    assert m.metrics.bits_per_dim_kind == "dequantized_bound" and m.metrics.bits_per_dim > 0
    # The noise model is a training-time piece: the served graphs score cell centres and
    # round-trip integer images exactly, as with uniform dequantization.
    model = load_flow_model(tmp_path / "m" / "digits" / "1")
    test = prepare_data(x, data_kind="image", seed=0).test
    z, _ = model.forward(test)
    assert np.array_equal(np.rint(model.decode(z)), test)


def test_image_flows_take_as_many_scales_as_the_image_allows(root: Path) -> None:
    import yaml

    from flowserve.models.preprocess import image_hparams

    flow = yaml.safe_load((root / "glow" / "1" / "config.yaml").read_text())["flow"]
    assert flow["levels"] == 3  # 8x8 digits: three squeezes down to 1x1
    assert image_hparams({}, 28 * 28, 256)["levels"] == 2  # 28 is not divisible by 8
    assert image_hparams({}, 6 * 6, 2)["levels"] == 1
    assert image_hparams({"levels": 1}, 64, 17)["levels"] == 1  # given: kept

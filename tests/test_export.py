"""Export to artifacts: every vector family exports with ONNX/TorchScript parity and verifies.

Each family is exported once (module-scoped fixture) and the artifact is then checked from
several sides: manifest and checksums, ONNX Runtime parity at batch sizes 1 and 37, round trip
through both graphs, TorchScript parity, calibration, and ``flowserve verify``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from flowserve.artifact import (
    CHAIN_RULE_GRAPH,
    FORWARD_GRAPH,
    INVERSE_GRAPH,
    MANIFEST_FILE,
    TORCHSCRIPT_FILE,
    BaseSpec,
    Manifest,
    Metrics,
    Preprocessing,
    roundtrip_error,
    sha256_file,
    verify_artifact,
)
from flowserve.cli import main as cli_main
from flowserve.models import build_flow
from flowserve.models import export as export_module
from flowserve.models.base import (
    Chain,
    Flow,
    Standardize,
    StandardNormal,
    StandardUniform,
    Transform,
)
from flowserve.models.export import ExportError, export_artifact
from tests.flow_cases import EXPORT_FAMILIES
from tests.helpers import randomize

DIM = 4
FEATURES = [f"f{i}" for i in range(DIM)]


def raw_rows(n: int, seed: int) -> np.ndarray:
    """Correlated rows with very different feature scales and offsets (raw units)."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, DIM))
    mix = np.eye(DIM) + 0.5 * np.tril(np.ones((DIM, DIM)), -1)
    return (latent @ mix.T * [0.01, 1.0, 30.0, 2.0] + [5.0, -1.0, 100.0, 0.0]).astype(np.float32)


def standardize_for(rows: np.ndarray) -> Standardize:
    return Standardize(torch.from_numpy(rows.mean(0)), torch.from_numpy(rows.std(0)))


class ElementwiseAffine(Transform):
    """``z = x * exp(a) + b`` over any event shape: a tiny exact flow for local tests."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.a = nn.Parameter(0.3 * torch.randn(shape))
        self.b = nn.Parameter(torch.randn(shape))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * self.a.exp() + self.b, self.a.sum().expand(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return (z - self.b) * (-self.a).exp(), -self.a.sum().expand(z.shape[0])


def affine_flow(rows: np.ndarray, seed: int = 0) -> Flow:
    torch.manual_seed(seed)
    flow = Flow(Chain([ElementwiseAffine((DIM,))]), StandardNormal([DIM]), family="affine")
    return flow.set_preprocess(standardize_for(rows))


def family_flow(family: str, rows: np.ndarray) -> Flow:
    torch.manual_seed(0)
    flow = build_flow(family, dim=DIM, **EXPORT_FAMILIES[family])
    randomize(flow, seed=0)
    return flow.set_preprocess(standardize_for(rows))


class Exported:
    def __init__(self, flow: Flow, out: Path, manifest: Manifest, holdout: np.ndarray) -> None:
        self.flow, self.out, self.manifest, self.holdout = flow.eval(), out, manifest, holdout

    def session(self, graph: str) -> ort.InferenceSession:
        return ort.InferenceSession(str(self.out / graph), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=sorted(EXPORT_FAMILIES))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    family = request.param
    train, holdout = raw_rows(300, seed=1), raw_rows(200, seed=2)
    flow = family_flow(family, train)
    out = tmp_path_factory.mktemp(family) / "model" / "1"
    out.mkdir(parents=True)
    (out / "report.json").write_text('{"written": "by training before export"}\n')
    manifest = export_artifact(
        flow,
        out,
        name="model",
        version=1,
        feature_names=FEATURES,
        holdout=holdout,
        metrics=Metrics(train_nll=1.5, val_nll=1.6, epochs=1),
        training_config={"family": family, "seed": 0},
    )
    return Exported(flow, out, manifest, holdout)


def test_manifest_and_checksums(exported: Exported) -> None:
    m = exported.manifest
    assert verify_artifact(exported.out) == m
    assert m.family == exported.flow.family and m.hyperparameters == exported.flow.hparams
    assert (m.dim, m.input_shape, m.feature_names) == (DIM, [DIM], FEATURES)
    exact = {CHAIN_RULE_GRAPH} if m.chain_rule_order else set()  # the Gaussian's, here
    assert set(m.files) == {FORWARD_GRAPH, INVERSE_GRAPH, TORCHSCRIPT_FILE, "report.json"} | exact
    for rel, digest in m.files.items():
        assert sha256_file(exported.out / rel) == digest
    assert m.torchscript == TORCHSCRIPT_FILE
    if exported.flow.preprocess is not None:
        mean = exported.flow.preprocess.mean.tolist()
        assert m.preprocessing.standardize_mean == pytest.approx(mean)
    assert m.base.kind == exported.flow.base.kind and m.metrics.val_nll == 1.6
    assert m.training_config == {"family": m.family, "seed": 0}
    assert {"torch", "onnx", "onnxruntime", "numpy", "flowserve"} <= set(m.library_versions)
    assert m.opset == export_module.OPSET
    assert m.parity.rows == len(exported.holdout)
    assert m.parity.max_abs_log_prob_diff <= m.parity.log_prob_tolerance
    assert m.parity.roundtrip_max_abs_error <= m.parity.roundtrip_tolerance


@pytest.mark.parametrize("batch", [1, 37])
def test_onnx_log_prob_parity(exported: Exported, batch: int) -> None:
    sess = exported.session(FORWARD_GRAPH)
    x = exported.holdout[:batch]
    z, lp = sess.run(["z", "log_prob"], {"x": x})
    with torch.no_grad():
        z_ref, lp_ref = exported.flow(torch.from_numpy(x))
    assert z.shape == (batch, DIM) and lp.shape == (batch,)
    np.testing.assert_allclose(lp, lp_ref.numpy(), atol=1e-3, rtol=1e-5)
    np.testing.assert_allclose(z, z_ref.numpy(), atol=1e-4, rtol=1e-4)


def test_onnx_roundtrip(exported: Exported) -> None:
    x = exported.holdout[:37]
    (z,) = exported.session(FORWARD_GRAPH).run(["z"], {"x": x})
    (x2,) = exported.session(INVERSE_GRAPH).run(["x"], {"z": z})
    scale = exported.holdout.std(0)
    assert np.max(np.abs(x2 - x) / scale) < 1e-3
    with torch.no_grad():
        x_ref = exported.flow.decode(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(x2, x_ref, atol=1e-3 * scale.max())


def test_torchscript_parity(exported: Exported) -> None:
    module = torch.jit.load(str(exported.out / TORCHSCRIPT_FILE))
    x = torch.from_numpy(exported.holdout[:37])
    with torch.no_grad():
        z, lp = module(x)
        z_ref, lp_ref = exported.flow(x)
        x2 = module.inverse(z)
    torch.testing.assert_close(lp, lp_ref, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(z, z_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x2, x, atol=1e-3 * x.std(0).max().item(), rtol=0)
    assert exported.manifest.parity.torchscript_max_abs_log_prob_diff is not None


def test_calibration(exported: Exported) -> None:
    cal = exported.manifest.calibration
    assert np.all(np.diff(cal.levels) > 0) and np.all(np.diff(cal.log_prob_quantiles) >= 0)
    assert cal.n_rows == len(exported.holdout)
    (lp,) = exported.session(FORWARD_GRAPH).run(["log_prob"], {"x": exported.holdout})
    # The conformal threshold at fpr 0.01 with 200 rows: the k = floor(0.01 * 201) = 2nd lowest
    # held-out log-likelihood; rows strictly below it (1 of 200) are flagged.
    assert cal.method == "holdout" and cal.scores is not None and len(cal.scores) == 200
    assert cal.threshold == pytest.approx(np.sort(lp.astype(np.float64))[1], abs=1e-4)
    assert np.mean(lp < cal.threshold) <= 0.01


def test_verify_cli(exported: Exported, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["verify", str(exported.out)]) == 0
    assert "PASS" in capsys.readouterr().out
    broken = tmp_path / "broken"
    shutil.copytree(exported.out, broken)
    data = bytearray((broken / INVERSE_GRAPH).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / INVERSE_GRAPH).write_bytes(bytes(data))
    assert cli_main(["verify", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "checksum mismatch for inverse.onnx" in out and "Traceback" not in out


def test_verify_cli_unreadable_manifest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / MANIFEST_FILE).write_text("{not json")
    assert cli_main(["verify", str(tmp_path)]) == 1
    assert "not valid JSON" in capsys.readouterr().out
    assert cli_main(["verify", str(tmp_path / "missing")]) == 1
    assert "no manifest.json" in capsys.readouterr().out


class TraceUnsafe(ElementwiseAffine):
    """Computes something else while being traced: torch and the exported graph disagree."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, ld = super().forward(x)
        if torch.jit.is_tracing():
            ld = ld + 0.5
        return z, ld


class WrongInverse(ElementwiseAffine):
    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        x, ld = super().inverse(z)
        return x + 0.1, ld


@pytest.mark.parametrize(
    ("layer", "message"),
    [(TraceUnsafe, "log_prob disagrees with torch"), (WrongInverse, "round trip")],
)
def test_broken_flow_raises_and_leaves_no_manifest(
    layer: type[ElementwiseAffine], message: str, tmp_path: Path
) -> None:
    rows = raw_rows(100, seed=3)
    torch.manual_seed(0)
    flow = Flow(Chain([layer((DIM,))]), StandardNormal([DIM])).set_preprocess(standardize_for(rows))
    (tmp_path / MANIFEST_FILE).write_text("{}")  # a stale manifest must not survive either
    with pytest.raises(ExportError, match=message) as info:
        export_artifact(flow, tmp_path, name="m", version=1, feature_names=FEATURES, holdout=rows)
    assert "tolerance" in str(info.value)
    assert not (tmp_path / MANIFEST_FILE).exists()


def test_bad_arguments_name_the_problem(tmp_path: Path) -> None:
    rows = raw_rows(50, seed=4)
    flow = affine_flow(rows)
    with pytest.raises(ValueError, match=r"shape \[n, 4\]"):
        export_artifact(
            flow, tmp_path, name="m", version=1, feature_names=FEATURES, holdout=rows[:, :3]
        )
    with pytest.raises(ValueError, match="3 feature_names"):
        export_artifact(
            flow, tmp_path, name="m", version=1, feature_names=FEATURES[:3], holdout=rows
        )
    claimed = Preprocessing(standardize_mean=[0.0] * DIM, standardize_scale=[1.0] * DIM)
    with pytest.raises(ValueError, match="standardize_mean does not match"):
        export_artifact(
            flow,
            tmp_path,
            name="m",
            version=1,
            feature_names=FEATURES,
            holdout=rows,
            preprocessing=claimed,
        )


def test_dynamo_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the TorchScript-based exporter fails, the dynamo exporter takes over."""

    def unavailable(*args: object, **kwargs: object) -> None:
        raise RuntimeError("legacy exporter unavailable")

    monkeypatch.setattr(export_module, "_export_legacy", unavailable)
    rows = raw_rows(100, seed=5)
    m = export_artifact(
        affine_flow(rows), tmp_path, name="m", version=1, feature_names=FEATURES, holdout=rows
    )
    assert m.library_versions["onnx_exporter"] == "dynamo"
    sess = ort.InferenceSession(str(tmp_path / FORWARD_GRAPH), providers=["CPUExecutionProvider"])
    assert sess.run(["log_prob"], {"x": rows[:1]})[0].shape == (1,)
    assert sess.run(["log_prob"], {"x": rows[:37]})[0].shape == (37,)


def test_image_shaped_flow_takes_flat_rows(tmp_path: Path) -> None:
    shape = (2, 2, 2)
    torch.manual_seed(0)
    flow = Flow(Chain([ElementwiseAffine(shape)]), StandardNormal(shape), family="tiny_image")
    rows = np.random.default_rng(6).random((64, 8)).astype(np.float32)
    names = [f"p{i}" for i in range(8)]
    m = export_artifact(flow, tmp_path, name="img", version=1, feature_names=names, holdout=rows)
    assert (m.dim, m.input_shape) == (8, [2, 2, 2])
    (lp,) = ort.InferenceSession(str(tmp_path / FORWARD_GRAPH)).run(["log_prob"], {"x": rows})
    with torch.no_grad():
        ref = flow.log_prob(torch.from_numpy(rows).reshape(-1, *shape))
    np.testing.assert_allclose(lp, ref.numpy(), atol=1e-5)


def test_uniform_base_is_recorded(tmp_path: Path) -> None:
    rows = np.random.default_rng(7).uniform(-1, 1, (64, DIM)).astype(np.float32)
    flow = Flow(Chain([]), StandardUniform([DIM]), family="angles")
    m = export_artifact(flow, tmp_path, name="a", version=1, feature_names=FEATURES, holdout=rows)
    assert (m.base.kind, m.base.low, m.base.high) == ("uniform", -np.pi, np.pi)


def test_graphs_need_no_torch(tmp_path: Path) -> None:
    """A python process where ``import torch`` fails reproduces torch's log-likelihoods."""
    rows = raw_rows(100, seed=8)
    flow = affine_flow(rows)
    export_artifact(
        flow, tmp_path, name="m", version=1, feature_names=FEATURES, holdout=rows, torchscript=False
    )
    with torch.no_grad():
        z = flow.encode(torch.from_numpy(rows)).numpy()
        lp = flow.log_prob(torch.from_numpy(rows)).numpy()
    np.save(tmp_path / "x.npy", rows)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "lp.npy", lp)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now raises ImportError
        import numpy as np
        import onnxruntime as ort
        d = {str(tmp_path)!r}
        x, z, lp = (np.load(f"{{d}}/{{n}}.npy") for n in ("x", "z", "lp"))
        fwd = ort.InferenceSession(f"{{d}}/forward.onnx", providers=["CPUExecutionProvider"])
        inv = ort.InferenceSession(f"{{d}}/inverse.onnx", providers=["CPUExecutionProvider"])
        z2, lp2 = fwd.run(["z", "log_prob"], {{"x": x}})
        np.testing.assert_allclose(lp2, lp, atol=1e-5, rtol=1e-6)
        (x2,) = inv.run(["x"], {{"z": z}})
        np.testing.assert_allclose(x2, x, atol=1e-3 * x.std(0).max())
        assert "torch" not in {{k for k, v in sys.modules.items() if v is not None}}
        print("ok", len(lp2))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok 100"
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["torchscript"] is None


def test_torchscript_failure_is_optional(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A flow TorchScript cannot trace still gets its ONNX artifact, with a logged warning."""

    def untraceable(*args: object, **kwargs: object) -> None:
        raise RuntimeError("cannot trace this")

    monkeypatch.setattr(export_module, "_export_torchscript", untraceable)
    rows = raw_rows(100, seed=9)
    m = export_artifact(
        affine_flow(rows), tmp_path, name="m", version=1, feature_names=FEATURES, holdout=rows
    )
    assert m.torchscript is None and m.parity.torchscript_max_abs_log_prob_diff is None
    assert not (tmp_path / TORCHSCRIPT_FILE).exists()
    assert "no TorchScript for family affine" in caplog.text
    assert cli_main(["verify", str(tmp_path)]) == 0


def test_float64_training_flow_is_exported_in_float32_and_left_untouched(tmp_path: Path) -> None:
    rows = raw_rows(100, seed=10)
    flow = affine_flow(rows).double().train()
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    m = export_artifact(flow, tmp_path, name="m", version=1, feature_names=FEATURES, holdout=rows)
    assert flow.training and all(v.dtype == torch.float64 for v in flow.state_dict().values())
    assert all(torch.equal(before[k], v) for k, v in flow.state_dict().items())
    sess = ort.InferenceSession(str(tmp_path / FORWARD_GRAPH), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(float)"
    assert m.parity.max_abs_log_prob_diff <= m.parity.log_prob_tolerance


IMAGE_FAMILIES = ["glow_image", "realnvp_image"]


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_image_family_exports_flat_rows(family: str, tmp_path: Path) -> None:
    """Image flows take ``[N, C, H, W]`` and give flat latents; the graphs take flat rows."""
    shape = (1, 4, 4)
    torch.manual_seed(0)
    flow = build_flow(family, shape=shape, levels=2, steps=1, hidden=8, num_values=17)
    randomize(flow, seed=0)
    rows = np.random.default_rng(11).integers(0, 17, (64, 16)).astype(np.float32) + 0.5
    names = [f"px{i}" for i in range(16)]
    m = export_artifact(flow, tmp_path, name="img", version=1, feature_names=names, holdout=rows)
    assert (m.dim, m.input_shape) == (16, list(shape))
    x = rows[:37]
    fwd = ort.InferenceSession(str(tmp_path / FORWARD_GRAPH), providers=["CPUExecutionProvider"])
    z, lp = fwd.run(["z", "log_prob"], {"x": x})
    with torch.no_grad():
        ref = flow.eval().log_prob(torch.from_numpy(x).reshape(-1, *shape))
    np.testing.assert_allclose(lp, ref.numpy(), atol=1e-3, rtol=1e-5)
    inv = ort.InferenceSession(str(tmp_path / INVERSE_GRAPH), providers=["CPUExecutionProvider"])
    assert np.max(np.abs(inv.run(["x"], {"z": z})[0] - x)) < 1e-3
    assert cli_main(["verify", str(tmp_path)]) == 0


def test_roundtrip_error_wraps_angles_only_for_uniform_bases() -> None:
    x = np.array([[-np.pi + 1e-4, 0.5]])
    back = np.array([[np.pi + 1e-4, 0.5 + 2e-4]])
    scale = np.ones(2)
    angles = BaseSpec(kind="uniform", low=-np.pi, high=np.pi)
    assert roundtrip_error(x, back, scale, angles) == pytest.approx(2e-4)
    assert roundtrip_error(x, back, scale, BaseSpec()) == pytest.approx(2 * np.pi)
    assert roundtrip_error(x, back * np.nan, scale, BaseSpec()) == np.inf


def _angles(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-4.0, 4.0, (n, 2))  # some outside [-pi, pi): the flow wraps them


def _unit_vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


MANIFOLD_CASES = {
    "circle": ({"dim": 2, "layers": 2, "bins": 6, "hidden": 16}, _angles),
    "sphere": ({"dim": 3, "layers": 2, "bins": 6, "hidden": 16}, _unit_vectors),
}


@pytest.mark.parametrize("family", sorted(MANIFOLD_CASES))
def test_manifold_family_exports(family: str, tmp_path: Path) -> None:
    hparams, data = MANIFOLD_CASES[family]
    torch.manual_seed(0)
    flow = build_flow(family, **hparams)
    randomize(flow, seed=0)
    rows = data(120, np.random.default_rng(12)).astype(np.float32)
    names = [f"c{i}" for i in range(rows.shape[1])]
    m = export_artifact(flow, tmp_path, name="mf", version=1, feature_names=names, holdout=rows)
    assert m.base.kind == flow.base.kind
    (lp,) = ort.InferenceSession(str(tmp_path / FORWARD_GRAPH)).run(["log_prob"], {"x": rows})
    with torch.no_grad():
        ref = flow.eval().log_prob(torch.from_numpy(rows))
    np.testing.assert_allclose(lp, ref.numpy(), atol=1e-3, rtol=1e-5)
    assert m.parity.roundtrip_max_abs_error <= 1e-3
    assert cli_main(["verify", str(tmp_path)]) == 0


def test_verify_cli_reports_an_unloadable_graph(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Garbage with a matching checksum (re-hashed manifest) fails at load, not with a traceback."""
    rows = raw_rows(60, seed=13)
    export_artifact(
        affine_flow(rows), tmp_path, name="m", version=1, feature_names=FEATURES, holdout=rows
    )
    (tmp_path / FORWARD_GRAPH).write_bytes(b"not an onnx graph")
    data = json.loads((tmp_path / MANIFEST_FILE).read_text())
    data["files"][FORWARD_GRAPH] = sha256_file(tmp_path / FORWARD_GRAPH)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    assert cli_main(["verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "forward.onnx does not load in ONNX Runtime" in out and "Traceback" not in out


def test_exported_graphs_are_optimised(exported: Exported) -> None:
    """Every family's graphs go through the optimisation pass; the parity tests above run on
    the saved (optimised) graphs, and the manifest records the node counts."""
    for graph, file in (("forward", "forward.onnx"), ("inverse", "inverse.onnx")):
        counts = exported.manifest.graph_nodes[graph]
        saved = onnx.load(str(exported.out / file))
        assert counts["saved"] == len(saved.graph.node) <= counts["exported"]

"""A torch-free, honest flow artifact for service tests, built with ``onnx.helper``.

The flow standardizes each feature and applies an elementwise affine map,
``z = a * (x - mean) / std + b``, over a standard normal base. So each feature of ``x`` is
Gaussian with mean ``mean - std * b / a`` and scale ``std / |a|``, and every number the service
returns has a closed form (:func:`affine_log_prob`, :func:`affine_encode`, :func:`affine_decode`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from flowserve.artifact import (
    FORWARD_GRAPH,
    INVERSE_GRAPH,
    Calibration,
    Manifest,
    Parity,
    Preprocessing,
    sha256_file,
    write_manifest,
)
from flowserve.service.app import create_app
from flowserve.service.settings import ServiceSettings

__all__ = [
    "AffineFlow",
    "affine_flow",
    "build_affine_artifact",
    "build_torchscript_only_artifact",
    "corrupt_artifact",
    "npy_bytes",
    "npy_load",
    "service_client",
]

OPSET = 17


@dataclass(frozen=True)
class AffineFlow:
    """Parameters of the test flow and its closed-form answers (float64)."""

    mean: np.ndarray
    std: np.ndarray
    a: np.ndarray
    b: np.ndarray
    feature_names: list[str] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return len(self.mean)

    def encode(self, x: np.ndarray) -> np.ndarray:
        return self.a * (np.asarray(x, np.float64) - self.mean) / self.std + self.b

    def decode(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float64) - self.b) / self.a * self.std + self.mean

    def log_det(self) -> float:
        return float(np.sum(np.log(np.abs(self.a))) - np.sum(np.log(self.std)))

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """Exact log-density: each feature is N(mean - std*b/a, (std/|a|)^2)."""
        x = np.asarray(x, np.float64)
        loc = self.mean - self.std * self.b / self.a
        scale = self.std / np.abs(self.a)
        u = (x - loc) / scale
        return np.sum(-0.5 * u**2 - np.log(scale) - 0.5 * math.log(2 * math.pi), axis=1)

    def sample(self, n: int, seed: int) -> np.ndarray:
        z = np.random.default_rng(seed).standard_normal((n, self.dim))
        return self.decode(z)


def affine_flow(dim: int = 3, seed: int = 0, shift: float = 0.0) -> AffineFlow:
    rng = np.random.default_rng(seed)
    return AffineFlow(
        mean=rng.normal(size=dim) * 3 + shift,
        std=rng.uniform(0.5, 2.0, size=dim),
        a=rng.uniform(0.5, 1.5, size=dim) * rng.choice([-1.0, 1.0], size=dim),
        b=rng.normal(size=dim) * 0.3,
        feature_names=[f"f{i}" for i in range(dim)],
    )


def _const(name: str, value: np.ndarray | float) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _forward_model(flow: AffineFlow) -> onnx.ModelProto:
    d = flow.dim
    const = -0.5 * d * math.log(2 * math.pi) + flow.log_det()
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["xc"]),
        helper.make_node("Div", ["xc", "std"], ["u"]),
        helper.make_node("Mul", ["u", "a"], ["au"]),
        helper.make_node("Add", ["au", "b"], ["z"]),
        helper.make_node("Mul", ["z", "z"], ["zz"]),
        helper.make_node("ReduceSum", ["zz", "axes"], ["ss"], keepdims=0),
        helper.make_node("Mul", ["ss", "minus_half"], ["hs"]),
        helper.make_node("Add", ["hs", "c"], ["log_prob"]),
    ]
    inits = [
        _const("mean", flow.mean),
        _const("std", flow.std),
        _const("a", flow.a),
        _const("b", flow.b),
        _const("minus_half", -0.5),
        _const("c", const),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
    ]
    graph = helper.make_graph(
        nodes,
        "affine_forward",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d])],
        [
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", d]),
            helper.make_tensor_value_info("log_prob", TensorProto.FLOAT, ["batch"]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _inverse_model(flow: AffineFlow) -> onnx.ModelProto:
    d = flow.dim
    nodes = [
        helper.make_node("Sub", ["z", "b"], ["zb"]),
        helper.make_node("Div", ["zb", "a"], ["u"]),
        helper.make_node("Mul", ["u", "std"], ["us"]),
        helper.make_node("Add", ["us", "mean"], ["x"]),
    ]
    inits = [_const("mean", flow.mean), _const("std", flow.std), _const("a", flow.a)]
    inits.append(_const("b", flow.b))
    graph = helper.make_graph(
        nodes,
        "affine_inverse",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _exact_parity(rows: int) -> Parity:
    """The parity record of a graph that is its own reference: no difference on ``rows``."""
    return Parity(
        rows=rows,
        max_abs_log_prob_diff=0.0,
        log_prob_tolerance=1e-4,
        roundtrip_max_abs_error=0.0,
        roundtrip_tolerance=1e-4,
    )


def build_affine_artifact(
    root: Path, name: str = "toy", version: int = 1, flow: AffineFlow | None = None
) -> tuple[Path, AffineFlow]:
    """Write ``<root>/<name>/<version>/`` for ``flow`` and return (directory, flow)."""
    flow = flow or affine_flow()
    out = Path(root) / name / str(version)
    out.mkdir(parents=True, exist_ok=True)
    for model, file in (
        (_forward_model(flow), FORWARD_GRAPH),
        (_inverse_model(flow), INVERSE_GRAPH),
    ):
        onnx.checker.check_model(model)
        onnx.save(model, str(out / file))
    holdout = flow.sample(2000, seed=version + 100)
    manifest = Manifest(
        name=name,
        version=version,
        family="affine-test",
        hyperparameters={"kind": "elementwise affine"},
        dim=flow.dim,
        input_shape=[flow.dim],
        feature_names=flow.feature_names,
        preprocessing=Preprocessing(
            standardize_mean=flow.mean.tolist(), standardize_scale=flow.std.tolist()
        ),
        calibration=Calibration.from_log_probs(flow.log_prob(holdout), default_fpr=0.05),
        parity=_exact_parity(rows=256),
        opset=OPSET,
        files={f: sha256_file(out / f) for f in (FORWARD_GRAPH, INVERSE_GRAPH)},
        library_versions={"onnx": onnx.__version__},
    )
    write_manifest(out, manifest)
    return out, flow


def build_torchscript_only_artifact(root: Path, name: str = "scripted", version: int = 1) -> Path:
    """An artifact whose graphs are a TorchScript file only (content irrelevant: without torch
    the service must refuse it before reading it)."""
    out = Path(root) / name / str(version)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.pt").write_bytes(b"placeholder TorchScript archive")
    flow = affine_flow(2)
    manifest = Manifest(
        name=name,
        version=version,
        family="affine-test",
        hyperparameters={},
        dim=2,
        input_shape=[2],
        feature_names=["a", "b"],
        calibration=Calibration.from_log_probs(flow.log_prob(flow.sample(100, 0))),
        parity=_exact_parity(rows=1),
        graphs={"forward": "model.pt", "inverse": "model.pt"},
        torchscript="model.pt",
        opset=OPSET,
        files={"model.pt": sha256_file(out / "model.pt")},
    )
    write_manifest(out, manifest)
    return out


def corrupt_artifact(directory: Path) -> None:
    """Flip bytes in the forward graph so its checksum no longer matches the manifest."""
    path = Path(directory) / FORWARD_GRAPH
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def service_client(root: Path | None = None, **settings: Any) -> TestClient:
    """An in-process client on ``create_app(ServiceSettings(model_root=root, **settings))``.

    Enter it (``with service_client(root) as c:``) to run the lifespan: the models load and warm
    up on entry and the engine stops on exit. ``root=None`` serves the bundled default model.
    """
    if root is not None:
        settings["model_root"] = root
    return TestClient(create_app(ServiceSettings(**settings)))


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def npy_load(data: bytes) -> np.ndarray:
    import io

    return np.load(io.BytesIO(data), allow_pickle=False)

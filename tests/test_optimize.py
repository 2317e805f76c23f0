"""Export's graph optimisation pass: gather folding on hand-built graphs, and the pass on a real
exported flow (fewer nodes, same outputs, counts in the manifest, loads on a stock session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from flowserve.artifact import load_manifest
from flowserve.models import build_flow
from flowserve.models.base import Standardize
from flowserve.models.export import export_artifact
from flowserve.models.optimize import fold_gathers, optimize_graph


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def _gather(name: str, src: str, idx: list[int], out: str) -> list:
    const = numpy_helper.from_array(np.array(idx, dtype=np.int64), f"{name}_idx")
    return [const, helper.make_node("Gather", [src, const.name], [out], name=name, axis=1)]


def _column_model() -> onnx.ModelProto:
    """x[:, [3,1,0,2]][:, [2,0]] -> a; concat(a, x[:, [1]])[:, [2]] -> b; b[:, [0]] -> c."""
    parts = [
        *_gather("g1", "x", [3, 1, 0, 2], "t1"),
        *_gather("g2", "t1", [2, 0], "a"),
        *_gather("g3", "x", [1], "one"),
        *_gather("g4", "cat", [2], "b"),
        *_gather("g5", "b", [0], "c"),
    ]
    inits = [p for p in parts if isinstance(p, TensorProto)]
    nodes = [p for p in parts if not isinstance(p, TensorProto)]
    nodes.insert(3, helper.make_node("Concat", ["a", "one"], ["cat"], axis=1))
    nodes.append(helper.make_node("Neg", ["c"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "columns",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 2]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fold_gathers_composes_and_bypasses_concat() -> None:
    model = _column_model()
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    before = _run(model, x)
    assert fold_gathers(model) >= 3
    after = _run(model, x)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    by_name = {n.name: n for n in model.graph.node}
    assert by_name["g2"].input[0] == "x"  # composed with g1: reads x directly
    assert by_name["g4"].input[0] == "one"  # picks the concat's second input only
    assert by_name["g5"].input[0] == "x"  # through g4 and g3: x[:, [1]]


def test_optimize_graph_collapses_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "g.onnx"
    onnx.save(_column_model(), str(path))
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    before = _run(onnx.load(str(path)), x)
    assert optimize_graph(path, x) == {"exported": 7, "saved": 3}  # x[:, [0, 3]]; -x[:, [1]]
    saved = onnx.load(str(path))
    assert sorted(n.op_type for n in saved.graph.node) == ["Gather", "Gather", "Neg"]
    for a, b in zip(before, _run(saved, x), strict=True):
        np.testing.assert_array_equal(a, b)


def test_optimize_keeps_the_exported_graph_when_outputs_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "g.onnx"
    onnx.save(_column_model(), str(path))
    original = path.read_bytes()

    def corrupt(model: onnx.ModelProto) -> int:  # a "fold" that changes the answer
        gather = next(n for n in model.graph.node if n.op_type == "Gather")
        zeros = numpy_helper.from_array(np.zeros(2, dtype=np.int64), "wrong_idx")
        model.graph.initializer.append(zeros)
        gather.input[1] = zeros.name
        return 1

    monkeypatch.setattr("flowserve.models.optimize.fold_gathers", corrupt)
    counts = optimize_graph(path, np.ones((5, 4), dtype=np.float32))
    assert counts["saved"] == counts["exported"]
    assert path.read_bytes() == original


def test_export_optimises_and_records_node_counts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    rows = (rng.standard_normal((300, 4)) * [3, 1, 2, 0.5] + [5, 0, -1, 2]).astype(np.float32)
    flow = build_flow("realnvp", dim=4, layers=4, hidden=16)
    flow.set_preprocess(Standardize(torch.from_numpy(rows.mean(0)), torch.from_numpy(rows.std(0))))
    kwargs = {"name": "m", "version": 1, "feature_names": list("abcd"), "holdout": rows}
    plain = export_artifact(flow, tmp_path / "plain", torchscript=False, optimize=False, **kwargs)
    lean = export_artifact(flow, tmp_path / "lean", torchscript=False, **kwargs)
    assert plain.graph_nodes == {}
    for graph in ("forward", "inverse"):
        counts = lean.graph_nodes[graph]
        saved = onnx.load(str(tmp_path / "lean" / f"{graph}.onnx"))
        assert counts["saved"] == len(saved.graph.node) < counts["exported"] * 0.7
        kinds = {n.op_type for n in saved.graph.node}
        assert not kinds & {"Constant", "Identity"}
        # Plain ONNX on a stock session: default options, no fused or contrib operators.
        assert all(n.domain in ("", "ai.onnx") for n in saved.graph.node)
    assert load_manifest(tmp_path / "lean").graph_nodes == lean.graph_nodes
    x = rows[:50]
    stock = {
        d: ort.InferenceSession(
            str(tmp_path / d / "forward.onnx"), providers=["CPUExecutionProvider"]
        )
        for d in ("plain", "lean")
    }
    a, b = (stock[d].run(["z", "log_prob"], {"x": x}) for d in ("plain", "lean"))
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
    assert lean.parity.max_abs_log_prob_diff <= lean.parity.log_prob_tolerance

"""Leaner exported graphs: an optimisation pass run by export on each ONNX graph it writes.

The exporters leave shape plumbing (``Shape -> Gather -> Unsqueeze -> Concat`` feeding
``Reshape``), ``Constant`` and ``Identity`` nodes, and chains of column gathers (every coupling
layer splits, merges and splits its columns again). :func:`optimize_graph` folds them in two
portable steps, both plain ONNX that any stock ONNX Runtime loads (no runtime-specific fused
operators, nothing tied to this machine):

1. onnxscript's optimizer: constant folding, shape folding, dead-node removal;
2. column-gather folding (:func:`fold_gathers`): ``Gather(Gather(t, i), j)`` on one axis with
   constant indices becomes ``Gather(t, i[j])``, a gather that picks one input of a ``Concat``
   reads that input directly, and a gather that keeps every column in order disappears.

The optimised graph replaces the exported one only if ONNX Runtime gives the same outputs on the
example rows at two batch sizes; otherwise the exported graph stays, with a warning. Export then
runs its parity checks (torch vs ONNX Runtime, round trip) on the saved graphs.

Example:
    >>> counts = optimize_graph(path, rows)   # doctest: +SKIP
    >>> counts                                # doctest: +SKIP
    {'exported': 381, 'saved': 170}
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["fold_gathers", "optimize_graph"]

log = logging.getLogger(__name__)

# Largest relative output change accepted from the optimisation (float32 rounding only).
_TOLERANCE = 1e-5


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _axis(node: onnx.NodeProto) -> int:
    for a in node.attribute:
        if a.name == "axis":
            return int(a.i)
    return 0


def _width(graph: onnx.GraphProto, name: str, axis: int) -> int | None:
    """The static size of ``name`` along ``axis``, where shape inference knows it."""
    for info in [*graph.value_info, *graph.input, *graph.output]:
        if info.name == name:
            dims = info.type.tensor_type.shape.dim
            if len(dims) > axis and dims[axis].HasField("dim_value"):
                return int(dims[axis].dim_value)
    return None


def fold_gathers(model: onnx.ModelProto) -> int:
    """Fold constant-index gathers in place (see the module docstring); returns how many
    ``Gather`` nodes were rewired or removed. Dead nodes are left for the optimizer to drop."""
    graph = model.graph
    model_inferred = onnx.shape_inference.infer_shapes(model)
    inferred = model_inferred.graph
    consts = _constants(graph)
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    renamed: dict[str, str] = {}
    folded = 0

    def index(node: onnx.NodeProto) -> np.ndarray | None:
        idx = consts.get(node.input[1])
        return idx.astype(np.int64) if idx is not None and idx.ndim == 1 else None

    for node in list(graph.node):
        if node.op_type != "Gather" or len(node.input) != 2:
            continue
        idx = index(node)
        if idx is None:
            continue
        axis = _axis(node)
        src = producer.get(node.input[0])
        # Gather of a gather on the same axis: compose the index lists.
        while src is not None and src.op_type == "Gather" and _axis(src) == axis:
            inner = index(src)
            if inner is None or np.any(idx >= len(inner)) or np.any(idx < -len(inner)):
                break
            idx = inner[idx]
            node.input[0] = src.input[0]
            src = producer.get(node.input[0])
            folded += 1
        # Gather of a Concat on the same axis that reads a single input of it.
        if src is not None and src.op_type == "Concat" and _axis(src) == axis and axis != 0:
            widths = [_width(inferred, name, axis) for name in src.input]
            if all(w is not None for w in widths) and len(idx) and np.all(idx >= 0):
                starts = np.cumsum([0, *widths[:-1]])
                for start, w, name in zip(starts, widths, src.input, strict=True):
                    if np.all((idx >= start) & (idx < start + w)):  # type: ignore[operator]
                        idx = idx - start
                        node.input[0] = name
                        folded += 1
                        break
        if not np.array_equal(idx, index(node)):  # keep the node consistent: others compose
            name = f"{node.name or node.output[0]}_folded_index"
            graph.initializer.append(numpy_helper.from_array(idx, name))
            consts[name] = idx
            node.input[1] = name
        width = _width(inferred, node.input[0], axis)
        keeps_all = width == len(idx) and np.array_equal(idx, np.arange(width))
        if axis != 0 and keeps_all and node.output[0] not in outputs:
            renamed[node.output[0]] = node.input[0]  # identity: readers take the input itself
            folded += 1
    for node in graph.node:
        for i, name in enumerate(node.input):
            while name in renamed:
                name = renamed[name]
            node.input[i] = name
    return folded


def _outputs(path_or_model: Path | bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    source = str(path_or_model) if isinstance(path_or_model, Path) else path_or_model
    session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and np.allclose(x, y, rtol=_TOLERANCE, atol=_TOLERANCE, equal_nan=True)
        for x, y in zip(a, b, strict=True)
    )


def optimize_graph(path: Path, example: np.ndarray) -> dict[str, int]:
    """Optimise the ONNX graph at ``path`` in place and return its node counts,
    ``{"exported": ..., "saved": ...}``. ``example``: float32 rows for the graph's one input."""
    path = Path(path)
    model = onnx.load(str(path))
    exported = len(model.graph.node)
    try:
        from onnxscript import optimizer

        optimized = optimizer.optimize(model, num_iterations=2)
        fold_gathers(optimized)
        optimized = optimizer.optimize(optimized, num_iterations=2)
        onnx.checker.check_model(optimized)
        candidate = optimized.SerializeToString()
        feeds_at = [example[:1], example]
        name = model.graph.input[0].name
        same = all(
            _same(_outputs(path, {name: rows}), _outputs(candidate, {name: rows}))
            for rows in feeds_at
        )
    except Exception as e:  # an optimizer failure must never fail an export
        log.warning("%s: graph optimisation skipped: %s: %s", path.name, type(e).__name__, e)
        return {"exported": exported, "saved": exported}
    if not same:
        log.warning("%s: the optimised graph changes outputs; keeping the exported one", path.name)
        return {"exported": exported, "saved": exported}
    path.write_bytes(candidate)
    return {"exported": exported, "saved": len(optimized.graph.node)}

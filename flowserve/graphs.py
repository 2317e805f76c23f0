"""The ONNX graphs of an artifact as every side opens them: names, sessions, batched runs.

Torch-free (numpy; onnxruntime is imported when a session is made), so the training side
(export's parity checks), ``flowserve verify`` and the service share one definition without
depending on each other. The graph files are named in :mod:`flowserve.artifact`
(:data:`~flowserve.artifact.FORWARD_GRAPH`, :data:`~flowserve.artifact.INVERSE_GRAPH`); this
module names what goes in and out of them.

Example:
    >>> FORWARD.input, FORWARD.outputs, INVERSE.input, INVERSE.outputs
    ('x', ('z', 'log_prob'), 'z', ('x',))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flowserve.artifact import FORWARD_GRAPH, INVERSE_GRAPH, SCORE_GRAPH

__all__ = [
    "FORWARD",
    "INVERSE",
    "SCORE",
    "GraphIO",
    "onnx_session",
    "run_batched",
]


@dataclass(frozen=True)
class GraphIO:
    """One graph of the contract: its default file, its input and its outputs, in order."""

    file: str
    input: str
    outputs: tuple[str, ...]


# forward: flat raw rows x [batch, dim] -> latents z [batch, dim] and log_prob [batch].
FORWARD = GraphIO(FORWARD_GRAPH, "x", ("z", "log_prob"))
# inverse: flat latents z [batch, dim] -> flat raw rows x [batch, dim].
INVERSE = GraphIO(INVERSE_GRAPH, "z", ("x",))
# score (cross-fitted calibration only): x -> the served model's log_prob [batch] and each fold
# model's, fold_log_prob [batch, folds] (see flowserve.artifact.CrossFitScores).
SCORE = GraphIO(SCORE_GRAPH, "x", ("log_prob", "fold_log_prob"))


def onnx_session(path: Path, intra_op_threads: int = 1, inter_op_threads: int = 1) -> Any:
    """A CPU ONNX Runtime session, fully optimised, logging errors only.

    The one way every side opens a graph (the service, export's parity check, ``flowserve
    verify``), so what export measures is what the service runs. onnxruntime's own exceptions
    propagate; callers word them for their users.

    Arguments:
        path: the ``.onnx`` file.
        intra_op_threads: threads inside one operator.
        inter_op_threads: threads across independent operators.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = inter_op_threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_batched(
    fn: Callable[[np.ndarray], Sequence[np.ndarray]], rows: np.ndarray, batch: int
) -> list[np.ndarray]:
    """``fn`` on ``rows`` in chunks of ``batch`` rows, each of its outputs concatenated.

    Example:
        >>> run_batched(lambda b: [b.sum(axis=1)], np.ones((5, 2)), batch=2)
        [array([2., 2., 2., 2., 2.])]
    """
    parts = [list(fn(rows[start : start + batch])) for start in range(0, rows.shape[0], batch)]
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]

"""The ``score`` graph of a cross-fitted calibration: the served model and its fold models in one.

Cross-conformal calibration (:class:`flowserve.artifact.CrossFitScores`) compares a new row's
score under each fold model with the scores of the rows that fold model left out, so the service
needs every fold model's log-likelihood of the rows it scores. Export writes them, with the
served model's, as one graph (input ``x`` ``[batch, dim]``; outputs ``log_prob`` ``[batch]`` and
``fold_log_prob`` ``[batch, folds]``): ``/score`` then makes one graph call, as before.

Export checks the graph against torch on the parity rows with the forward graph's tolerance,
then scores the calibration groups with it (the test split by the served column, each fold's
left-out rows by that fold's column): the stored scores are the ones the service computes.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from flowserve.artifact import Calibration
from flowserve.graphs import SCORE, onnx_session, run_batched
from flowserve.models.base import Flow
from flowserve.models.optimize import optimize_graph
from flowserve.models.preprocess import served_flow
from flowserve.parity import log_prob_parity

__all__ = ["ScoreGraph", "export_score_graph"]

log = logging.getLogger(__name__)

_BATCH = 4096
# Rows the optimisation pass compares the graph's outputs on before and after.
_PARITY_EXAMPLE = 37


class ScoreGraph(nn.Module):
    """Flat raw rows ``x`` -> ``(log_prob [batch], fold_log_prob [batch, folds])``."""

    def __init__(self, served: Flow, folds: Sequence[Flow], row_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.served = served
        self.folds = nn.ModuleList(folds)
        self.row_shape = row_shape

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        rows = x.reshape((x.shape[0], *self.row_shape))
        folds = [fold.log_prob(rows) for fold in self.folds]
        return self.served.log_prob(rows), torch.stack(folds, dim=1)


def _as_served(flow: Flow) -> Flow:
    return served_flow(copy.deepcopy(flow)).to(device="cpu", dtype=torch.float32).eval()


def export_score_graph(
    served: Flow,
    folds: Sequence[Flow],
    fold_rows: Sequence[np.ndarray],
    out_dir: Path,
    *,
    row_shape: tuple[int, ...],
    holdout: np.ndarray,
    parity_rows: int,
    atol: float,
    rtol: float,
    default_fpr: float,
    optimize: bool = True,
) -> tuple[Calibration, dict[str, int] | None]:
    """Write ``score.onnx`` for ``served`` (already as exported) and the fold models ``folds``
    (copied as served: float32, CPU, eval, dequantization off), check it against torch on the
    first ``parity_rows`` rows of ``holdout``, and return the cross-fitted calibration it
    scores: the served column on ``holdout`` (the test split), fold ``k``'s column on
    ``fold_rows[k]``. With ``optimize`` the graph goes through export's optimisation pass
    first (as the forward and inverse graphs do; its node counts are returned, else None).

    Raises ``ValueError`` when the graph disagrees with torch beyond ``atol + rtol * |lp|``.
    """
    from flowserve.models.export import export_onnx

    graph = ScoreGraph(served, [_as_served(f) for f in folds], row_shape).eval()
    path = Path(out_dir) / SCORE.file
    holdout = np.ascontiguousarray(holdout, dtype=np.float32)
    check = holdout[:parity_rows]
    with torch.no_grad():
        export_onnx(
            graph, torch.from_numpy(check[:8].copy()), path, SCORE.input, list(SCORE.outputs)
        )
        ref_lp, ref_folds = (t.double().numpy() for t in graph(torch.from_numpy(check)))
    nodes = optimize_graph(path, check[:_PARITY_EXAMPLE]) if optimize else None
    session = onnx_session(path)

    def run(rows: np.ndarray) -> list[np.ndarray]:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        return run_batched(
            lambda b: session.run(list(SCORE.outputs), {SCORE.input: b}), rows, _BATCH
        )

    served_lp, served_folds = run(holdout)
    for what, got, ref in (
        ("log_prob", served_lp[:parity_rows], ref_lp),
        ("fold_log_prob", served_folds[:parity_rows].reshape(-1), ref_folds.reshape(-1)),
    ):
        parity = log_prob_parity(got.astype(np.float64), ref, atol, rtol)
        if not parity.passed:
            path.unlink(missing_ok=True)
            raise ValueError(
                f"the score graph's {what} disagrees with torch: max |diff| "
                f"{parity.max_abs_diff:.3g} nats exceeds the tolerance {parity.rule}"
            )
    fold_lps = [run(rows)[1][:, k] for k, rows in enumerate(fold_rows)]
    log.info("score graph: %d fold models, %d calibration rows", len(folds), len(holdout))
    return Calibration.cross_fitted(served_lp, fold_lps, default_fpr), nodes

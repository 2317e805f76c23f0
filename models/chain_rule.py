"""Exact chain-rule decompositions of a flow's density, where the flow has one, as an ONNX graph.

A flow whose map from data to latent is triangular in one variable order (every layer an
autoregressive transform with the *same* order, or the Gaussian's lower-triangular map, after an
element-wise preprocessing, with a standard normal base) factorizes its density exactly in that
order:

    log p(x) = sum_i log p(x_i | x_j for j before i),
    log p(x_i | ...) = log N(z_i) + sum over layers of log|dz_i / dx_i| (+ the preprocessing's).

Each term is then a normalized conditional density of the model's own joint (the Jacobian is
triangular, so the composite's diagonal is the product of the layers'), not an approximation.
Stacks that reverse or permute the order between layers (the defaults of ``maf``, ``iaf``,
``nsf_ar``) mix variables across layers and have no such decomposition in any single order:
:func:`chain_rule_order` returns None for them, and nothing is exported.

Export writes ``chain_rule.onnx`` (input ``x`` ``[batch, dim]``, output ``terms``
``[batch, dim]``: ``log p(x_i | x_before_i)`` at each feature's own index) and the order in the
manifest; the torch-free service serves the terms from ``/explain`` (``kind: chain_rule``).

Example:
    >>> from flowserve.models.autoregressive import build_maf
    >>> chain_rule_order(build_maf(3, layers=1, hidden=8))
    [0, 1, 2]
    >>> chain_rule_order(build_maf(3, layers=2, hidden=8)) is None  # orders alternate
    True
    >>> from flowserve.models.gaussian import build_gaussian
    >>> chain_rule_order(build_gaussian(3))
    [0, 1, 2]
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from torch import Tensor, nn

from flowserve.artifact import CHAIN_RULE_GRAPH
from flowserve.models.autoregressive import MaskedAutoregressiveTransform
from flowserve.models.base import Chain, Flow, Standardize, StandardNormal
from flowserve.models.gaussian import LowerAffine

__all__ = ["ChainRuleGraph", "chain_rule_order", "export_chain_rule"]

log = logging.getLogger(__name__)
_LOG_2PI = math.log(2.0 * math.pi)


# Layers with a triangular Jacobian: ``ranks`` (each feature's 1-based place in the order) and
# ``per_feature(x) -> (z, log|dz_i/dx_i| [batch, dim])``.
Triangular = MaskedAutoregressiveTransform | LowerAffine
TRIANGULAR = get_args(Triangular)


def _layers(flow: Flow) -> list[Triangular] | None:
    t = flow.transform
    layers = list(t.transforms) if isinstance(t, Chain) else [t]
    if not layers or not all(type(x) in TRIANGULAR for x in layers):
        return None
    return layers  # type: ignore[return-value]


def chain_rule_order(flow: Flow) -> list[int] | None:
    """Feature indices in conditioning order when ``flow``'s density factorizes exactly in one
    order (see the module docstring), else None."""
    layers = _layers(flow)
    if layers is None or not isinstance(flow.base, StandardNormal):
        return None
    if len(flow.base.event_shape) != 1:
        return None
    if flow.preprocess is not None and not isinstance(flow.preprocess, Standardize):
        return None
    orders = [layer.ranks for layer in layers]
    if any(o != orders[0] for o in orders):
        return None
    # order[j] is feature j's rank (1-based): conditioning order = features sorted by rank
    return [int(j) for j in np.argsort(np.asarray(orders[0]), kind="stable")]


class ChainRuleGraph(nn.Module):
    """Raw rows ``x [batch, dim]`` -> ``terms [batch, dim]``, ``terms.sum(1) == log_prob``."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        layers = _layers(flow)
        if layers is None or chain_rule_order(flow) is None:
            raise ValueError("this flow has no single-order chain-rule decomposition")
        self.preprocess = flow.preprocess
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        ld = torch.zeros_like(x)
        if isinstance(self.preprocess, Standardize):
            x, ld = self.preprocess.per_feature(x)
        for layer in self.layers:
            x, part = layer.per_feature(x)
            ld = ld + part
        return -0.5 * x * x - 0.5 * _LOG_2PI + ld


def export_chain_rule(
    flow: Flow, out_dir: Path, rows: np.ndarray, log_prob: np.ndarray, atol: float = 1e-3
) -> list[int] | None:
    """Write ``chain_rule.onnx`` for ``flow`` (CPU float32, eval) when it has an exact order, and
    check with ONNX Runtime that the terms sum to ``log_prob`` (the forward graph's, on
    ``rows``). Returns the order, or None (no decomposition, or it did not check out: warned)."""
    from flowserve.graphs import onnx_session
    from flowserve.models.export import export_onnx

    order = chain_rule_order(flow)
    if order is None:
        return None
    path = Path(out_dir) / CHAIN_RULE_GRAPH
    graph = ChainRuleGraph(flow).eval()
    example = torch.from_numpy(np.ascontiguousarray(rows[: min(8, len(rows))], np.float32))
    try:
        with torch.no_grad():
            export_onnx(graph, example, path, "x", ["terms"])
        terms = onnx_session(path).run(["terms"], {"x": rows.astype(np.float32)})[0]
    except Exception as e:  # an optional extra: the forward and inverse graphs are the contract
        path.unlink(missing_ok=True)
        log.warning("no chain-rule graph: %s: %s", type(e).__name__, e)
        return None
    total = terms.astype(np.float64).sum(axis=1)
    diff = np.abs(total - np.asarray(log_prob, np.float64))
    if not np.all(diff <= atol + 1e-5 * np.abs(log_prob)):
        path.unlink(missing_ok=True)
        log.warning("no chain-rule graph: its terms miss log_prob by %.3g nats", np.max(diff))
        return None
    return order

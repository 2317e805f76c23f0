"""What the clients return: plain numpy arrays in small typed containers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ._protocol import SCORE_COLUMNS

if TYPE_CHECKING:  # pandas is optional
    import pandas as pd

__all__ = ["Encoding", "Explanation", "ScoreResult"]


class Encoding(NamedTuple):
    """Latent codes and ``log|det dz/dx|`` per row (unpacks as ``z, log_det = ...``)."""

    z: np.ndarray
    log_det: np.ndarray


@dataclass(frozen=True)
class Explanation:
    """Per-feature contributions to each row's anomaly score (``/explain``).

    ``contributions[i, j]`` is feature ``j``'s Shapley value for row ``i``'s hybrid-row score
    against ``baseline``; each row sums to ``score[i] - baseline_score``. ``kind`` is
    ``"shapley_exact"`` (all ``2**dim`` hybrids) or ``"shapley_sampled"`` (``permutations``
    random orders and their reverses).
    """

    kind: str
    contributions: np.ndarray
    score: np.ndarray
    baseline: np.ndarray
    baseline_score: float
    feature_names: list[str]
    permutations: int | None
    model: str
    version: int

    def __len__(self) -> int:
        return int(self.contributions.shape[0])

    def to_frame(self, index: Any = None) -> pd.DataFrame:
        """Contributions as a DataFrame, one column per feature (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.contributions, columns=self.feature_names, index=index)


@dataclass(frozen=True)
class ScoreResult:
    """Anomaly scores of a batch, one entry per input row, in input order.

    ``score = -log_prob``; ``percentile`` in [0, 100] is the share of held-out rows more likely
    than the row (100: less likely than all of them); ``p_value`` is the conformal p-value
    ``(1 + #{calibration scores >= score}) / (n + 1)`` (None from servers that predate it);
    ``is_anomaly`` is ``p_value <= fpr``: for rows exchangeable with the calibration rows,
    ``P(is_anomaly) <= fpr`` (split calibration, where it is ``log_prob < threshold``; a
    cross-fitted model's p-values are cross-conformal, about ``fpr`` in practice and
    ``threshold`` only indicative: the server's docs/api.md, Anomaly decisions). With ``fdr``,
    ``fdr_selected`` holds the rows Benjamini-Hochberg selects at that false-discovery rate.
    """

    log_prob: np.ndarray
    score: np.ndarray
    percentile: np.ndarray
    is_anomaly: np.ndarray
    threshold: float
    fpr: float
    model: str
    version: int
    p_value: np.ndarray | None = None
    fdr: float | None = None
    fdr_selected: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.log_prob.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """The per-row arrays plus ``threshold``, ``fpr``, ``model`` and ``version`` (and
        ``p_value``, ``fdr``, ``fdr_selected`` when present)."""
        out: dict[str, Any] = {
            **self.columns(),
            "threshold": self.threshold,
            "fpr": self.fpr,
            "model": self.model,
            "version": self.version,
        }
        if self.fdr is not None:
            out["fdr"] = self.fdr
        return out

    def columns(self) -> dict[str, np.ndarray]:
        """The per-row arrays by name, in output order (those the server sent)."""
        cols = {c.name: getattr(self, c.name) for c in SCORE_COLUMNS if c.http}
        return {name: value for name, value in cols.items() if value is not None}

    def to_frame(self, index: Any = None) -> pd.DataFrame:
        """The per-row columns as a DataFrame (needs pandas); pass ``index=df.index`` to align."""
        import pandas as pd

        return pd.DataFrame(self.columns(), index=index)

"""What the clients return: plain numpy arrays in small typed containers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:  # pandas is optional
    import pandas as pd

__all__ = ["Encoding", "ScoreResult"]


class Encoding(NamedTuple):
    """Latent codes and ``log|det dz/dx|`` per row (unpacks as ``z, log_det = ...``)."""

    z: np.ndarray
    log_det: np.ndarray


@dataclass(frozen=True)
class ScoreResult:
    """Anomaly scores of a batch, one entry per input row, in input order.

    ``score = -log_prob``; ``percentile`` in [0, 100] is the share of held-out rows more likely
    than the row (100: less likely than all of them); ``is_anomaly`` is ``log_prob < threshold``,
    the held-out log-likelihood quantile at false-positive rate ``fpr``.
    """

    log_prob: np.ndarray
    score: np.ndarray
    percentile: np.ndarray
    is_anomaly: np.ndarray
    threshold: float
    fpr: float
    model: str
    version: int

    def __len__(self) -> int:
        return int(self.log_prob.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """The per-row arrays plus ``threshold``, ``fpr``, ``model`` and ``version``."""
        return {
            "log_prob": self.log_prob,
            "score": self.score,
            "percentile": self.percentile,
            "is_anomaly": self.is_anomaly,
            "threshold": self.threshold,
            "fpr": self.fpr,
            "model": self.model,
            "version": self.version,
        }

    def to_frame(self, index: Any = None) -> pd.DataFrame:
        """The per-row columns as a DataFrame (needs pandas); pass ``index=df.index`` to align."""
        import pandas as pd

        return pd.DataFrame(
            {
                "log_prob": self.log_prob,
                "score": self.score,
                "percentile": self.percentile,
                "is_anomaly": self.is_anomaly,
            },
            index=index,
        )

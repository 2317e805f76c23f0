"""Loaded flows for serving: numpy in, numpy out, no torch at import time.

:class:`OnnxFlowModel` runs an artifact's two ONNX graphs with ONNX Runtime (sessions created once,
thread-limited, safe to call from many threads). :class:`TorchScriptFlowModel` offers the same API
from ``model.pt`` and imports torch only when one is built. :func:`load_flow_model` verifies the
artifact (manifest + checksums) and picks the runtime.

Example:
    >>> model = load_flow_model(path)                      # doctest: +SKIP
    >>> model.log_prob(rows)                               # doctest: +SKIP
    >>> z, log_det = model.encode(rows); model.decode(z)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from flowserve.artifact import (
    UNIT_NORM_TOLERANCE,
    ArtifactError,
    BaseSpec,
    Manifest,
    verify_artifact,
)
from flowserve.graphs import SCORE, onnx_session, run_batched
from flowserve.optional import torch_available

__all__ = [
    "FlowModel",
    "OnnxFlowModel",
    "ScoreResult",
    "TorchScriptFlowModel",
    "base_log_prob",
    "load_flow_model",
    "onnx_session",
    "torch_available",
]

# Rows per graph call: bounds the runtime's intermediate buffers on bulk requests.
CHUNK_ROWS = 65_536
# Rows of the larger call timed at warm-up, to estimate small calls (see FlowModel.call_cost_s).
_PROBE_ROWS = 8
_LOG_2PI = math.log(2.0 * math.pi)


def base_log_prob(base: BaseSpec, z: np.ndarray) -> np.ndarray:
    """Log-density of the base distribution at each latent row, float64 ``[N]``."""
    z = np.asarray(z, dtype=np.float64)
    dim = z.shape[1]
    if base.kind == "normal":
        return -0.5 * np.einsum("ij,ij->i", z, z) - 0.5 * dim * _LOG_2PI
    if base.kind == "sphere":  # uniform on S^2 w.r.t. area; latents are unit vectors
        on = np.abs(np.einsum("ij,ij->i", z, z) - 1.0) <= 2 * UNIT_NORM_TOLERANCE
        return np.where(on, -math.log(4 * math.pi), -np.inf)
    assert base.low is not None and base.high is not None
    inside = np.all((z >= base.low) & (z < base.high), axis=1)
    return np.where(inside, -dim * math.log(base.high - base.low), -np.inf)


@dataclass(frozen=True)
class ScoreResult:
    """Anomaly scores of a batch: ``score = -log_prob``; ``percentile`` in [0, 100];
    ``p_value`` the conformal p-value (``is_anomaly`` is ``p_value <= fpr``)."""

    log_prob: np.ndarray
    percentile: np.ndarray
    is_anomaly: np.ndarray
    threshold: float
    fpr: float
    p_value: np.ndarray

    @property
    def score(self) -> np.ndarray:
        return -self.log_prob


class FlowModel:
    """One loaded model version. Subclasses provide the two graph directions on float32 rows."""

    runtime: str = "abstract"

    def __init__(self, directory: Path, manifest: Manifest) -> None:
        self.directory = Path(directory)
        self.manifest = manifest
        self.dim = manifest.dim
        # direction -> (seconds per call, seconds per row) of small calls, measured by warm_up.
        self._call_cost: dict[str, tuple[float, float]] = {}
        self._score = self._score_session()

    def _score_session(self) -> Any:
        """The ``score`` graph's session (cross-fitted calibration), or None without one."""
        rel = self.manifest.graphs.get("score")
        if rel is None:
            return None
        path = self.directory / rel
        session = _open_graph(path)
        inputs = [i.name for i in session.get_inputs()]
        outputs = {o.name for o in session.get_outputs()}
        if inputs != [SCORE.input] or not set(SCORE.outputs) <= outputs:
            raise ArtifactError(
                f"{path}: the score graph must map input 'x' to outputs 'log_prob' and "
                f"'fold_log_prob' (has inputs {inputs}, outputs {sorted(outputs)})"
            )
        return session

    @property
    def has_score_graph(self) -> bool:
        """Whether p-values need the ``score`` graph (a cross-fitted calibration)."""
        return self._score is not None

    # -- the two directions, on validated float32 [N, dim] ------------------------------------
    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def _inverse(self, z: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _rows(self, a: np.ndarray, what: str) -> np.ndarray:
        a = np.asarray(a)
        if a.ndim != 2 or a.shape[1] != self.dim:
            raise ValueError(f"{what} must have shape [N, {self.dim}], got {list(a.shape)}")
        return np.ascontiguousarray(a, dtype=np.float32)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(z [N, dim] float32, log_prob [N] float32)`` for raw rows ``x``."""
        x = self._rows(x, "x")
        if len(x) <= CHUNK_ROWS:
            return self._forward(x)
        parts = [self._forward(x[i : i + CHUNK_ROWS]) for i in range(0, len(x), CHUNK_ROWS)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    # -- public API ---------------------------------------------------------------------------
    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """Log-density of each raw row, nats, float32 ``[N]`` (z is neither fetched nor
        joined: bulk scoring copies less)."""
        x = self._rows(x, "x")
        if len(x) <= CHUNK_ROWS:
            return self._log_prob(x)
        return np.concatenate(
            [self._log_prob(x[i : i + CHUNK_ROWS]) for i in range(0, len(x), CHUNK_ROWS)]
        )

    def _log_prob(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x)[1]

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(z, log_det)`` with ``log_det = log|det dz/dx|`` = log_prob - base_log_prob(z)."""
        z, lp = self.forward(x)
        log_det = lp.astype(np.float64) - base_log_prob(self.manifest.base, z)
        return z, log_det.astype(np.float32)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Raw rows ``x [N, dim]`` float32 for latent rows ``z``."""
        z = self._rows(z, "z")
        if len(z) <= CHUNK_ROWS:
            return self._inverse(z)
        return np.concatenate(
            [self._inverse(z[i : i + CHUNK_ROWS]) for i in range(0, len(z), CHUNK_ROWS)]
        )

    def sample_latent(
        self, n: int, temperature: float = 1.0, seed: int | None = None
    ) -> np.ndarray:
        """``n`` latent rows: base noise scaled by ``temperature`` (same seed, same rows)."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        rng = np.random.default_rng(seed)
        return self.manifest.base.sample(n, self.dim, temperature, rng)

    def sample(self, n: int, temperature: float = 1.0, seed: int | None = None) -> np.ndarray:
        """``n`` rows: :meth:`sample_latent` through the inverse graph (integer pixels for
        image models: each row is the image whose cell holds the decoded point)."""
        x = self.decode(self.sample_latent(n, temperature, seed))
        return self.manifest.preprocessing.as_data(x)

    def score_log_probs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(log_prob [N], fold_log_prob [N, folds] or None)``: what scoring needs, from the
        ``score`` graph when the calibration is cross-fitted (one call), else ``log_prob``."""
        if self._score is None:
            return self.log_prob(x), None
        session = self._score
        x = self._rows(x, "x")
        if len(x) <= CHUNK_ROWS:  # one call, empty batches included
            log_prob, folds = session.run(list(SCORE.outputs), {SCORE.input: x})
            return log_prob, folds
        log_prob, folds = run_batched(
            lambda b: session.run(list(SCORE.outputs), {SCORE.input: b}), x, CHUNK_ROWS
        )
        return log_prob, folds

    def score_log_prob(
        self,
        log_prob: np.ndarray,
        fpr: float | None = None,
        fold_log_prob: np.ndarray | None = None,
    ) -> ScoreResult:
        """Anomaly scores from already computed log-likelihoods (see :meth:`score`);
        ``fold_log_prob`` is the score graph's, which a cross-fitted calibration needs.

        Raises ``ValueError`` when ``fpr`` is outside (0, 1) or below the calibration's
        attainable minimum ``1/(n+1)``.
        """
        cal = self.manifest.calibration
        fpr = cal.default_fpr if fpr is None else float(fpr)
        if not 0.0 < fpr < 1.0:
            raise ValueError(f"fpr must be in (0, 1), got {fpr}")
        lp = np.asarray(log_prob)
        # NaN log-likelihoods (should not happen for finite input) count as anomalies.
        is_anomaly = cal.flags(lp, fpr, fold_log_prob)
        p_value = cal.p_values(lp, fold_log_prob)
        return ScoreResult(lp, cal.percentile(lp), is_anomaly, cal.threshold_for(fpr), fpr, p_value)

    def score(self, x: np.ndarray, fpr: float | None = None) -> ScoreResult:
        """Anomaly scores against the manifest calibration at false-positive rate ``fpr``
        (default: the calibration's ``default_fpr``)."""
        log_prob, folds = self.score_log_probs(x)
        return self.score_log_prob(log_prob, fpr, folds)

    def call_cost_s(
        self, rows: int, direction: Literal["forward", "inverse", "score"] = "forward"
    ) -> float:
        """Estimated seconds of a ``direction`` call on ``rows`` rows (small calls; inf before
        :meth:`warm_up` has measured it)."""
        cost = self._call_cost.get(direction)
        if cost is None:
            return math.inf
        fixed, per_row = cost
        return fixed + per_row * rows

    def _best_time(
        self, call: Any, rows: np.ndarray, repeats: int = 5, budget_s: float = 0.05
    ) -> float:
        # The fastest of a few calls: the model's own cost, not a scheduling hiccup. Large
        # models stop early; their calls are far above any inline budget anyway.
        best, spent = math.inf, 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            call(rows)
            took = time.perf_counter() - start
            best, spent = min(best, took), spent + took
            if spent > budget_s:
                break
        return best

    def warm_up(self) -> None:
        """Run both graphs once so the first request pays no lazy initialisation, then time
        small calls each way (the server runs tiny requests inline only when they are cheap)."""
        rows = np.zeros((2, self.dim), dtype=np.float32)
        z, lp = self.forward(rows)
        self.decode(z)
        if lp.shape != (2,) or z.shape != (2, self.dim):
            raise ArtifactError(
                f"{self.directory}: forward graph returned z {list(z.shape)} and log_prob "
                f"{list(lp.shape)}, expected [2, {self.dim}] and [2]"
            )
        folds = self.manifest.calibration.folds
        calls: list[tuple[str, Any]] = [("forward", self.forward), ("inverse", self.decode)]
        if self._score is not None:
            got = self.score_log_probs(rows)[1]
            if folds is None or got is None or got.shape != (2, folds):
                raise ArtifactError(
                    f"{self.directory}: score graph returned fold_log_prob "
                    f"{None if got is None else list(got.shape)}, expected [2, {folds}]"
                )
            calls.append(("score", self.score_log_probs))
        probe_rows = np.zeros((_PROBE_ROWS, self.dim), dtype=np.float32)
        for direction, call in calls:
            one = self._best_time(call, rows[:1])
            probe = self._best_time(call, probe_rows)
            per_row = max(probe - one, 0.0) / (_PROBE_ROWS - 1)
            self._call_cost[direction] = (one - per_row, per_row)


class OnnxFlowModel(FlowModel):
    """An artifact served by ONNX Runtime (``forward.onnx``: x -> z, log_prob;
    ``inverse.onnx``: z -> x)."""

    runtime = "onnxruntime"

    def __init__(
        self,
        directory: Path,
        manifest: Manifest | None = None,
        *,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
    ) -> None:
        directory = Path(directory)
        manifest = verify_artifact(directory) if manifest is None else manifest
        super().__init__(directory, manifest)
        sessions = {}
        for role in ("forward", "inverse"):
            path = directory / manifest.graphs[role]
            sessions[role] = _open_graph(path, intra_op_threads, inter_op_threads)
        self._fwd, self._inv = sessions["forward"], sessions["inverse"]
        self._check_io()

    def _check_io(self) -> None:
        fwd_in = [i.name for i in self._fwd.get_inputs()]
        fwd_out = {o.name for o in self._fwd.get_outputs()}
        inv_in = [i.name for i in self._inv.get_inputs()]
        inv_out = {o.name for o in self._inv.get_outputs()}
        if fwd_in != ["x"] or not {"z", "log_prob"} <= fwd_out:
            raise ArtifactError(
                f"{self.directory}: forward graph must map input 'x' to outputs 'z' and "
                f"'log_prob' (has inputs {fwd_in}, outputs {sorted(fwd_out)})"
            )
        if inv_in != ["z"] or "x" not in inv_out:
            raise ArtifactError(
                f"{self.directory}: inverse graph must map input 'z' to output 'x' "
                f"(has inputs {inv_in}, outputs {sorted(inv_out)})"
            )

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z, lp = self._fwd.run(["z", "log_prob"], {"x": x})
        return z, lp

    def _log_prob(self, x: np.ndarray) -> np.ndarray:
        return self._fwd.run(["log_prob"], {"x": x})[0]

    def _inverse(self, z: np.ndarray) -> np.ndarray:
        return self._inv.run(["x"], {"z": z})[0]


class TorchScriptFlowModel(FlowModel):
    """An artifact served from its TorchScript file (``forward(x) -> (z, log_prob)``,
    ``inverse(z) -> x``). Needs torch; it is imported here, never at module import."""

    runtime = "torchscript"

    def __init__(
        self, directory: Path, manifest: Manifest | None = None, *, threads: int = 1
    ) -> None:
        directory = Path(directory)
        manifest = verify_artifact(directory) if manifest is None else manifest
        super().__init__(directory, manifest)
        file = manifest.torchscript or _torchscript_graph(manifest)
        if file is None:
            raise ArtifactError(f"{directory}: the manifest names no TorchScript file")
        torch = _import_torch(directory)
        if threads > 0:
            torch.set_num_threads(threads)
        try:
            self._module = torch.jit.load(str(directory / file), map_location="cpu").eval()
        except Exception as e:  # torch raises RuntimeError and friends
            raise ArtifactError(f"{directory / file}: torch cannot load it: {e}") from e
        self._torch = torch

    def _tensor(self, a: np.ndarray) -> Any:
        # Bodies decoded from .npy are read-only views of the request bytes; torch tensors must
        # own writable memory (it warns, and writing would be undefined), so copy those only.
        return self._torch.from_numpy(a if a.flags.writeable else a.copy())

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._torch.inference_mode():
            z, lp = self._module(self._tensor(x))
        return z.numpy(), lp.numpy()

    def _inverse(self, z: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self._module.inverse(self._tensor(z)).numpy()


def _open_graph(path: Path, intra_op_threads: int = 1, inter_op_threads: int = 1) -> Any:
    """An ONNX Runtime session for an artifact's graph; :class:`ArtifactError` if it fails."""
    try:
        return onnx_session(path, intra_op_threads, inter_op_threads)
    except Exception as e:  # onnxruntime raises its own exception types
        raise ArtifactError(f"{path}: ONNX Runtime cannot load the graph: {e}") from e


def _import_torch(directory: Path) -> Any:
    if not torch_available():
        raise ArtifactError(
            f"{directory}: this artifact is served from TorchScript, which needs torch, and torch "
            "is not installed here; install it (pip install torch==2.13.0, or the 'train' extra) "
            "or export the model with ONNX graphs"
        )
    import torch

    return torch


def _torchscript_graph(manifest: Manifest) -> str | None:
    """A TorchScript file named as a graph (a TorchScript-only artifact), if any."""
    for rel in manifest.graphs.values():
        if not rel.endswith(".onnx"):
            return rel
    return None


def load_flow_model(
    directory: Path,
    *,
    prefer: Literal["onnx", "torchscript"] = "onnx",
    intra_op_threads: int = 1,
    inter_op_threads: int = 1,
) -> FlowModel:
    """Verify an artifact (manifest, checksums) and load it with the right runtime.

    ONNX Runtime serves artifacts whose graphs are ONNX; TorchScript serves artifacts whose
    graphs are TorchScript only, or any artifact with ``model.pt`` when ``prefer="torchscript"``.
    Raises :class:`ArtifactError` naming the problem.
    """
    directory = Path(directory)
    manifest = verify_artifact(directory)
    ts_only = _torchscript_graph(manifest) is not None
    if ts_only or (prefer == "torchscript" and manifest.torchscript):
        model: FlowModel = TorchScriptFlowModel(directory, manifest, threads=intra_op_threads)
    else:
        model = OnnxFlowModel(
            directory,
            manifest,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
        )
    model.warm_up()
    return model

"""Export a trained :class:`Flow` to a self-describing, self-verifying artifact directory.

:func:`export_artifact` writes ``forward.onnx`` (``x -> z, log_prob``), ``inverse.onnx``
(``z -> x``) and optionally ``model.pt`` (TorchScript with ``forward`` and ``inverse``), checks
ONNX Runtime against torch on held-out rows (log-likelihood parity, round trip through both
graphs), calibrates anomaly scoring on the held-out log-likelihoods, hashes every file in the
directory and writes ``manifest.json`` last. Any failed check raises :class:`ExportError` naming
the measured error and its tolerance, and no manifest is left behind.

Graphs take flat raw rows ``[batch, dim]`` float32 with a dynamic batch axis; the flow's
preprocessing and any reshaping happen inside the graph: rows are reshaped to the flow's data shape
(what ``flow.decode`` returns per row, e.g. ``(C, H, W)`` for image flows) and latents to
``flow.event_shape`` (the base's shape).

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from flowserve.models.base import Chain, Flow, StandardNormal, Standardize
    >>> flow = Flow(Chain([]), StandardNormal([2]))
    >>> rows = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "demo" / "1"
    >>> m = export_artifact(flow, out, name="demo", version=1, feature_names=["a", "b"],
    ...                     holdout=rows, torchscript=False)
    >>> m.parity.max_abs_log_prob_diff < m.parity.log_prob_tolerance
    True
"""

from __future__ import annotations

import copy
import io
import logging
import math
import warnings
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout, suppress
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flowserve.artifact import (
    CHAIN_RULE_GRAPH,
    MANIFEST_FILE,
    TORCHSCRIPT_FILE,
    ArtifactError,
    BaseSpec,
    Calibration,
    DataKind,
    Manifest,
    Metrics,
    Parity,
    Preprocessing,
    roundtrip_error,
    sha256_file,
    verify_artifact,
    write_manifest,
)
from flowserve.graphs import FORWARD, INVERSE, SCORE, GraphIO, onnx_session, run_batched
from flowserve.models import export_gate as gate
from flowserve.models.base import Flow, Standardize
from flowserve.models.chain_rule import export_chain_rule
from flowserve.models.optimize import optimize_graph
from flowserve.models.power import POWER_FIELDS
from flowserve.models.preprocess import power_transform_of
from flowserve.models.score_graph import export_score_graph
from flowserve.parity import (
    LOG_PROB_ATOL,
    LOG_PROB_RTOL,
    ROUNDTRIP_TOL,
    LogProbParity,
    feature_scale,
    log_prob_parity,
)

__all__ = [
    "LOG_PROB_ATOL",
    "LOG_PROB_RTOL",
    "OPSET",
    "PARITY_ROWS",
    "ROUNDTRIP_TOL",
    "ExportError",
    "ForwardGraph",
    "InverseGraph",
    "TwoWayModule",
    "data_shape",
    "export_artifact",
    "export_onnx",
]

log = logging.getLogger(__name__)

OPSET = 18
# The parity tolerances (LOG_PROB_ATOL, LOG_PROB_RTOL, ROUNDTRIP_TOL) and their formula are
# flowserve.parity's, shared with `flowserve verify`; they stay importable from here.
# Rows of the holdout used for the parity and round-trip checks (calibration uses every row).
PARITY_ROWS = 1024
_BATCH = 4096
# Parity runs ONNX in chunks of an odd size, unlike the traced example batch (8), so a batch
# axis frozen at trace time cannot pass unnoticed.
_PARITY_BATCH = 37
# The graphs every artifact has (a chain-rule or score graph joins them).
_GRAPHS = {"forward": FORWARD.file, "inverse": INVERSE.file}


class ExportError(Exception):
    """Export failed (graph export, parity or round trip); the message names the measured error."""


def data_shape(flow: Flow) -> tuple[int, ...]:
    """Shape of one data row: what ``flow.decode`` returns per row (the base's ``event_shape``
    for most flows; ``(C, H, W)`` for image flows whose latents are flat)."""
    with torch.no_grad():
        z = torch.zeros((1, *flow.event_shape), dtype=torch.float32)
        return tuple(int(s) for s in flow.decode(z).shape[1:])


class ForwardGraph(nn.Module):
    """Flat raw rows ``x [batch, dim]`` -> ``(z [batch, dim], log_prob [batch])``."""

    def __init__(self, flow: Flow, row_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.flow = flow
        self.row_shape = row_shape

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, log_prob = self.flow(x.reshape((x.shape[0], *self.row_shape)))
        return z.reshape(x.shape[0], -1), log_prob


class InverseGraph(nn.Module):
    """Flat latents ``z [batch, dim]`` -> flat raw rows ``x [batch, dim]``."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow
        self.event_shape = tuple(int(s) for s in flow.event_shape)

    def forward(self, z: Tensor) -> Tensor:
        x = self.flow.decode(z.reshape((z.shape[0], *self.event_shape)))
        return x.reshape(z.shape[0], -1)


class TwoWayModule(nn.Module):
    """Both directions in one module, for TorchScript: ``forward(x)`` and ``inverse(z)``."""

    def __init__(self, flow: Flow, row_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.fwd = ForwardGraph(flow, row_shape)
        self.inv = InverseGraph(flow)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.fwd(x)

    def inverse(self, z: Tensor) -> Tensor:
        return self.inv(z)


def _export_legacy(
    module: nn.Module, example: Tensor, path: Path, inp: str, outs: list[str]
) -> None:
    axes = {name: {0: "batch"} for name in [inp, *outs]}
    torch.onnx.export(
        module,
        (example,),
        str(path),
        dynamo=False,
        input_names=[inp],
        output_names=outs,
        dynamic_axes=axes,
        opset_version=OPSET,
        do_constant_folding=True,
    )


def _export_dynamo(
    module: nn.Module, example: Tensor, path: Path, inp: str, outs: list[str]
) -> None:
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        input_names=[inp],
        output_names=outs,
        dynamic_shapes=({0: batch},),
        opset_version=OPSET,
        external_data=False,
        optimize=True,
    )
    assert program is not None
    program.save(str(path), external_data=False)


def _check_batch_axis(path: Path, graph: GraphIO, example: Tensor) -> None:
    """The graph must run at batch sizes other than the traced one (dynamic batch axis)."""
    sess = onnx_session(path)
    for n in (1, 37):
        rows = example[:1].repeat(n, 1).numpy()
        for out in sess.run(None, {graph.input: rows}):
            if out.shape[0] != n:
                raise ExportError(
                    f"{path.name}: the batch axis is not dynamic (output {list(out.shape)} "
                    f"for a batch of {n})"
                )


def export_onnx(module: nn.Module, example: Tensor, path: Path, inp: str, outs: list[str]) -> str:
    """Export ``module`` to ``path`` with a dynamic batch axis; returns the exporter used.

    The TorchScript-based exporter is tried first (it records what a trace of the eager code
    computes, which suits fixed-iteration numerical inverses and sequential autoregressive
    inverses); the dynamo exporter is the fallback.
    """
    graph = GraphIO(path.name, inp, tuple(outs))
    errors: list[str] = []
    for name, fn in (("torchscript", _export_legacy), ("dynamo", _export_dynamo)):
        try:
            with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                with redirect_stderr(io.StringIO()):
                    fn(module, example, path, inp, outs)
            _check_batch_axis(path, graph, example)
            return name
        except Exception as e:
            errors.append(f"{name} exporter: {type(e).__name__}: {_first_line(e)}")
            path.unlink(missing_ok=True)
    raise ExportError(f"cannot export {path.name}: " + "; ".join(errors))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


def _onnx_forward(sess: Any, rows: np.ndarray, batch: int = _PARITY_BATCH) -> list[np.ndarray]:
    """``[z, log_prob]`` of ``rows`` from the forward graph's session."""
    return run_batched(lambda b: sess.run(list(FORWARD.outputs), {FORWARD.input: b}), rows, batch)


def _onnx_log_prob(sess: Any, rows: np.ndarray, batch: int = _PARITY_BATCH) -> np.ndarray:
    (lp,) = run_batched(lambda b: sess.run(["log_prob"], {FORWARD.input: b}), rows, batch)
    return lp


def _onnx_inverse(sess: Any, z: np.ndarray, batch: int = _PARITY_BATCH) -> np.ndarray:
    (x,) = run_batched(lambda b: sess.run(list(INVERSE.outputs), {INVERSE.input: b}), z, batch)
    return x


def _base_spec(flow: Flow) -> BaseSpec:
    kind = getattr(flow.base, "kind", "normal")
    if kind == "uniform":
        return BaseSpec(kind="uniform", low=float(flow.base.low), high=float(flow.base.high))
    if kind == "sphere":
        return BaseSpec(kind="sphere")
    if kind != "normal":
        raise ExportError(f"base distribution kind {kind!r} has no BaseSpec")
    return BaseSpec(kind="normal")


def _applied_preprocessing(flow: Flow) -> Preprocessing:
    """The standardization (and power transform) the graphs apply: the flow's
    :class:`Standardize`, if any."""
    if not isinstance(flow.preprocess, Standardize):
        return Preprocessing()
    return Preprocessing(
        standardize_mean=flow.preprocess.mean.detach().cpu().double().reshape(-1).tolist(),
        standardize_scale=flow.preprocess.scale.detach().cpu().double().reshape(-1).tolist(),
        power_transform=power_transform_of(flow.preprocess.power_spec()),
    )


def _checked_fields(pre: Preprocessing) -> dict[str, list[float] | None]:
    """The numbers of ``pre`` that the graphs apply, by field name."""
    power = pre.power_transform
    fields = {f: getattr(pre, f) for f in ("standardize_mean", "standardize_scale")}
    for name in POWER_FIELDS:
        fields[f"power_transform.{name}"] = None if power is None else getattr(power, name)
    return fields


def _preprocessing(applied: Preprocessing, given: Preprocessing | None) -> Preprocessing:
    """The manifest's preprocessing: ``given``, checked against what the graphs really apply."""
    if given is None:
        return applied
    actuals = _checked_fields(applied)
    for field, claimed in _checked_fields(given).items():
        actual = actuals[field]
        # The graphs take raw rows: a standardization the flow does not apply would be a lie.
        if (claimed is None) != (actual is None) or (
            claimed is not None and not np.allclose(claimed, actual, rtol=1e-5, atol=1e-6)
        ):
            raise ValueError(
                f"preprocessing.{field} does not match the flow's Standardize preprocess "
                f"({'absent' if actual is None else 'different values'}); set it with "
                "flow.set_preprocess(Standardize(mean, scale, power))"
            )
    return given


def _library_versions() -> dict[str, str]:
    versions = {}
    for dist in ("torch", "onnx", "onnxruntime", "onnxscript", "numpy", "flowserve"):
        with suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions


def _holdout(holdout: np.ndarray, dim: int) -> np.ndarray:
    rows = np.asarray(holdout)
    if rows.ndim != 2 or rows.shape[1] != dim:
        raise ValueError(f"holdout must have shape [n, {dim}], got {list(rows.shape)}")
    rows = rows.astype(np.float32)
    rows = rows[np.isfinite(rows).all(axis=1)]
    if rows.shape[0] < 2:
        raise ValueError("holdout needs at least 2 finite rows (parity and calibration)")
    return rows


@dataclass(frozen=True)
class _Job:
    """What the export steps share: the flow's copy, its graph modules and the rows to check."""

    out_dir: Path
    model: Flow
    row_shape: tuple[int, ...]
    base: BaseSpec
    preprocessing: Preprocessing  # for the manifest (checked against the flow's)
    scale: np.ndarray  # per-feature scale of round-trip errors
    kind: DataKind
    rows: np.ndarray  # every finite holdout row (calibration)
    check: np.ndarray  # the first PARITY_ROWS of them (parity and round trip)
    fwd: ForwardGraph
    inv: InverseGraph

    @property
    def dim(self) -> int:
        return math.prod(self.row_shape)

    @property
    def family(self) -> str:
        return str(self.model.family)


def _prepare(
    flow: Flow,
    out_dir: Path,
    feature_names: list[str],
    holdout: np.ndarray,
    preprocessing: Preprocessing | None,
) -> _Job:
    """Copy the flow (float32, CPU, eval), check the arguments against it, pick the rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # A stale manifest would make a half-written directory look valid.
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    model = copy.deepcopy(flow).to(device="cpu", dtype=torch.float32).eval()
    row_shape = data_shape(model)
    dim = math.prod(row_shape)
    if dim != math.prod(model.event_shape):
        raise ExportError(
            f"data rows of shape {list(row_shape)} and latents of shape "
            f"{list(model.event_shape)} differ in size: the graphs need flat z of width {dim}"
        )
    if len(feature_names) != dim:
        raise ValueError(f"{len(feature_names)} feature_names for a flow of dim {dim}")
    rows = _holdout(holdout, dim)
    applied = _applied_preprocessing(model)
    return _Job(
        out_dir=out_dir,
        model=model,
        row_shape=row_shape,
        base=_base_spec(model),
        preprocessing=_preprocessing(applied, preprocessing),
        scale=feature_scale(applied.standardize_scale, dim),
        kind=preprocessing.data_kind if preprocessing is not None else "real",
        rows=rows,
        check=rows[:PARITY_ROWS],
        fwd=ForwardGraph(model, row_shape).eval(),
        inv=InverseGraph(model).eval(),
    )


@torch.no_grad()
def _export_graphs(job: _Job, x_example: Tensor, z_example: Tensor) -> dict[str, str]:
    """Write both ONNX graphs; returns the exporter used for each."""
    exporters = {
        "forward": export_onnx(
            job.fwd, x_example, job.out_dir / FORWARD.file, FORWARD.input, list(FORWARD.outputs)
        ),
        "inverse": export_onnx(
            job.inv, z_example, job.out_dir / INVERSE.file, INVERSE.input, list(INVERSE.outputs)
        ),
    }
    log.info("exported ONNX graphs (%s)", exporters)
    return exporters


def _optimise_graphs(job: _Job, z_example: Tensor) -> dict[str, dict[str, int]]:
    """Fold and prune both graphs in place; returns their node counts."""
    graph_nodes = {
        "forward": optimize_graph(job.out_dir / FORWARD.file, job.check[:_PARITY_BATCH]),
        "inverse": optimize_graph(job.out_dir / INVERSE.file, z_example.numpy()),
    }
    log.info("optimised ONNX graphs: %s", graph_nodes)
    return graph_nodes


@torch.no_grad()
def _torch_reference(job: _Job) -> tuple[Tensor, np.ndarray]:
    """torch eager (float32) on the parity rows: ``z`` and ``log_prob`` (float64), finite."""
    z_ref, lp_ref_t = job.fwd(torch.from_numpy(job.check))
    lp_ref = lp_ref_t.numpy().astype(np.float64)
    bad = int(np.sum(~np.isfinite(lp_ref)))
    if bad:
        raise ExportError(
            f"torch log_prob itself is not finite on {bad} of {len(lp_ref)} holdout rows: "
            "the flow is broken (NaN/inf) before any export"
        )
    return z_ref, lp_ref


def _onnx_parity(
    got: np.ndarray, ref: np.ndarray, what: str, atol: float, rtol: float
) -> LogProbParity:
    """ONNX Runtime's log_prob ``got`` against torch's ``ref`` on one set of rows; raises
    :class:`ExportError` past the tolerance (a non-finite value must be the same on both)."""
    parity = log_prob_parity(got, ref, atol, rtol)
    if not parity.passed:
        w = parity.worst
        raise ExportError(
            f"ONNX Runtime log_prob disagrees with torch on {what} rows: max |diff| "
            f"{parity.max_abs_diff:.3g} nats (row {w}: onnx {got[w]:.6g}, torch {ref[w]:.6g}) "
            f"exceeds the tolerance {parity.rule}"
        )
    return parity


@torch.no_grad()
def _gate_parity(job: _Job, fsess: Any, rows: np.ndarray, what: str, atol: float) -> float:
    """Max |log_prob| difference, ONNX Runtime vs torch, on one gate set (:func:`_onnx_parity`);
    out-of-distribution rows get the gate's relative tolerance."""
    rtol = gate.OOD_RTOL if what == "ood" else LOG_PROB_RTOL
    ref = job.fwd(torch.from_numpy(rows))[1].numpy()
    return _onnx_parity(_onnx_log_prob(fsess, rows), ref, what, atol, rtol).max_abs_diff


def _solver_check(job: _Job, lp_onnx: np.ndarray) -> float | None:
    """ODE flows: the served solver's log_prob error against a finer solve, bounded."""
    rows = gate.GATE_ROWS
    solver = gate.solver_error(job.model, job.check[:rows], lp_onnx[:rows])
    if solver is not None and not solver <= gate.SOLVER_TOL:
        raise ExportError(
            f"the ODE solver's error in log_prob is {solver:.3g} nats against a finer solve, "
            f"above {gate.SOLVER_TOL:g}: train or export with more steps (--param steps=...)"
        )
    return solver


def _onnx_roundtrip(job: _Job, isess: Any, z_onnx: np.ndarray) -> float:
    """x -> z -> x through both ONNX graphs, max |x - x'| / scale; bounded."""
    x_back = _onnx_inverse(isess, z_onnx.astype(np.float32))
    rt_max = roundtrip_error(job.check, x_back, job.scale, job.base)
    if not rt_max <= ROUNDTRIP_TOL:
        raise ExportError(
            f"ONNX round trip x -> z -> x is not exact enough: max |x - x'|/scale {rt_max:.3g} "
            f"exceeds the tolerance {ROUNDTRIP_TOL:g}"
        )
    return rt_max


def _check_onnx(job: _Job, fsess: Any, isess: Any, lp_ref: np.ndarray) -> tuple[Parity, np.ndarray]:
    """Every ONNX Runtime check; returns the parity record (without TorchScript) and the
    forward graph's log_prob on the parity rows."""
    z_onnx, lp_onnx = _onnx_forward(fsess, job.check)
    atol = gate.log_prob_atol(job.family, LOG_PROB_ATOL)
    heldout = _onnx_parity(lp_onnx, lp_ref, "heldout", atol, LOG_PROB_RTOL)
    # The gate also checks fresh and out-of-distribution rows (models/export_gate.py).
    by_set, counts = {"heldout": heldout.max_abs_diff}, {"heldout": int(job.check.shape[0])}
    for set_name, extra in gate.gate_rows(job.model, job.check, job.kind).items():
        by_set[set_name] = _gate_parity(job, fsess, extra, set_name, atol)
        counts[set_name] = int(extra.shape[0])
    solver = _solver_check(job, lp_onnx)
    rt_max = _onnx_roundtrip(job, isess, z_onnx)
    parity = Parity(
        rows=int(job.check.shape[0]),
        max_abs_log_prob_diff=heldout.max_abs_diff,
        log_prob_tolerance=heldout.tolerance,
        roundtrip_max_abs_error=rt_max,
        roundtrip_tolerance=ROUNDTRIP_TOL,
        checked_rows=counts,
        max_abs_log_prob_diff_by_set=by_set,
        solver_error=solver,
        solver_tolerance=gate.SOLVER_TOL if solver is not None else None,
    )
    return parity, lp_onnx


def _export_torchscript(module: TwoWayModule, x: Tensor, z: Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(
            module, {"forward": (x,), "inverse": (z,)}, check_trace=False
        )
    traced.save(str(path))


def _torchscript_parity(job: _Job, path: Path, z: Tensor, lp_ref: np.ndarray) -> float:
    """Max |log_prob| difference, TorchScript vs torch; raises :class:`ExportError` on failure.

    Runs two batches (37 rows, then the rest): neither is the traced batch size.
    """
    loaded = torch.jit.load(str(path))
    x = torch.from_numpy(job.check)
    lps, xs = [], []
    # The executor's profiling/fusion passes cost seconds on large unrolled graphs (RK4, Newton)
    # and check nothing about the traced program itself.
    with torch.no_grad(), torch.jit.optimized_execution(False):
        for part in (slice(0, _PARITY_BATCH), slice(_PARITY_BATCH, None)):
            if x[part].shape[0]:
                lps.append(loaded(x[part])[1].numpy())
                xs.append(loaded.inverse(z[part]).numpy())
    parity = log_prob_parity(np.concatenate(lps), lp_ref)
    if not parity.passed:
        raise ExportError(
            f"TorchScript log_prob disagrees with torch: max |diff| {parity.max_abs_diff:.3g} "
            f"nats exceeds the tolerance {parity.rule}"
        )
    rt = roundtrip_error(job.check, np.concatenate(xs), job.scale, job.base)
    if not rt <= ROUNDTRIP_TOL:
        raise ExportError(
            f"TorchScript round trip x -> z -> x: max |x - x'|/scale {rt:.3g} "
            f"exceeds the tolerance {ROUNDTRIP_TOL:g}"
        )
    return parity.max_abs_diff


def _checked_torchscript(
    job: _Job, x_example: Tensor, z_example: Tensor, z_ref: Tensor, lp_ref: np.ndarray
) -> float | None:
    """Write ``model.pt`` and check it against torch; ``None`` when the flow does not trace
    (TorchScript is optional: the ONNX graphs are the contract)."""
    path = job.out_dir / TORCHSCRIPT_FILE
    try:
        _export_torchscript(
            TwoWayModule(job.model, job.row_shape).eval(), x_example, z_example, path
        )
    except Exception as e:
        path.unlink(missing_ok=True)
        log.warning(
            "no TorchScript for family %s: %s: %s", job.family, type(e).__name__, _first_line(e)
        )
        return None
    return _torchscript_parity(job, path, z_ref, lp_ref)


def _calibrate(
    job: _Job,
    fsess: Any,
    calibration_log_probs: np.ndarray | None,
    default_fpr: float,
    method: str,
) -> Calibration:
    """Calibrate on what the service computes: ONNX Runtime log-likelihoods of every holdout
    row, unless the caller computed calibration scores on rows the model never trained on."""
    if calibration_log_probs is None:
        cal_lp = _onnx_log_prob(fsess, job.rows, _BATCH)
    else:
        cal_lp = np.asarray(calibration_log_probs, dtype=np.float64).reshape(-1)
    try:
        return Calibration.from_log_probs(cal_lp, default_fpr, method)  # type: ignore[arg-type]
    except ValueError as e:
        raise ExportError(f"cannot calibrate ({method}): {e}") from e


def _cross_fit(
    job: _Job,
    fold_models: Sequence[Flow],
    fold_rows: Sequence[np.ndarray],
    default_fpr: float,
    optimize: bool,
) -> tuple[Calibration, dict[str, int] | None]:
    """Cross-conformal calibration, scored by the ``score`` graph export writes for it (and
    the graph's node counts when it was optimised)."""
    if len(fold_models) != len(fold_rows) or len(fold_models) < 2:
        raise ValueError("fold_models and fold_rows need one entry per fold (>= 2 folds)")
    try:
        return export_score_graph(
            job.model,
            fold_models,
            [_holdout(rows, job.dim) for rows in fold_rows],
            job.out_dir,
            row_shape=job.row_shape,
            holdout=job.rows,
            parity_rows=len(job.check),
            atol=gate.log_prob_atol(job.family, LOG_PROB_ATOL),
            rtol=LOG_PROB_RTOL,
            default_fpr=default_fpr,
            optimize=optimize,
        )
    except ValueError as e:
        raise ExportError(f"cannot calibrate (cross-fit): {e}") from e


def _hash_files(out_dir: Path) -> dict[str, str]:
    """sha256 of every file in ``out_dir`` but the manifest, by relative path."""
    return {
        p.relative_to(out_dir).as_posix(): sha256_file(p)
        for p in sorted(out_dir.rglob("*"))
        if p.is_file() and p.relative_to(out_dir).as_posix() != MANIFEST_FILE
    }


def _input_shape(job: _Job) -> list[int]:
    # Image rows travel flat, but their shape is what /models shows and .npy bodies may use.
    if job.kind == "image":
        return [int(s) for s in job.model.hparams.get("shape", job.row_shape)]
    return list(job.row_shape)


def _write_verified(out_dir: Path, manifest: Manifest) -> Manifest:
    """Write ``manifest.json`` last and re-read it checksum-verified; none is left on failure."""
    write_manifest(out_dir, manifest)
    try:
        return verify_artifact(out_dir)
    except ArtifactError as e:
        (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
        raise ExportError(f"the written artifact does not verify: {e}") from e


def export_artifact(
    flow: Flow,
    out_dir: Path,
    *,
    name: str,
    version: int,
    feature_names: list[str],
    holdout: np.ndarray,
    metrics: Metrics | None = None,
    preprocessing: Preprocessing | None = None,
    training_config: dict | None = None,
    torchscript: bool = True,
    default_fpr: float = 0.01,
    calibration_log_probs: np.ndarray | None = None,
    calibration_method: str = "holdout",
    fold_models: Sequence[Flow] = (),
    fold_rows: Sequence[np.ndarray] = (),
    optimize: bool = True,
) -> Manifest:
    """Export ``flow`` (with its preprocessing, so graphs take raw rows) to ``out_dir``.

    Arguments:
        flow: the trained flow; it is copied (float32, CPU, eval mode), never modified.
        out_dir: ``<root>/<name>/<version>/``; may already hold report files, which are hashed.
        name, version: the model's name and version number.
        feature_names: one name per flat input column.
        holdout: raw held-out rows ``[n, dim]``: parity, round trip and calibration.
        metrics, preprocessing, training_config: recorded in the manifest (preprocessing is
            derived from a :class:`Standardize` preprocess when not given).
        torchscript: also write ``model.pt`` (TorchScript, both directions).
        default_fpr: false-positive rate of the default anomaly threshold.
        calibration_log_probs: log-likelihoods of rows the served model never trained on (a
            calibration split, or out-of-fold scores of cross-fitting); the conformal
            calibration is built from them. Default: the holdout's ONNX log-likelihoods.
        calibration_method: how those were obtained, recorded in the manifest: ``"split"``,
            ``"cross-fit"`` or ``"holdout"``.
        fold_models, fold_rows: cross-fitted calibration: the fold models and the rows each
            left out. Export then writes the ``score`` graph (:mod:`flowserve.models.score_graph`)
            and calibrates cross-conformally on what it computes (``holdout`` is the test split,
            scored by the served model); ``calibration_log_probs`` is not used.
        optimize: fold and prune the exported ONNX graphs (:mod:`flowserve.models.optimize`)
            before the parity checks, which then verify the optimised graphs.

    Returns the written manifest, re-read and checksum-verified from disk.
    Raises :class:`ExportError` when a graph fails to export or a check fails; ``ValueError``
    for bad arguments. No ``manifest.json`` exists in ``out_dir`` after a failure.
    """
    out_dir = Path(out_dir)
    job = _prepare(flow, out_dir, feature_names, holdout, preprocessing)
    x_example = torch.from_numpy(job.check[: min(8, len(job.check))].copy())
    with torch.no_grad():
        z_example = job.fwd(x_example)[0].detach().clone()
    exporters = _export_graphs(job, x_example, z_example)
    graph_nodes = _optimise_graphs(job, z_example) if optimize else {}

    z_ref, lp_ref = _torch_reference(job)
    fsess, isess = onnx_session(out_dir / FORWARD.file), onnx_session(out_dir / INVERSE.file)
    parity, lp_onnx = _check_onnx(job, fsess, isess, lp_ref)
    ts_diff = (
        _checked_torchscript(job, x_example, z_example, z_ref, lp_ref) if torchscript else None
    )
    if fold_models:
        calibration, score_nodes = _cross_fit(job, fold_models, fold_rows, default_fpr, optimize)
        if score_nodes is not None:
            graph_nodes["score"] = score_nodes
    else:
        calibration = _calibrate(job, fsess, calibration_log_probs, default_fpr, calibration_method)
    # Flows that factorize exactly in one order also get per-feature chain-rule terms.
    chain_order = export_chain_rule(job.model, out_dir, job.check, lp_onnx)
    graphs = dict(_GRAPHS)
    if chain_order is not None:
        graphs["chain_rule"] = CHAIN_RULE_GRAPH
    if fold_models:
        graphs["score"] = SCORE.file

    manifest = Manifest(
        name=name,
        version=version,
        family=job.family,
        hyperparameters=dict(job.model.hparams),
        dim=job.dim,
        input_shape=_input_shape(job),
        feature_names=list(feature_names),
        base=job.base,
        preprocessing=job.preprocessing,
        metrics=metrics or Metrics(),
        calibration=calibration,
        parity=parity.model_copy(update={"torchscript_max_abs_log_prob_diff": ts_diff}),
        torchscript=TORCHSCRIPT_FILE if ts_diff is not None else None,
        graphs=graphs,
        chain_rule_order=chain_order,
        opset=OPSET,
        files=_hash_files(out_dir),
        library_versions={**_library_versions(), "onnx_exporter": exporters["forward"]},
        graph_nodes=graph_nodes,
        training_config=dict(training_config or {}),
    )
    return _write_verified(out_dir, manifest)

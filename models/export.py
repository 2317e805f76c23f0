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
from contextlib import redirect_stderr, redirect_stdout, suppress
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flowserve.artifact import (
    FORWARD_GRAPH,
    INVERSE_GRAPH,
    MANIFEST_FILE,
    TORCHSCRIPT_FILE,
    ArtifactError,
    BaseSpec,
    Calibration,
    Manifest,
    Metrics,
    Parity,
    Preprocessing,
    roundtrip_error,
    sha256_file,
    verify_artifact,
    write_manifest,
)
from flowserve.models import export_gate as gate
from flowserve.models.base import Flow, Standardize
from flowserve.models.chain_rule import export_chain_rule, manifest_fields
from flowserve.models.optimize import optimize_graph
from flowserve.service.runtime import onnx_session

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
# log_prob parity, ONNX Runtime vs torch (both float32): |diff| <= ATOL + RTOL * |log_prob|.
# float32 sums of D log-terms carry ~1e-7 * D * |term| rounding, and graph rewrites (fused ops,
# reordered sums) change the rounding, so a few 1e-4 nats is noise; 1e-3 nats is far below any
# difference that matters for scoring (thresholds differ between rows by whole nats).
LOG_PROB_ATOL = 1e-3
LOG_PROB_RTOL = 1e-5
# Round trip x -> z -> x through both ONNX graphs, per feature in units of the feature's scale
# (the Standardize scale; raw units without one): |x - x'| / scale <= ROUNDTRIP_TOL.
ROUNDTRIP_TOL = 1e-3
# Rows of the holdout used for the parity and round-trip checks (calibration uses every row).
PARITY_ROWS = 1024
_BATCH = 4096
# Parity runs ONNX in chunks of an odd size, unlike the traced example batch (8), so a batch
# axis frozen at trace time cannot pass unnoticed.
_PARITY_BATCH = 37


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


def _check_batch_axis(path: Path, inp: str, example: Tensor) -> None:
    """The graph must run at batch sizes other than the traced one (dynamic batch axis)."""
    sess = onnx_session(path)
    for n in (1, 37):
        rows = example[:1].repeat(n, 1).numpy()
        for out in sess.run(None, {inp: rows}):
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
    errors: list[str] = []
    for name, fn in (("torchscript", _export_legacy), ("dynamo", _export_dynamo)):
        try:
            with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                with redirect_stderr(io.StringIO()):
                    fn(module, example, path, inp, outs)
            _check_batch_axis(path, inp, example)
            return name
        except Exception as e:
            errors.append(f"{name} exporter: {type(e).__name__}: {_first_line(e)}")
            path.unlink(missing_ok=True)
    raise ExportError(f"cannot export {path.name}: " + "; ".join(errors))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


def _run_batched(fn: Any, rows: np.ndarray, batch: int = _BATCH) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = []
    for start in range(0, rows.shape[0], batch):
        parts.append(list(fn(rows[start : start + batch])))
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def _gate_parity(
    fwd: nn.Module, fsess: Any, rows: np.ndarray, what: str, atol: float, rtol: float
) -> float:
    """Max |log_prob| difference, ONNX Runtime vs torch, on one gate set; raises
    :class:`ExportError` past the tolerance (a non-finite value must be the same on both)."""
    with torch.no_grad():
        ref = fwd(torch.from_numpy(rows))[1].numpy().astype(np.float64)
    (got,) = _run_batched(lambda b: fsess.run(["log_prob"], {"x": b}), rows, _PARITY_BATCH)
    got = got.astype(np.float64)
    both = np.isfinite(ref) & np.isfinite(got)
    same = ~np.isfinite(ref) & (ref == got)
    diff = np.where(both, np.abs(got - ref), np.where(same, 0.0, np.inf))
    allowed = atol + rtol * np.abs(np.where(both, ref, 0.0))
    if not np.all(diff <= allowed):
        worst = int(np.argmax(diff - allowed))
        raise ExportError(
            f"ONNX Runtime log_prob disagrees with torch on {what} rows (row {worst}: onnx "
            f"{got[worst]:.6g}, torch {ref[worst]:.6g}); the tolerance is {atol:g} + "
            f"{rtol:g}*|log_prob|"
        )
    return float(np.max(diff, initial=0.0))


def _feature_scale(flow: Flow, dim: int) -> np.ndarray:
    if isinstance(flow.preprocess, Standardize):
        scale = flow.preprocess.scale.detach().cpu().double().numpy().reshape(-1)
        if scale.size == dim:
            return np.abs(scale)
        if scale.size == 1:
            return np.full(dim, abs(float(scale[0])))
    return np.ones(dim)


def _base_spec(flow: Flow) -> BaseSpec:
    kind = getattr(flow.base, "kind", "normal")
    if kind == "uniform":
        return BaseSpec(kind="uniform", low=float(flow.base.low), high=float(flow.base.high))
    if kind == "sphere":
        return BaseSpec(kind="sphere")
    if kind != "normal":
        raise ExportError(f"base distribution kind {kind!r} has no BaseSpec")
    return BaseSpec(kind="normal")


def _preprocessing(flow: Flow, given: Preprocessing | None) -> Preprocessing:
    """The manifest's preprocessing: ``given``, checked against what the graphs really apply."""
    applied = Preprocessing()
    if isinstance(flow.preprocess, Standardize):
        applied = Preprocessing(
            standardize_mean=flow.preprocess.mean.detach().cpu().double().reshape(-1).tolist(),
            standardize_scale=flow.preprocess.scale.detach().cpu().double().reshape(-1).tolist(),
        )
    if given is None:
        return applied
    for field in ("standardize_mean", "standardize_scale"):
        claimed, actual = getattr(given, field), getattr(applied, field)
        # The graphs take raw rows: a standardization the flow does not apply would be a lie.
        if (claimed is None) != (actual is None) or (
            claimed is not None and not np.allclose(claimed, actual, rtol=1e-5, atol=1e-6)
        ):
            raise ValueError(
                f"preprocessing.{field} does not match the flow's Standardize preprocess "
                f"({'absent' if actual is None else 'different values'}); set it with "
                "flow.set_preprocess(Standardize(mean, scale))"
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


def _export_torchscript(module: TwoWayModule, x: Tensor, z: Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(
            module, {"forward": (x,), "inverse": (z,)}, check_trace=False
        )
    traced.save(str(path))


def _torchscript_parity(
    path: Path, x: Tensor, z: Tensor, lp_ref: np.ndarray, scale: np.ndarray, base: BaseSpec
) -> float:
    """Max |log_prob| difference, TorchScript vs torch; raises :class:`ExportError` on failure.

    Runs two batches (37 rows, then the rest): neither is the traced batch size.
    """
    loaded = torch.jit.load(str(path))
    lps, xs = [], []
    # The executor's profiling/fusion passes cost seconds on large unrolled graphs (RK4, Newton)
    # and check nothing about the traced program itself.
    with torch.no_grad(), torch.jit.optimized_execution(False):
        for part in (slice(0, _PARITY_BATCH), slice(_PARITY_BATCH, None)):
            if x[part].shape[0]:
                lps.append(loaded(x[part])[1].numpy())
                xs.append(loaded.inverse(z[part]).numpy())
    lp = np.concatenate(lps).astype(np.float64)
    diff = np.abs(lp - lp_ref)
    if not np.all(diff <= LOG_PROB_ATOL + LOG_PROB_RTOL * np.abs(lp_ref)):
        raise ExportError(
            f"TorchScript log_prob disagrees with torch: max |diff| {np.nanmax(diff):.3g} nats "
            f"exceeds the tolerance {LOG_PROB_ATOL:g} + {LOG_PROB_RTOL:g}*|log_prob|"
        )
    rt = roundtrip_error(x.numpy(), np.concatenate(xs), scale, base)
    if not rt <= ROUNDTRIP_TOL:
        raise ExportError(
            f"TorchScript round trip x -> z -> x: max |x - x'|/scale {rt:.3g} "
            f"exceeds the tolerance {ROUNDTRIP_TOL:g}"
        )
    return float(np.max(diff))


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
        optimize: fold and prune the exported ONNX graphs (:mod:`flowserve.models.optimize`)
            before the parity checks, which then verify the optimised graphs.

    Returns the written manifest, re-read and checksum-verified from disk.
    Raises :class:`ExportError` when a graph fails to export or a check fails; ``ValueError``
    for bad arguments. No ``manifest.json`` exists in ``out_dir`` after a failure.
    """
    out_dir = Path(out_dir)
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
    check = rows[:PARITY_ROWS]
    base = _base_spec(model)

    fwd, inv = ForwardGraph(model, row_shape).eval(), InverseGraph(model).eval()
    x_example = torch.from_numpy(check[: min(8, len(check))].copy())
    with torch.no_grad():
        z_example, _ = fwd(x_example)
        z_example = z_example.detach().clone()
        exporters = {
            "forward": export_onnx(fwd, x_example, out_dir / FORWARD_GRAPH, "x", ["z", "log_prob"]),
            "inverse": export_onnx(inv, z_example, out_dir / INVERSE_GRAPH, "z", ["x"]),
        }
    log.info("exported ONNX graphs (%s)", exporters)
    graph_nodes: dict[str, dict[str, int]] = {}
    if optimize:
        graph_nodes = {
            "forward": optimize_graph(out_dir / FORWARD_GRAPH, check[:_PARITY_BATCH]),
            "inverse": optimize_graph(out_dir / INVERSE_GRAPH, z_example.numpy()),
        }
        log.info("optimised ONNX graphs: %s", graph_nodes)

    # Reference: torch eager, float32, on the parity rows.
    x_check = torch.from_numpy(check)
    with torch.no_grad():
        z_ref_t, lp_ref_t = fwd(x_check)
    lp_ref = lp_ref_t.numpy().astype(np.float64)
    bad = int(np.sum(~np.isfinite(lp_ref)))
    if bad:
        raise ExportError(
            f"torch log_prob itself is not finite on {bad} of {len(lp_ref)} holdout rows: "
            "the flow is broken (NaN/inf) before any export"
        )

    fsess, isess = onnx_session(out_dir / FORWARD_GRAPH), onnx_session(out_dir / INVERSE_GRAPH)
    z_onnx, lp_onnx = _run_batched(
        lambda b: fsess.run(["z", "log_prob"], {"x": b}), check, _PARITY_BATCH
    )
    lp_diff = np.abs(lp_onnx.astype(np.float64) - lp_ref)
    atol = gate.log_prob_atol(str(model.family), LOG_PROB_ATOL)
    allowed = atol + LOG_PROB_RTOL * np.abs(lp_ref)
    lp_tol = float(atol + LOG_PROB_RTOL * np.max(np.abs(lp_ref)))
    max_lp_diff = float(np.max(lp_diff)) if np.all(np.isfinite(lp_diff)) else float("inf")
    if not np.all(lp_diff <= allowed):
        worst = int(np.argmax(np.where(np.isfinite(lp_diff), lp_diff - allowed, np.inf)))
        raise ExportError(
            f"ONNX Runtime log_prob disagrees with torch: max |diff| {max_lp_diff:.3g} nats "
            f"(row {worst}: onnx {lp_onnx[worst]:.6g}, torch {lp_ref[worst]:.6g}) exceeds the "
            f"tolerance {atol:g} + {LOG_PROB_RTOL:g}*|log_prob|"
        )
    # The gate also checks fresh and out-of-distribution rows (models/export_gate.py).
    kind = preprocessing.data_kind if preprocessing is not None else "real"
    by_set, counts = {"heldout": max_lp_diff}, {"heldout": int(check.shape[0])}
    for set_name, extra in gate.gate_rows(model, check, kind).items():
        rtol = gate.OOD_RTOL if set_name == "ood" else LOG_PROB_RTOL
        by_set[set_name] = _gate_parity(fwd, fsess, extra, set_name, atol, rtol)
        counts[set_name] = int(extra.shape[0])
    solver = gate.solver_error(model, check[: gate.GATE_ROWS], lp_onnx[: gate.GATE_ROWS])
    if solver is not None and not solver <= gate.SOLVER_TOL:
        raise ExportError(
            f"the ODE solver's error in log_prob is {solver:.3g} nats against a finer solve, "
            f"above {gate.SOLVER_TOL:g}: train or export with more steps (--param steps=...)"
        )

    (x_back,) = _run_batched(
        lambda b: isess.run(["x"], {"z": b}), z_onnx.astype(np.float32), _PARITY_BATCH
    )
    scale = _feature_scale(model, dim)
    rt_max = roundtrip_error(check, x_back, scale, base)
    if not rt_max <= ROUNDTRIP_TOL:
        raise ExportError(
            f"ONNX round trip x -> z -> x is not exact enough: max |x - x'|/scale {rt_max:.3g} "
            f"exceeds the tolerance {ROUNDTRIP_TOL:g}"
        )

    ts_diff: float | None = None
    if torchscript:
        ts_path = out_dir / TORCHSCRIPT_FILE
        try:
            _export_torchscript(
                TwoWayModule(model, row_shape).eval(), x_example, z_example, ts_path
            )
        except Exception as e:  # TorchScript is optional; the ONNX graphs are the contract
            ts_path.unlink(missing_ok=True)
            log.warning(
                "no TorchScript for family %s: %s: %s",
                model.family,
                type(e).__name__,
                _first_line(e),
            )
        else:
            ts_diff = _torchscript_parity(ts_path, x_check, z_ref_t, lp_ref, scale, base)

    # Calibrate on what the service computes: ONNX Runtime log-likelihoods of every holdout row,
    # unless the caller computed calibration scores on rows the model never trained on.
    if calibration_log_probs is None:
        (cal_lp,) = _run_batched(lambda b: fsess.run(["log_prob"], {"x": b}), rows)
    else:
        cal_lp = np.asarray(calibration_log_probs, dtype=np.float64).reshape(-1)
    try:
        calibration = Calibration.from_log_probs(
            cal_lp,
            default_fpr,
            calibration_method,  # type: ignore[arg-type]
        )
    except ValueError as e:
        raise ExportError(f"cannot calibrate ({calibration_method}): {e}") from e

    # Flows that factorize exactly in one order also get per-feature chain-rule terms.
    chain_order = export_chain_rule(model, out_dir, check, lp_onnx)

    files = {
        p.relative_to(out_dir).as_posix(): sha256_file(p)
        for p in sorted(out_dir.rglob("*"))
        if p.is_file() and p.relative_to(out_dir).as_posix() != MANIFEST_FILE
    }
    manifest = Manifest(
        name=name,
        version=version,
        family=str(model.family),
        hyperparameters=dict(model.hparams),
        dim=dim,
        # Image rows travel flat, but their shape is what /models shows and .npy bodies may use.
        input_shape=[int(s) for s in model.hparams.get("shape", row_shape)]
        if kind == "image"
        else list(row_shape),
        feature_names=list(feature_names),
        base=base,
        preprocessing=_preprocessing(model, preprocessing),
        metrics=metrics or Metrics(),
        calibration=calibration,
        parity=Parity(
            rows=int(check.shape[0]),
            max_abs_log_prob_diff=max_lp_diff,
            log_prob_tolerance=lp_tol,
            roundtrip_max_abs_error=rt_max,
            roundtrip_tolerance=ROUNDTRIP_TOL,
            torchscript_max_abs_log_prob_diff=ts_diff,
            checked_rows=counts,
            max_abs_log_prob_diff_by_set=by_set,
            solver_error=solver,
            solver_tolerance=gate.SOLVER_TOL if solver is not None else None,
        ),
        torchscript=TORCHSCRIPT_FILE if ts_diff is not None else None,
        **manifest_fields(chain_order),
        opset=OPSET,
        files=files,
        library_versions={**_library_versions(), "onnx_exporter": exporters["forward"]},
        graph_nodes=graph_nodes,
        training_config=dict(training_config or {}),
    )
    write_manifest(out_dir, manifest)
    try:
        return verify_artifact(out_dir)
    except ArtifactError as e:
        (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
        raise ExportError(f"the written artifact does not verify: {e}") from e

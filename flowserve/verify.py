"""``flowserve verify ARTIFACT_DIR``: check that an artifact is intact and its graphs work.

Checks, in order (the first failure ends the run with exit status 1 and a one-line reason):

1. the manifest is valid and every listed file matches its sha256 (:func:`verify_artifact`);
2. both ONNX graphs load in ONNX Runtime with the contract's input/output names and widths;
3. round trip on base samples: ``x = inverse(z)`` for ``z`` drawn from the manifest's base, then
   ``x' = inverse(forward(x).z)`` must match ``x`` within the manifest's round-trip tolerance
   (per feature, in units of the standardization scale), and ``log_prob(x)`` must be finite;
4. where torch is installed and the artifact has TorchScript (unless ``--no-torchscript``):
   TorchScript vs ONNX log_prob on the same rows, within the parity tolerance
   (:mod:`flowserve.parity`), by :mod:`flowserve.models.verify_torch`.

This module needs only numpy, pydantic and ONNX Runtime, so the command runs on a serving
install; torch is imported for check 4 alone.

Example:
    $ flowserve verify models/demo/1
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flowserve.artifact import ArtifactError, Manifest, roundtrip_error, verify_artifact
from flowserve.graphs import FORWARD, INVERSE, GraphIO, onnx_session
from flowserve.optional import torch_available
from flowserve.parity import feature_scale

__all__ = [
    "CheckResult",
    "VerifyError",
    "check_artifact",
    "configure",
    "first_line",
    "run",
]


@dataclass(frozen=True)
class CheckResult:
    """One named check and what it measured."""

    name: str
    detail: str


class VerifyError(Exception):
    """A check failed; the message says which and why."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), for one-line reasons."""
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


def _session(path: Path) -> Any:
    try:
        return onnx_session(path)
    except Exception as e:  # onnxruntime raises its own untyped errors for unloadable graphs
        raise VerifyError(f"{path.name} does not load in ONNX Runtime: {first_line(e)}") from e


def _check_io(sess: Any, role: str, graph: GraphIO, dim: int) -> None:
    got_in = [i.name for i in sess.get_inputs()]
    got_out = [o.name for o in sess.get_outputs()]
    inputs, outputs = [graph.input], list(graph.outputs)
    if got_in != inputs or got_out != outputs:
        raise VerifyError(
            f"{role} graph has inputs {got_in} and outputs {got_out}; expected {inputs} -> "
            f"{outputs}"
        )
    shape = sess.get_inputs()[0].shape
    if len(shape) != 2 or shape[1] != dim or isinstance(shape[0], int):
        raise VerifyError(
            f"{role} graph input shape is {shape}; expected [batch, {dim}] with a dynamic batch"
        )


def _check_graphs(directory: Path, manifest: Manifest) -> tuple[Any, Any]:
    """Both sessions, after checking their names and widths against the contract."""
    fwd = _session(directory / manifest.graphs["forward"])
    inv = _session(directory / manifest.graphs["inverse"])
    _check_io(fwd, "forward", FORWARD, manifest.dim)
    _check_io(inv, "inverse", INVERSE, manifest.dim)
    return fwd, inv


def _check_roundtrip(
    manifest: Manifest, fwd: Any, inv: Any, samples: int, seed: int
) -> tuple[np.ndarray, np.ndarray, CheckResult]:
    """Rows decoded from base samples, their ONNX log_prob, and the round trip's result."""
    rng = np.random.default_rng(seed)
    z = manifest.base.sample(samples, manifest.dim, 1.0, rng)
    (x,) = inv.run([INVERSE.outputs[0]], {INVERSE.input: z})
    z2, lp = fwd.run(list(FORWARD.outputs), {FORWARD.input: x})
    (x2,) = inv.run([INVERSE.outputs[0]], {INVERSE.input: z2})
    if not (np.isfinite(x).all() and np.isfinite(lp).all() and np.isfinite(x2).all()):
        raise VerifyError("ONNX graphs give non-finite values on base samples")
    scale = feature_scale(manifest.preprocessing.standardize_scale, manifest.dim)
    err = roundtrip_error(x, x2, scale, manifest.base)
    tol = manifest.parity.roundtrip_tolerance
    if not err <= tol:
        raise VerifyError(
            f"ONNX round trip on {samples} base samples: max |x - x'|/scale {err:.3g} exceeds "
            f"the tolerance {tol:g}"
        )
    detail = f"{samples} base samples, max |x - x'|/scale {err:.3g} <= {tol:g}"
    return x, lp, CheckResult("roundtrip", detail)


def _check_torchscript(
    directory: Path, manifest: Manifest, x: np.ndarray, lp: np.ndarray, torchscript: bool
) -> CheckResult:
    if manifest.torchscript is None:
        return CheckResult("torchscript", "skipped (the artifact has none)")
    if not torchscript:
        return CheckResult("torchscript", "skipped (--no-torchscript)")
    if not torch_available():
        return CheckResult("torchscript", "skipped (torch is not installed)")
    from flowserve.models.verify_torch import check_torchscript

    return check_torchscript(directory / manifest.torchscript, x, lp)


def check_artifact(
    directory: Path, samples: int = 256, seed: int = 0, torchscript: bool = True
) -> list[CheckResult]:
    """Run every check on the artifact in ``directory``.

    Arguments:
        directory: ``<root>/<name>/<version>/``.
        samples: base samples for the round trip (and the TorchScript rows).
        seed: seed of those samples.
        torchscript: check TorchScript against ONNX where torch and ``model.pt`` exist.

    Returns what each check measured. Raises :class:`VerifyError` or :class:`ArtifactError`
    naming the first failure.
    """
    directory = Path(directory)
    manifest = verify_artifact(directory)
    results = [CheckResult("checksums", f"{len(manifest.files)} files match the manifest's sha256")]
    fwd, inv = _check_graphs(directory, manifest)
    results.append(
        CheckResult("graphs", "forward x -> (z, log_prob), inverse z -> x, dynamic batch")
    )
    x, lp, roundtrip = _check_roundtrip(manifest, fwd, inv, samples, seed)
    results.append(roundtrip)
    results.append(_check_torchscript(directory, manifest, x, lp, torchscript))
    return results


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``flowserve verify``'s arguments to ``parser``."""
    parser.add_argument(
        "artifact", type=Path, metavar="ARTIFACT_DIR", help="<root>/<name>/<version>"
    )
    parser.add_argument("--samples", type=int, default=256, help="base samples for the round trip")
    parser.add_argument("--seed", type=int, default=0, help="seed for the base samples")
    parser.add_argument(
        "--no-torchscript",
        dest="torchscript",
        action="store_false",
        help="skip the TorchScript check even where torch is installed",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``flowserve verify``: one line per check, then ``PASS`` (0) or ``FAIL`` (1)."""
    directory: Path = args.artifact
    if args.samples < 1:
        print("error: --samples must be at least 1")
        return 1
    try:
        results = check_artifact(
            directory, samples=args.samples, seed=args.seed, torchscript=args.torchscript
        )
    except (ArtifactError, VerifyError) as e:
        message = str(e)
        print(f"FAIL {message if str(directory) in message else f'{directory}: {message}'}")
        return 1
    for r in results:
        print(f"ok   {r.name:<12} {r.detail}")
    print(f"PASS {directory}")
    return 0

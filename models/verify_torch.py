"""``flowserve verify ARTIFACT_DIR``: check that an artifact is intact and its graphs work.

Checks, in order (the first failure ends the run with exit status 1 and a one-line reason):

1. the manifest is valid and every listed file matches its sha256 (:func:`verify_artifact`);
2. both ONNX graphs load in ONNX Runtime with the contract's input/output names and widths;
3. round trip on base samples: ``x = inverse(z)`` for ``z`` drawn from the manifest's base, then
   ``x' = inverse(forward(x).z)`` must match ``x`` within the manifest's round-trip tolerance
   (per feature, in units of the standardization scale), and ``log_prob(x)`` must be finite;
4. where torch is installed and the artifact has TorchScript: TorchScript vs ONNX log_prob on
   the same rows, within the manifest's log_prob tolerance.

torch is imported only for check 4, so the command runs on a serving install.

Example:
    $ flowserve verify models/demo/1
"""

from __future__ import annotations

import argparse
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flowserve.artifact import ArtifactError, Manifest, roundtrip_error, verify_artifact
from flowserve.service.runtime import onnx_session

__all__ = [
    "CheckResult",
    "VerifyError",
    "check_artifact",
    "configure",
    "run",
]

# log_prob parity between runtimes, as in export: |diff| <= ATOL + RTOL * |log_prob|.
_LP_ATOL = 1e-3
_LP_RTOL = 1e-5


@dataclass(frozen=True)
class CheckResult:
    """One named check and what it measured."""

    name: str
    detail: str


class VerifyError(Exception):
    """A check failed; the message says which and why."""


def _session(path: Path) -> Any:
    try:
        return onnx_session(path)
    except Exception as e:  # onnxruntime raises its own untyped errors for unloadable graphs
        raise VerifyError(f"{path.name} does not load in ONNX Runtime: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


def _check_io(sess: Any, role: str, inputs: list[str], outputs: list[str], dim: int) -> None:
    got_in = [i.name for i in sess.get_inputs()]
    got_out = [o.name for o in sess.get_outputs()]
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


def _feature_scale(manifest: Manifest) -> np.ndarray:
    scale = manifest.preprocessing.standardize_scale
    if scale is not None and len(scale) == manifest.dim:
        return np.abs(np.asarray(scale, dtype=np.float64))
    return np.ones(manifest.dim)


def check_artifact(directory: Path, samples: int = 256, seed: int = 0) -> list[CheckResult]:
    """Run every check on the artifact in ``directory``; raises :class:`VerifyError` or
    :class:`ArtifactError` naming the first failure, else returns what each check measured."""
    directory = Path(directory)
    results: list[CheckResult] = []
    manifest = verify_artifact(directory)
    results.append(
        CheckResult("checksums", f"{len(manifest.files)} files match the manifest's sha256")
    )

    fwd = _session(directory / manifest.graphs["forward"])
    inv = _session(directory / manifest.graphs["inverse"])
    _check_io(fwd, "forward", ["x"], ["z", "log_prob"], manifest.dim)
    _check_io(inv, "inverse", ["z"], ["x"], manifest.dim)
    results.append(
        CheckResult("graphs", "forward x -> (z, log_prob), inverse z -> x, dynamic batch")
    )

    rng = np.random.default_rng(seed)
    z = manifest.base.sample(samples, manifest.dim, 1.0, rng)
    (x,) = inv.run(["x"], {"z": z})
    z2, lp = fwd.run(["z", "log_prob"], {"x": x})
    (x2,) = inv.run(["x"], {"z": z2})
    if not (np.isfinite(x).all() and np.isfinite(lp).all() and np.isfinite(x2).all()):
        raise VerifyError("ONNX graphs give non-finite values on base samples")
    err = roundtrip_error(x, x2, _feature_scale(manifest), manifest.base)
    tol = manifest.parity.roundtrip_tolerance
    if not err <= tol:
        raise VerifyError(
            f"ONNX round trip on {samples} base samples: max |x - x'|/scale {err:.3g} exceeds "
            f"the tolerance {tol:g}"
        )
    results.append(
        CheckResult("roundtrip", f"{samples} base samples, max |x - x'|/scale {err:.3g} <= {tol:g}")
    )

    if manifest.torchscript is None:
        results.append(CheckResult("torchscript", "skipped (the artifact has none)"))
    elif importlib.util.find_spec("torch") is None:
        results.append(CheckResult("torchscript", "skipped (torch is not installed)"))
    else:
        results.append(_check_torchscript(directory / manifest.torchscript, x, lp))
    return results


def _check_torchscript(path: Path, x: np.ndarray, lp_onnx: np.ndarray) -> CheckResult:
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            _, lp = module(torch.from_numpy(x))
    except Exception as e:  # a TorchScript file that does not load or run is a failed check
        raise VerifyError(f"{path.name} does not load or run: {_first_line(e)}") from e
    ref = lp_onnx.astype(np.float64)
    diff = np.abs(lp.numpy().astype(np.float64) - ref)
    if not np.all(diff <= _LP_ATOL + _LP_RTOL * np.abs(ref)):
        raise VerifyError(
            f"TorchScript and ONNX log_prob differ by up to {float(np.max(diff)):.3g} nats "
            f"(tolerance {_LP_ATOL:g} + {_LP_RTOL:g}*|log_prob|)"
        )
    return CheckResult("torchscript", f"log_prob matches ONNX, max |diff| {np.max(diff):.3g} nats")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "artifact", type=Path, metavar="ARTIFACT_DIR", help="<root>/<name>/<version>"
    )
    parser.add_argument("--samples", type=int, default=256, help="base samples for the round trip")
    parser.add_argument("--seed", type=int, default=0, help="seed for the base samples")


def run(args: argparse.Namespace) -> int:
    directory: Path = args.artifact
    if args.samples < 1:
        print("error: --samples must be at least 1")
        return 1
    try:
        results = check_artifact(directory, samples=args.samples, seed=args.seed)
    except (ArtifactError, VerifyError) as e:
        message = str(e)
        print(f"FAIL {message if str(directory) in message else f'{directory}: {message}'}")
        return 1
    for r in results:
        print(f"ok   {r.name:<12} {r.detail}")
    print(f"PASS {directory}")
    return 0

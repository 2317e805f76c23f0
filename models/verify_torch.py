"""The torch half of ``flowserve verify``: TorchScript against ONNX Runtime.

:mod:`flowserve.verify` runs every other check with ONNX Runtime alone and calls
:func:`check_torchscript` only where torch can be imported and the artifact has TorchScript.

Example:
    $ flowserve verify models/demo/1            # includes this check where torch is installed
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flowserve.parity import log_prob_parity
from flowserve.verify import CheckResult, VerifyError, first_line

__all__ = ["check_torchscript"]


def check_torchscript(path: Path, x: np.ndarray, lp_onnx: np.ndarray) -> CheckResult:
    """TorchScript ``log_prob`` of rows ``x`` against ONNX Runtime's ``lp_onnx``.

    Arguments:
        path: the artifact's TorchScript file.
        x: raw rows ``[n, dim]`` float32.
        lp_onnx: ONNX Runtime's log_prob of ``x`` (finite).

    Raises :class:`VerifyError` when the file does not load or run, or past the tolerance.
    """
    try:
        module = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            _, lp = module(torch.from_numpy(x))
    except Exception as e:  # a TorchScript file that does not load or run is a failed check
        raise VerifyError(f"{path.name} does not load or run: {first_line(e)}") from e
    parity = log_prob_parity(lp.numpy(), lp_onnx)
    if not parity.passed:
        raise VerifyError(
            f"TorchScript and ONNX log_prob differ by up to {parity.max_abs_diff:.3g} nats "
            f"(tolerance {parity.rule})"
        )
    return CheckResult(
        "torchscript", f"log_prob matches ONNX, max |diff| {parity.max_abs_diff:.3g} nats"
    )

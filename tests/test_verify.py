"""``flowserve verify`` on a serving install (no torch), and the parity rule it shares with export.

The CLI runs in a subprocess where ``import torch`` fails, on the committed default model and on
copies of it broken in two ways: a flipped byte (checksum) and a re-hashed garbage graph (ONNX
Runtime refuses it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import flowserve
from flowserve.artifact import INVERSE_GRAPH, MANIFEST_FILE, sha256_file
from flowserve.cli import main as cli_main
from flowserve.parity import LOG_PROB_ATOL, LOG_PROB_RTOL, feature_scale, log_prob_parity

DEFAULT = Path(flowserve.__file__).parent / "default_model" / "sensors" / "1"

# Blocks torch before the CLI starts, runs it, and fails if torch or the training side loaded.
_NO_TORCH = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # any import of torch now raises ImportError
    from flowserve.cli import main
    status = main(sys.argv[1:])
    loaded = {k for k, v in sys.modules.items() if v is not None}
    assert not {k for k in loaded if k == "torch" or k.startswith("torch.")}, "torch loaded"
    assert not {k for k in loaded if k.startswith("flowserve.models")}, "flowserve.models loaded"
    sys.exit(status)
    """
)


def verify_without_torch(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _NO_TORCH, "verify", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_default_model_verifies_without_torch() -> None:
    done = verify_without_torch(DEFAULT)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[1] for line in lines[:-1]] == [
        "checksums",
        "graphs",
        "roundtrip",
        "torchscript",
    ]
    assert "skipped (torch is not installed)" in lines[3]
    assert lines[-1] == f"PASS {DEFAULT}"


def test_a_flipped_byte_fails_without_torch(tmp_path: Path) -> None:
    broken = tmp_path / "sensors" / "1"
    shutil.copytree(DEFAULT, broken)
    data = bytearray((broken / INVERSE_GRAPH).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / INVERSE_GRAPH).write_bytes(bytes(data))
    done = verify_without_torch(broken)
    assert done.returncode == 1
    assert done.stdout.startswith("FAIL ") and "checksum mismatch for inverse.onnx" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_an_unloadable_graph_fails_without_torch(tmp_path: Path) -> None:
    """Garbage whose checksum was re-hashed into the manifest gets past the checksums but not
    ONNX Runtime."""
    broken = tmp_path / "sensors" / "1"
    shutil.copytree(DEFAULT, broken)
    (broken / INVERSE_GRAPH).write_bytes(b"not an onnx graph")
    data = json.loads((broken / MANIFEST_FILE).read_text())
    data["files"][INVERSE_GRAPH] = sha256_file(broken / INVERSE_GRAPH)
    (broken / MANIFEST_FILE).write_text(json.dumps(data))
    done = verify_without_torch(broken)
    assert done.returncode == 1
    assert "inverse.onnx does not load in ONNX Runtime" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_no_torchscript_flag_skips_the_check(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["verify", str(DEFAULT), "--no-torchscript", "--samples", "16"]) == 0
    out = capsys.readouterr().out
    assert "skipped (--no-torchscript)" in out and out.rstrip().endswith(f"PASS {DEFAULT}")


def test_log_prob_parity_rule() -> None:
    ref = np.array([-1.0, -1e4, -np.inf, 2.0])
    allowed = LOG_PROB_ATOL + LOG_PROB_RTOL * np.abs(ref[:2])
    inside = log_prob_parity(ref + np.r_[0.9 * allowed, 0.0, 0.0], ref)
    assert inside.passed and inside.max_abs_diff == pytest.approx(0.9 * allowed[1])
    # the relative term is what lets the -1e4 row differ by 100 times the absolute tolerance
    assert inside.tolerance == pytest.approx(LOG_PROB_ATOL + LOG_PROB_RTOL * 1e4)
    past = log_prob_parity(ref + np.array([0.0, 1.1 * allowed[1], 0.0, 0.0]), ref)
    assert not past.passed and past.worst == 1
    # a non-finite value agrees only with the same value
    for got in (np.nan, np.inf, -1.0):
        unmatched = log_prob_parity(np.where(np.isinf(ref), got, ref), ref)
        assert not unmatched.passed and unmatched.worst == 2 and unmatched.max_abs_diff == np.inf
    assert log_prob_parity(np.array([np.nan]), np.array([0.0])).max_abs_diff == np.inf
    empty = log_prob_parity(np.zeros(0), np.zeros(0))
    assert empty.passed and empty.max_abs_diff == 0.0
    assert past.rule == f"{LOG_PROB_ATOL:g} + {LOG_PROB_RTOL:g}*|log_prob|"


def test_feature_scale() -> None:
    np.testing.assert_array_equal(feature_scale([-2.0, 0.5], 2), [2.0, 0.5])
    np.testing.assert_array_equal(feature_scale([3.0], 3), [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(feature_scale(None, 2), [1.0, 1.0])
    np.testing.assert_array_equal(feature_scale([1.0, 2.0], 3), [1.0, 1.0, 1.0])

"""The artifact contract: manifest validation, calibration maths, checksums (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flowserve.artifact import (
    ArtifactError,
    Calibration,
    Manifest,
    Parity,
    load_manifest,
    next_version,
    sha256_file,
    verify_artifact,
    write_manifest,
)


def _calibration(seed: int = 0) -> Calibration:
    lp = np.random.default_rng(seed).normal(-3.0, 1.0, 5000)
    return Calibration.from_log_probs(lp, default_fpr=0.05)


def _manifest(directory: Path, **overrides: object) -> Manifest:
    for fname in ("forward.onnx", "inverse.onnx"):
        # a well-formed ONNX protobuf (only producer_name set), distinct per file: verify
        # reads the graphs' external-data references
        (directory / fname).write_bytes(bytes([0x12, len(fname)]) + fname.encode())
    fields: dict[str, object] = dict(
        name="demo",
        version=1,
        family="realnvp",
        hyperparameters={"dim": 2},
        dim=2,
        input_shape=[2],
        feature_names=["a", "b"],
        calibration=_calibration(),
        parity=Parity(
            rows=10,
            max_abs_log_prob_diff=1e-6,
            log_prob_tolerance=1e-3,
            roundtrip_max_abs_error=1e-6,
            roundtrip_tolerance=1e-3,
        ),
        opset=18,
        files={f: sha256_file(directory / f) for f in ("forward.onnx", "inverse.onnx")},
    )
    fields.update(overrides)
    return Manifest(**fields)  # type: ignore[arg-type]


def test_calibration_threshold_matches_fpr() -> None:
    cal = _calibration()
    lp = np.random.default_rng(1).normal(-3.0, 1.0, 20000)
    flagged = np.mean(lp < cal.threshold_for(0.05))
    assert flagged == pytest.approx(0.05, abs=0.01)
    assert cal.threshold == pytest.approx(cal.threshold_for(0.05))
    assert cal.threshold_for(0.001) < cal.threshold_for(0.01) < cal.threshold_for(0.1)


def test_percentile_is_share_of_more_likely_rows() -> None:
    cal = _calibration()
    pct = cal.percentile(np.array([-3.0, -100.0, 100.0]))
    assert pct[0] == pytest.approx(50.0, abs=2.0)
    assert pct[1] == 100.0 and pct[2] == 0.0


def test_calibration_needs_finite_values() -> None:
    with pytest.raises(ValueError, match="at least 2 finite"):
        Calibration.from_log_probs(np.array([np.nan, np.inf, 1.0]))


def test_manifest_round_trip_and_checksums(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    write_manifest(tmp_path, m)
    assert load_manifest(tmp_path) == m
    assert verify_artifact(tmp_path) == m
    (tmp_path / "inverse.onnx").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match=r"checksum mismatch for inverse\.onnx"):
        verify_artifact(tmp_path)
    (tmp_path / "inverse.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"inverse\.onnx listed in the manifest is missing"):
        verify_artifact(tmp_path)


def test_manifest_rejects_inconsistent_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="feature_names"):
        _manifest(tmp_path, feature_names=["a"])
    with pytest.raises(ValueError, match="input_shape"):
        _manifest(tmp_path, input_shape=[3])


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no manifest.json"), ("{not json", "not valid JSON"), ("{}", "invalid manifest")],
)
def test_load_manifest_errors(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(ArtifactError, match=message):
        load_manifest(tmp_path)


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    data = json.loads(_manifest(tmp_path).model_dump_json())
    data["schema_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="schema_version"):
        load_manifest(tmp_path)


def test_next_version(tmp_path: Path) -> None:
    assert next_version(tmp_path, "m") == 1
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "7").mkdir()
    (tmp_path / "m" / "notes").mkdir()
    assert next_version(tmp_path, "m") == 8

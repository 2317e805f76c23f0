"""The artifact contract: manifest validation, calibration maths, checksums (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from flowserve import artifact
from flowserve.artifact import (
    SCHEMA_MINOR,
    SCHEMA_VERSION,
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
from flowserve.service.settings import DEFAULT_MODEL_ROOT


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


def _written(directory: Path, **changes: object) -> dict[str, Any]:
    """A manifest as JSON with ``changes`` applied, written to ``directory``."""
    data = json.loads(_manifest(directory).model_dump_json())
    data.update(changes)
    (directory / "manifest.json").write_text(json.dumps(data))
    return data


def test_newer_minor_loads_with_its_unknown_fields_ignored_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(artifact, "_warned_ignored", set())
    data = _written(tmp_path, schema_minor=SCHEMA_MINOR + 1, drift_reference={"bins": 10})
    data["calibration"]["winsorized"] = True  # unknown nested fields are ignored too
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with caplog.at_level("WARNING", logger="flowserve.artifact"):
        first = verify_artifact(tmp_path)
        again = load_manifest(tmp_path)  # a watched root re-reads: one warning is enough
    assert first == again and first.schema_minor == SCHEMA_MINOR + 1
    assert not hasattr(first, "drift_reference") and first.calibration == _calibration()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "drift_reference" in warnings[0] and "calibration.winsorized" in warnings[0]


def test_newer_minor_is_still_checked_for_everything_it_shares(tmp_path: Path) -> None:
    _written(tmp_path, schema_minor=SCHEMA_MINOR + 1, novel_field=1, dim=3)
    with pytest.raises(ArtifactError, match="feature_names for dim 3"):
        load_manifest(tmp_path)


def test_unknown_fields_at_this_readers_minor_are_refused(tmp_path: Path) -> None:
    # What our own writer produces must match the schema exactly: a typo is an error.
    _written(tmp_path, feature_nmaes=["a", "b"])
    with pytest.raises(ArtifactError, match="invalid manifest at feature_nmaes"):
        load_manifest(tmp_path)
    with pytest.raises(ValidationError, match="feature_nmaes"):
        _manifest(tmp_path, feature_nmaes=["a", "b"])
    unchecked = _manifest(tmp_path).model_copy(update={"dim": 3})  # model_copy validates nothing
    with pytest.raises(ValidationError, match="feature_names for dim 3"):
        write_manifest(tmp_path, unchecked)  # the writer checks what it writes


@pytest.mark.parametrize(
    ("major", "reason"),
    [(SCHEMA_VERSION + 1, "is newer than .*: upgrade flowserve"), (0, "is older than .*re-export")],
)
def test_another_major_is_refused_with_the_reason(tmp_path: Path, major: int, reason: str) -> None:
    # Another major may change anything: its fields are not even looked at.
    _written(tmp_path, schema_version=major, schema_minor=0, novel_field=1, dim="two")
    with pytest.raises(ArtifactError, match=f"schema_version {major} {reason}"):
        load_manifest(tmp_path)


def _cross_fitted() -> Calibration:
    served, folds = -np.arange(1.0, 5.0), [-np.arange(2.0, 6.0), -np.arange(0.5, 3.5)]
    return Calibration.cross_fitted(served, folds, default_fpr=0.2)


def _with_score_graph(directory: Path, **overrides: object) -> Manifest:
    (directory / "score.onnx").write_bytes(bytes([0x12, 5]) + b"score")
    base = _manifest(directory)
    graphs = {**base.graphs, "score": "score.onnx"}
    files = {**base.files, "score.onnx": sha256_file(directory / "score.onnx")}
    return _manifest(directory, graphs=graphs, files=files, **overrides)


def test_writers_write_the_lowest_minor_that_holds_the_manifest(tmp_path: Path) -> None:
    newer = _manifest(tmp_path).model_copy(update={"schema_minor": SCHEMA_MINOR + 1})
    write_manifest(tmp_path, newer)
    written = json.loads((tmp_path / "manifest.json").read_text())
    # minor 0 is written without the field, so readers from before the policy still read it
    assert written["schema_version"] == SCHEMA_VERSION and "schema_minor" not in written
    # cross-conformal calibration is minor 1: only a manifest that carries it says so
    write_manifest(tmp_path, _with_score_graph(tmp_path, calibration=_cross_fitted()))
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert (written["schema_version"], written["schema_minor"]) == (SCHEMA_VERSION, 1)
    assert verify_artifact(tmp_path).calibration == _cross_fitted()


def test_a_cross_fitted_calibration_needs_its_score_graph(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs a 'score' graph"):
        _manifest(tmp_path, calibration=_cross_fitted())


def test_cross_conformal_p_values_compare_each_group_under_its_own_model() -> None:
    # served scores 1..4, fold 0's 2..5, fold 1's 0.5..2.5: n = 11
    cal = _cross_fitted()
    assert cal.n_rows == 11 and cal.folds == 2 and cal.min_fpr == pytest.approx(1 / 12)
    lp = np.array([-3.0, -100.0, 0.0, np.nan])
    folds = np.array([[-3.0, -1.0], [-100.0, -100.0], [0.0, 0.0], [-1.0, -1.0]])
    # row 0: served >= 3: 2 (3, 4); fold 0 >= 3: 3 (3, 4, 5); fold 1 >= 1: 2 (1.5, 2.5)
    expected = [(1 + 2 + 3 + 2) / 12, 1 / 12, 1.0, 0.0]
    assert cal.p_values(lp, folds).tolist() == pytest.approx(expected)
    # the flag is p <= fpr, not the pooled threshold (indicative only)
    assert cal.flags(lp, 8 / 12, folds).tolist() == [True, True, False, True]
    assert cal.flags(lp, 0.1, folds).tolist() == [False, True, False, True]
    with pytest.raises(ValueError, match="needs the fold models"):
        cal.p_values(lp)
    with pytest.raises(ValueError, match="1 fold log_prob columns for 2 folds"):
        cal.p_values(lp, folds[:, :1])
    with pytest.raises(ValueError, match="below the smallest attainable"):
        cal.flags(lp, 0.05, folds)


def test_without_folds_flags_are_the_threshold_test() -> None:
    cal = _calibration()
    lp = np.random.default_rng(3).normal(-3.0, 1.5, 2000)
    assert np.array_equal(cal.flags(lp, 0.05), lp < cal.threshold_for(0.05))
    assert np.array_equal(cal.flags(lp, 0.05), cal.p_values(lp) <= 0.05)


def test_the_shipped_default_model_manifest_still_loads() -> None:
    directory = DEFAULT_MODEL_ROOT / "sensors" / "1"
    raw = json.loads((directory / "manifest.json").read_text())
    assert raw["schema_version"] == 1 and "schema_minor" not in raw  # as it was shipped
    manifest = verify_artifact(directory)
    assert (manifest.schema_version, manifest.schema_minor) == (1, 0)


def test_next_version(tmp_path: Path) -> None:
    assert next_version(tmp_path, "m") == 1
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "7").mkdir()
    (tmp_path / "m" / "notes").mkdir()
    assert next_version(tmp_path, "m") == 8

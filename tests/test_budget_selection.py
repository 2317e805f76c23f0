"""Time budgets, automatic family choice, calibration scores and the estimator's API."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from flowserve.artifact import verify_artifact
from flowserve.cli import main
from flowserve.models.budget import ANNEALED, STALL_SHARE, ScheduleCallback, Slice, cosine_lr
from flowserve.models.config import ConfigError, resolve_config
from flowserve.models.data import split_indices, validation_rows
from flowserve.models.datasets import make_dataset
from flowserve.models.estimator import FlowDensityEstimator, NotFittedError
from flowserve.models.selection import candidates
from flowserve.models.spline import build_nsf
from flowserve.models.training import train
from tests.helpers import randomize

SMALL = {"layers": 2, "hidden": 8, "progress": False, "torchscript": False}


def moons(n: int = 300, seed: int = 0) -> pd.DataFrame:
    return make_dataset("moons", n, seed=seed)


# --- the schedule and the budget ----------------------------------------------------------------


def test_cosine_schedule_warms_up_then_anneals() -> None:
    lrs = [cosine_lr(1e-3, p) for p in np.linspace(0, 1, 101)]
    peak = int(np.argmax(lrs))
    assert 0 < peak <= 3 and lrs[peak] == pytest.approx(1e-3, rel=1e-3)
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :], strict=False))
    assert lrs[-1] == pytest.approx(2e-5)


class _Trainer(SimpleNamespace):
    """What ScheduleCallback reads of a Lightning trainer (one process)."""

    def __init__(self) -> None:
        strategy = SimpleNamespace(reduce_boolean_decision=lambda stop, all: stop)
        super().__init__(sanity_checking=False, should_stop=False, strategy=strategy)

    def validate(self, callback: ScheduleCallback, epoch: int, val_nll: float) -> bool:
        self.current_epoch, self.callback_metrics = epoch, {"val_nll": val_nll}
        callback.on_validation_end(self, None)  # type: ignore[arg-type]
        return self.should_stop


def test_under_a_budget_a_stall_stops_only_once_the_schedule_has_annealed() -> None:
    # A fit continuing from good weights (the race's winner) has its best epoch at the start,
    # while the learning rate warms up, and beats it only in the cosine's tail.
    seconds = 100.0
    schedule = ScheduleCallback(Slice(seconds, epochs=10**6), 1e-3, patience=5)
    trainer = _Trainer()
    assert not trainer.validate(schedule, 0, 1.0)  # the best so far, at once
    schedule.slice.started = time.perf_counter() - (STALL_SHARE + 0.2) * seconds
    for epoch in range(1, 30):  # patience and the stall share are both exceeded ...
        assert not trainer.validate(schedule, epoch, 2.0)  # ... but the rate is still high
    schedule.slice.started = time.perf_counter() - ANNEALED * seconds
    assert trainer.validate(schedule, 30, 2.0)


def test_without_a_budget_patience_alone_stops() -> None:
    schedule = ScheduleCallback(Slice(None, epochs=1000), 1e-3, patience=3)
    trainer = _Trainer()
    assert not trainer.validate(schedule, 0, 1.0)
    assert [trainer.validate(schedule, e, 2.0) for e in (1, 2, 3)] == [False, False, True]
    assert _Trainer().validate(ScheduleCallback(Slice(1.0, 10), 1e-3, patience=3), 0, np.nan)


def test_slice_progress_is_the_larger_of_time_and_epochs() -> None:
    by_epochs = Slice(seconds=None, epochs=4)
    assert by_epochs.progress(epoch=2, batch=1, batches=2) == pytest.approx(0.625)
    by_time = Slice(seconds=1e9, epochs=4)
    assert by_time.progress(epoch=1, batch=0, batches=1) == pytest.approx(0.25)
    spent = Slice(seconds=1e-9, epochs=1000)
    assert spent.progress(epoch=0, batch=0, batches=1) >= 1.0


def test_a_tiny_budget_stops_early_and_still_exports_a_valid_artifact(tmp_path: Path) -> None:
    result = train(moons(), family="maf", name="m", out=tmp_path, time_budget=0.3, **SMALL)
    assert result is not None
    # No epoch cap was given: only the budget ended the run (the cap under a budget is 100k).
    assert 1 <= result.metrics["epochs"] < 100_000
    assert result.config["time_budget"] == 0.3 and result.config["epochs"] is None
    manifest = verify_artifact(result.artifact_dir)
    assert manifest.calibration.n_rows >= 2
    assert np.isfinite(result.metrics["test_nll"])


def test_budget_and_threads_flags_reach_the_config(tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    moons(200).to_csv(csv, index=False)
    argv = ["train", str(csv), "--out", str(tmp_path), "--family", "realnvp", "--layers", "2"]
    argv += ["--hidden", "8", "--time-budget", "0.5", "--threads", "1", "--no-torchscript"]
    assert main([*argv, "--no-progress"]) == 0
    import json

    manifest = json.loads((tmp_path / "d" / "1" / "manifest.json").read_text())
    assert manifest["training_config"]["time_budget"] == 0.5
    assert manifest["training_config"]["threads"] == 1


def test_config_validates_budget_threads_and_calibration() -> None:
    with pytest.raises(ConfigError, match="time_budget"):
        resolve_config({}, {"time_budget": 0})
    with pytest.raises(ConfigError, match="threads"):
        resolve_config({}, {"threads": 0})
    with pytest.raises(ConfigError, match="calibration must be one of"):
        resolve_config({}, {"calibration": "jackknife"})
    config = resolve_config({}, {})
    assert config.family == "auto" and config.max_epochs == 100
    assert resolve_config({}, {"time_budget": 5}).max_epochs == 100_000
    assert config.batch_size_for(100) == 32 and config.batch_size_for(1_000_000) == 256


def test_small_tables_get_a_larger_validation_split() -> None:
    assert validation_rows(178) == 36  # 20% of a small table
    assert validation_rows(100_000) == 10_000  # 10% of a large one
    tr, va, te = split_indices(178, None, 0.0, seed=0)
    assert len(va) == 36 and len(te) == 0 and len(tr) == 142


# --- automatic family choice ---------------------------------------------------------------------


def test_candidates_scale_with_rows_and_features() -> None:
    small = candidates(rows=300, dim=4)
    large = candidates(rows=50_000, dim=30)
    assert {c.family for c in small} >= {"gaussian", "maf", "nsf", "nsf_ar", "realnvp"}
    assert max(c.hidden for c in large) > max(c.hidden for c in small)
    assert {c.family for c in candidates(rows=300, dim=1)} <= {"gaussian", "maf", "nsf_ar"}


def test_auto_races_candidates_and_is_reproducible_by_seed(tmp_path: Path) -> None:
    from flowserve.models.data import prepare_data
    from flowserve.models.selection import Candidate, race

    prepared = prepare_data(moons(200), seed=0)
    pool = [Candidate("maf", 2, 8), Candidate("realnvp", 2, 8), Candidate("nsf", 2, 8)]
    config = resolve_config({}, {"epochs": 8})
    runs = [race(prepared, config, tmp_path / str(i), seconds=None, pool=pool) for i in range(2)]
    boards = [[(e["family"], e["epochs"], e["val_nll"]) for e in r.leaderboard] for r in runs]
    assert boards[0] == boards[1]
    board = runs[0].leaderboard
    assert [e["result"] for e in board] == ["chosen", "out after round 2", "out after round 1"]
    assert runs[0].config.family == board[0]["family"]
    # Each round halves the field; the winner trains on to the epoch cap.
    assert board[0]["epochs"] == 8 and board[1]["epochs"] < 8 and board[2]["epochs"] < 8
    for key in ("family", "layers", "hidden", "epochs", "val_nll", "seconds", "parameters"):
        assert key in board[0]


def test_the_gaussian_races_and_wins_on_gaussian_rows(tmp_path: Path) -> None:
    """On a small correlated Gaussian table the full-covariance Gaussian is the right model: it
    reaches the lowest validation NLL of the race, against flows that can only overfit."""
    from flowserve.models.data import prepare_data
    from flowserve.models.selection import Candidate, race

    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(5, 5))
    prepared = prepare_data(rng.normal(size=(240, 5)) @ mixing, seed=0)
    pool = [Candidate("gaussian", 0, 0), Candidate("maf", 2, 16), Candidate("realnvp", 2, 16)]
    config = resolve_config({}, {"epochs": 40})
    result = race(prepared, config, tmp_path, seconds=None, pool=pool)
    board = result.leaderboard
    assert board[0]["family"] == "gaussian" and board[0]["result"] == "chosen"
    assert (board[0]["layers"], board[0]["hidden"]) == (0, 0)
    assert result.config.family == "gaussian" and result.config.layers is None
    assert board[0]["val_nll"] < min(e["val_nll"] for e in board[1:])


def test_auto_writes_the_leaderboard_into_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowserve.models import selection

    tiny = [selection.Candidate(f, 2, 8) for f in ("maf", "nsf", "nsf_ar", "realnvp")]
    monkeypatch.setattr(selection, "candidates", lambda rows, dim: tiny)
    result = train(moons(200), name="m", out=tmp_path, epochs=4, progress=False, torchscript=False)
    assert result is not None
    board = result.config["selection"]["leaderboard"]
    assert len(board) >= 4 and board[0]["result"] == "chosen"
    assert result.manifest.family == board[0]["family"]
    assert result.manifest.training_config["selection"]["leaderboard"] == board


def test_an_explicit_family_skips_the_race(tmp_path: Path) -> None:
    result = train(moons(), family="realnvp", name="m", out=tmp_path, epochs=2, **SMALL)
    assert result is not None and "selection" not in result.config
    assert result.manifest.family == "realnvp"


def test_auto_with_an_option_no_candidate_takes_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no candidate family of 'auto' accepts"):
        train(moons(), name="m", out=tmp_path, epochs=1, params={"nonsense": 1}, progress=False)


# --- calibration scores --------------------------------------------------------------------------


def test_small_tables_cross_fit_every_training_row(tmp_path: Path) -> None:
    result = train(moons(300), family="maf", name="m", out=tmp_path, epochs=3, **SMALL)
    cal = result.manifest.calibration
    assert cal.method == "cross-fit"
    rows = result.metrics["train_rows"] + result.metrics["test_rows"]
    assert cal.n_rows == rows  # out-of-fold train rows + the test split
    assert cal.min_fpr == pytest.approx(1 / (rows + 1))


def test_fold_models_train_with_the_served_models_batch_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The served recipe: a fold holds fewer rows, but its batch is the served model's, not one
    # sized for the fold (which also made its epochs dearer than the cost probe predicted).
    from flowserve.models import calibrate

    batches: list[tuple[int, int]] = []
    real = calibrate._fold_model

    def spy(flow, rows, config, lrs, seed, batch):  # type: ignore[no-untyped-def]
        batches.append((len(rows), batch))
        return real(flow, rows, config, lrs, seed, batch=batch)

    monkeypatch.setattr(calibrate, "_fold_model", spy)
    result = train(moons(1200), family="maf", name="m", out=tmp_path, epochs=2, **SMALL)
    assert result.manifest.calibration.method == "cross-fit"
    served = result.config["batch_size"] or resolve_config({}, {"family": "maf"}).batch_size_for(
        result.metrics["train_rows"]
    )
    folds = [b for rows, b in batches if rows < result.metrics["train_rows"]]
    assert folds and set(folds) == {served}


def test_split_calibration_uses_the_test_split(tmp_path: Path) -> None:
    result = train(
        moons(300), family="maf", name="m", out=tmp_path, epochs=3, calibration="split", **SMALL
    )
    cal = result.manifest.calibration
    assert cal.method == "split" and cal.n_rows == result.metrics["test_rows"]


# --- the estimator -------------------------------------------------------------------------------


def _fitted(**kw: object) -> FlowDensityEstimator:
    x = moons(400).to_numpy()
    est = FlowDensityEstimator("maf", layers=2, hidden=16, epochs=4, seed=0, **kw)  # type: ignore[arg-type]
    return est.fit(x)


@pytest.mark.parametrize("calibration", ["cross-fit", "split"])
def test_estimator_anomaly_api_is_consistent(calibration: str) -> None:
    est = _fitted(fpr=0.1, calibration=calibration)
    x = moons(200, seed=5).to_numpy()
    far = x + np.array([50.0, -50.0])  # out of distribution
    rows = np.concatenate([x, far])
    scores = est.decision_function(rows)
    np.testing.assert_allclose(scores, -est.score_samples(rows))
    flags = est.predict(rows)
    assert set(np.unique(flags)) <= {0, 1}
    if calibration == "split":  # one model: the flag is the threshold test
        np.testing.assert_array_equal(flags, (scores > est.threshold_).astype(int))
    else:  # cross-conformal: the fold models vote too; the threshold is indicative
        assert est.calibration_.folds >= 2
        assert np.mean(flags == (scores > est.threshold_)) >= 0.9
    assert flags[len(x) :].all()  # every far row is flagged
    p = est.p_values(rows)
    assert np.all((p > 0) & (p <= 1)) and np.all(p[len(x) :] == p.min())
    np.testing.assert_array_equal(est.predict(rows, fpr=0.5), (p <= 0.5).astype(int))
    with pytest.raises(ValueError, match="smallest attainable"):
        est.predict(rows, fpr=1e-6)
    nan_row = np.array([[np.nan, 0.0]])
    assert est.score_samples(nan_row)[0] == -np.inf and est.predict(nan_row)[0] == 1


def test_estimator_takes_validation_data_and_returns_self() -> None:
    x = moons(300).to_numpy()
    val = moons(50, seed=9).to_numpy()
    est = FlowDensityEstimator("maf", layers=2, hidden=8, epochs=2)
    assert est.fit(x, validation_data=val) is est
    np.testing.assert_allclose(est.prepared_.val, val.astype(np.float32))
    assert len(est.prepared_.train) + len(est.prepared_.test) == len(x)


def test_estimator_params_follow_scikit_learn() -> None:
    from sklearn.base import clone

    est = FlowDensityEstimator("nsf", time_budget=5.0, n_threads=1, fpr=0.01)
    params = est.get_params()
    assert params["family"] == "nsf" and params["time_budget"] == 5.0 and params["fpr"] == 0.01
    copy = clone(est)
    assert copy.get_params() == params and copy is not est
    with pytest.raises(ValueError, match="unknown parameter"):
        est.set_params(bogus=1)
    with pytest.raises(NotFittedError):
        est.predict(np.zeros((1, 2)))
    assert "nsf" in repr(est)


def test_estimator_passes_scikit_learns_checks_that_apply() -> None:
    from sklearn.utils.estimator_checks import check_estimator

    # Checks that cannot apply to a density model trained with splits: fitting on a handful
    # of rows (flows need >= 20 for train, validation and calibration splits) and checks whose
    # generated data has a single feature repeated.
    small = {
        "check_fit2d_1sample": "needs >= 20 rows",
        "check_fit2d_1feature": "needs >= 20 rows",
        "check_fit2d_predict1d": "needs >= 20 rows",
        "check_estimators_dtypes": "needs >= 20 rows",
        "check_fit_score_takes_y": "needs >= 20 rows",
        "check_dtype_object": "needs >= 20 rows",
        "check_estimators_empty_data_messages": "message wording",
        "check_methods_sample_order_invariance": "needs >= 20 rows",
        "check_methods_subset_invariance": "needs >= 20 rows",
        "check_outliers_train": "PyOD semantics: predict is 0/1, not -1/1",
        "check_outliers_fit_predict": "PyOD semantics: predict is 0/1, not -1/1",
        "check_estimators_nan_inf": "NaN rows are dropped with a warning (nan_policy='drop')",
        "check_n_features_in_after_fitting": "message wording",
        "check_fit_check_is_fitted": "needs >= 20 rows",
        "check_readonly_memmap_input": "needs >= 20 rows",
        "check_estimators_pickle": "needs >= 20 rows",
        "check_f_contiguous_array_estimator": "needs >= 20 rows",
        "check_estimators_overwrite_params": "needs >= 20 rows",
        "check_fit_idempotent": "needs >= 20 rows",
        "check_positive_only_tag_during_fit": "needs >= 20 rows",
        "check_estimators_fit_returns_self": "needs >= 20 rows",
        "check_pipeline_consistency": "needs >= 20 rows",
        "check_dict_unchanged": "needs >= 20 rows",
        "check_dont_overwrite_parameters": "needs >= 20 rows",
        "check_fit2d_predict1d ": "needs >= 20 rows",
        "check_requires_y_none": "needs >= 20 rows",
        "check_n_features_in": "needs >= 20 rows",
        "check_complex_data": "needs >= 20 rows",
        "check_estimator_sparse_array": "dense only",
        "check_estimator_sparse_matrix": "dense only",
        "check_estimator_sparse_tag": "dense only",
        "check_estimators_unfitted": "message wording",
        "check_classifier_data_not_an_array": "needs >= 20 rows",
    }
    est = FlowDensityEstimator("maf", layers=1, hidden=4, epochs=1)
    results = check_estimator(est, expected_failed_checks=small, on_fail=None)
    ran = [r for r in results if r["status"] == "passed"]
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    assert not failed, failed
    assert {"check_no_attributes_set_in_init", "check_get_params_invariance"} <= {
        r["check_name"] for r in ran
    }


def test_fit_leaves_global_torch_state_as_it_found_it() -> None:
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(3)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    _fitted(n_threads=2 if threads == 1 else 1)  # a count that differs from the current one
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1])
    assert random.getstate() == before[2]
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


# --- the command line --------------------------------------------------------------------------


def test_progress_goes_to_stderr_and_stdout_holds_only_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "d.csv"
    moons(200).to_csv(csv, index=False)
    argv = ["train", str(csv), "--out", str(tmp_path), "--family", "realnvp", "--layers", "2"]
    assert main([*argv, "--hidden", "8", "--epochs", "2", "--no-torchscript"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("wrote ") and out.count("\n") == 1, out
    assert "\r" not in out and "\x1b" not in out
    assert "Epoch" in err  # the progress bar


def test_a_missing_file_fails_before_torch_is_imported(tmp_path: Path) -> None:
    code = (
        "import sys; from flowserve.cli import main; "
        f"rc = main(['train', {str(tmp_path / 'nope.csv')!r}]); "
        "print(rc, 'torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr
    assert "nope.csv: no such file" in proc.stderr


def test_an_id_like_column_is_flagged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = moons(200)
    frame.insert(0, "customer_id", np.arange(200))
    csv = tmp_path / "ids.csv"
    frame.to_csv(csv, index=False)
    argv = ["train", str(csv), "--out", str(tmp_path), "--family", "realnvp", "--layers", "2"]
    assert main([*argv, "--hidden", "8", "--epochs", "1", "--no-torchscript", "--no-progress"]) == 0
    assert "'customer_id' look like row identifiers" in capsys.readouterr().err
    assert main([*argv, "--epochs", "1", "--no-progress", "--id-column", "customer_id"]) == 0
    assert "row identifiers" not in capsys.readouterr().err


# --- bounded spline conditioners -----------------------------------------------------------------


def test_spline_coupling_round_trips_far_inputs_under_random_weights() -> None:
    # Unbounded conditioner inputs (1e4) drove the splines into saturation: the float32 round
    # trip was off by ~10 here before the conditioner inputs were soft-clamped.
    torch.manual_seed(0)
    flow = build_nsf(6, layers=4, hidden=16, bins=8)
    randomize(flow, seed=1, scale=0.1)
    x = torch.randn(256, 6) * torch.tensor([1.0, 10.0, 100.0, 1.0, 1e3, 1e4])
    with torch.no_grad():
        z = flow.encode(x)
        back = flow.decode(z)
    assert torch.isfinite(z).all()
    np.testing.assert_allclose(back.numpy(), x.numpy(), rtol=1e-4, atol=1e-3)

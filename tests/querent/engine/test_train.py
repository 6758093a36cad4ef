"""The trainer on a real (small, synthetic) cohort: resume, determinism, checkpoints, errors."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from extractors.errors import CohortError, SettingsError
from querent.data.cohort import CohortSettings, read_cohort
from querent.engine import checkpoint
from querent.engine.evaluate import evaluate_fold, load_model, predict_slides
from querent.engine.experiment import match_features
from querent.engine.runs import model_run
from querent.engine.train import TrainingError, train_fold
from tests.helpers import TRAIN_RUNS, synthetic_fold, train_synthetic


@pytest.mark.parametrize("arch", list(TRAIN_RUNS))
def test_training_is_deterministic_and_loads_weights_only(synthetic_cohort, tmp_path, arch):
    first = train_synthetic(synthetic_cohort, tmp_path / "a", arch)
    second = train_synthetic(synthetic_cohort, tmp_path / "b", arch)
    assert first.read_bytes() == second.read_bytes()
    ckpt = torch.load(first, weights_only=True)
    assert ckpt["run"]["arch"] == arch and ckpt["task"]["classes"] == ["neg", "pos"]
    assert ckpt["encoder"] == "synthetic" and ckpt["in_dim"] == 16 and ckpt["fold"] == 0
    assert ckpt["querent_version"] == ckpt["provenance"]["packages"]["querent"]
    record = ckpt["provenance"]
    assert record["packages"]["torch"] == torch.__version__.split("+")[0]
    sheet = Path(synthetic_cohort[0])
    assert record["cohort_sheet_sha256"] == hashlib.sha256(sheet.read_bytes()).hexdigest()
    history = pd.read_csv(tmp_path / "a" / "history.csv")
    assert list(history.columns) == [
        "epoch", "train_loss", "val_loss", "val_auc", "lr", "seconds"
    ]  # fmt: skip
    assert len(history) == 4 and np.isfinite(history["train_loss"]).all()
    assert not (tmp_path / "a" / "resume.pt").exists()
    model, task, _ = load_model(first)
    assert task.classes == ("neg", "pos") and model.head.out_features == 2


def test_a_checkpoint_loads_as_trained_when_a_default_changes(synthetic_cohort, tmp_path):
    path = train_synthetic(synthetic_cohort, tmp_path / "a", "querent")
    ckpt = torch.load(path, weights_only=True)
    settings = ckpt["model_arguments"]
    assert settings["top_k"] == 3 and settings["region_size"] == 2  # given
    assert settings["selection"] == "region" and "in_dim" not in settings  # defaults
    model, _, _ = load_model(path)
    assert model.blocks[0].attention.distance_slope is not None  # trained with today's default
    # a checkpoint from before they were recorded: trained when Querent was global, unbiased
    legacy = {k: v for k, v in ckpt.items() if k != "model_arguments"}
    legacy["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if "distance" not in k}
    checkpoint.save(legacy, tmp_path / "legacy.pt")
    model, _, _ = load_model(tmp_path / "legacy.pt")
    layer = model.blocks[0].attention
    assert layer.distance_slope is None and not layer.local


def test_a_different_seed_trains_a_different_model(synthetic_cohort, tmp_path):
    first = train_synthetic(synthetic_cohort, tmp_path / "a")
    other = train_synthetic(synthetic_cohort, tmp_path / "b", seeds=[1])
    assert first.read_bytes() != other.read_bytes()


# tests/ is put first on the path and helpers imported from it by name: a test extra
# (torchstain) installs a top-level ``tests`` package that would shadow ours.
_KILLABLE = """
import sys
from pathlib import Path
sys.path.insert(0, str(Path.cwd() / "tests"))
from helpers import train_synthetic
train_synthetic((Path(sys.argv[1]), Path(sys.argv[2])), sys.argv[3], sys.argv[4], epochs=8)
"""


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(TRAIN_RUNS))
def test_resume_after_sigkill_gives_the_same_model(synthetic_cohort, tmp_path, arch):
    uninterrupted = train_synthetic(synthetic_cohort, tmp_path / "whole", arch, epochs=8)
    out = tmp_path / "killed"
    sheet, folder = synthetic_cohort
    command = [sys.executable, "-c", _KILLABLE, str(sheet), str(folder), str(out), arch]
    root = Path(__file__).resolve().parents[3]
    process = subprocess.Popen(command, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if (out / "resume.pt").exists() and len(pd.read_csv(out / "history.csv")) >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "model.pt").exists() and (out / "resume.pt").exists()
    done = len(pd.read_csv(out / "history.csv"))
    assert 3 <= done < 8
    resumed = train_synthetic(synthetic_cohort, out, arch, epochs=8)
    assert resumed.read_bytes() == uninterrupted.read_bytes()
    assert (
        pd.read_csv(out / "history.csv")
        .drop(columns="seconds")
        .equals(pd.read_csv(tmp_path / "whole" / "history.csv").drop(columns="seconds"))
    )


def test_a_run_killed_after_its_last_epoch_writes_every_output(
    synthetic_cohort, tmp_path, monkeypatch
):
    whole = train_synthetic(synthetic_cohort, tmp_path / "whole", epochs=3)
    save = checkpoint.save

    def killed_at_the_model(state, path):
        if Path(path).name == "model.pt":
            raise SystemExit("killed")
        save(state, path)

    monkeypatch.setattr(checkpoint, "save", killed_at_the_model)
    with pytest.raises(SystemExit):
        train_synthetic(synthetic_cohort, tmp_path / "killed", epochs=3)
    monkeypatch.undo()
    out = tmp_path / "killed"
    assert (out / "resume.pt").exists()
    (out / "history.csv").unlink()  # Snakemake removes a rerun job's outputs first
    resumed = train_synthetic(synthetic_cohort, out, epochs=3)
    assert resumed.read_bytes() == whole.read_bytes()
    expected = pd.read_csv(tmp_path / "whole" / "history.csv").drop(columns="seconds")
    assert pd.read_csv(out / "history.csv").drop(columns="seconds").equals(expected)


def test_a_resume_file_of_other_settings_is_not_continued(synthetic_cohort, tmp_path, caplog):
    train_synthetic(synthetic_cohort, tmp_path / "a", epochs=2)
    (tmp_path / "a" / "model.pt").unlink()
    # leave a resume file of another run behind: its signature differs
    stale = train_synthetic(synthetic_cohort, tmp_path / "b", epochs=2)
    torch.save({"signature": {"other": 1}, "epoch": 5}, tmp_path / "a" / "resume.pt")
    again = train_synthetic(synthetic_cohort, tmp_path / "a", epochs=2)
    assert again.read_bytes() == stale.read_bytes()
    assert "starting afresh" in caplog.text


def test_evaluation_and_deployment_agree(synthetic_cohort, tmp_path):
    cohort, files, _, _, evaluate = synthetic_fold(synthetic_cohort)
    model = train_synthetic(synthetic_cohort, tmp_path / "m", "querent")
    metrics = evaluate_fold(model, cohort, files, evaluate, tmp_path / "eval")
    assert set(metrics["level"]["case"]) == {"auc", "balanced_accuracy", "f1_macro", "accuracy"}
    table = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert list(table.columns) == ["slide_id", "case_id", "truth", "prob_neg", "prob_pos"]
    assert sorted(table["slide_id"]) == sorted(evaluate)
    with h5py.File(tmp_path / "eval" / "attention.h5") as h5:
        group = h5[evaluate[0]]
        n = h5py.File(files[evaluate[0]])["features"].shape[0]
        assert group["attention"].shape == (n,)
        assert group["selected"].shape[:2] == (2, n) and group["region_of_patch"].shape == (n,)
        assert group["attention"][:].sum() == pytest.approx(1.0, abs=1e-5)

    predict_slides([model], {s: files[s] for s in evaluate}, tmp_path / "deploy")
    deployed = pd.read_csv(tmp_path / "deploy" / "predictions.csv").set_index("slide_id")
    expected = table.set_index("slide_id").loc[deployed.index]
    np.testing.assert_allclose(
        deployed[["prob_neg", "prob_pos"]], expected[["prob_neg", "prob_pos"]]
    )


def test_survival_training_with_discrete_and_cox_losses(synthetic_cohort, tmp_path):
    cohort, files, _, _, evaluate = synthetic_fold(synthetic_cohort, "survival")
    for loss, batch in (("discrete", 1), ("cox", 8)):
        model = train_synthetic(
            synthetic_cohort, tmp_path / loss, task="survival", survival_loss=loss, batch_size=batch
        )
        metrics = evaluate_fold(model, cohort, files, evaluate, tmp_path / f"eval_{loss}")
        assert set(metrics["level"]["case"]) == {"c_index"}
        columns = pd.read_csv(tmp_path / f"eval_{loss}" / "predictions.csv").columns
        assert {"time", "event", "risk"} <= set(columns)
    with pytest.raises(SettingsError, match="at least 8 slides"):
        train_synthetic(synthetic_cohort, tmp_path / "c", task="survival", survival_loss="cox")


def _copy_features(folder, out, change=None):
    out.mkdir()
    for path in folder.glob("*.h5"):
        (out / path.name).write_bytes(path.read_bytes())
    if change:
        with h5py.File(out / sorted(p.name for p in out.iterdir())[0], "r+") as h5:
            change(h5)
    return out


def test_bad_feature_files_stop_before_training(synthetic_cohort, tmp_path):
    sheet, folder = synthetic_cohort
    cohort = read_cohort(sheet, CohortSettings())
    first = sorted(cohort.slide_ids)[0]

    def with_nan(h5):
        h5["features"][0, 0] = np.nan

    def wider(h5):
        del h5["features"]
        h5.create_dataset("features", data=np.zeros((5, 17), np.float32))

    def other_encoder(h5):
        h5["features"].attrs["encoder"] = "uni_v2"

    run = model_run("abmil", TRAIN_RUNS["abmil"], {"epochs": 1})
    for change, message in ((with_nan, "NaN"), (wider, "different widths"),
                            (other_encoder, "different encoders")):  # fmt: skip
        files_dir = _copy_features(folder, tmp_path / change.__name__, change)
        _, files = match_features(cohort, files_dir, "error")
        with pytest.raises(CohortError, match=message) as err:
            train_fold(
                run, cohort, files, cohort.slide_ids, [], tmp_path / "m", encoder="x", fold=0
            )
        assert first in str(err.value)
        assert not (tmp_path / "m").exists()


def test_missing_and_extra_feature_files_are_named(synthetic_cohort, tmp_path):
    sheet, folder = synthetic_cohort
    cohort = read_cohort(sheet, CohortSettings())
    files_dir = _copy_features(folder, tmp_path / "f")
    missing = sorted(cohort.slide_ids)[3]
    (files_dir / f"{missing}.h5").unlink()
    (files_dir / "stray_slide.h5").write_bytes((folder / f"{cohort.slide_ids[0]}.h5").read_bytes())
    with pytest.raises(CohortError) as err:
        match_features(cohort, files_dir, "error")
    assert missing in str(err.value) and "stray_slide" in str(err.value)
    assert "on_missing: skip" in str(err.value)
    kept, files = match_features(cohort, files_dir, "skip")
    assert missing not in kept.slide_ids and "stray_slide" not in files


def test_a_diverging_loss_names_the_epoch_and_slide(synthetic_cohort, tmp_path):
    cohort, files, train, _, _ = synthetic_fold(synthetic_cohort)
    run = model_run(
        "abmil", TRAIN_RUNS["abmil"], {"epochs": 1, "lr": 1e36, "scheduler": "constant"}
    )
    with pytest.raises(TrainingError, match=r"epoch 0: the loss is (nan|inf) on slides syn_"):
        train_fold(run, cohort, files, train, [], tmp_path / "m", encoder="x", fold=0)
    assert not (tmp_path / "m" / "model.pt").exists()


def _one_slide_copy(folder, out, change):
    """A copy of the synthetic cohort's first feature file, changed by ``change(h5)``."""
    slide = sorted(p.stem for p in folder.glob("*.h5"))[0]
    out.mkdir()
    (out / f"{slide}.h5").write_bytes((folder / f"{slide}.h5").read_bytes())
    with h5py.File(out / f"{slide}.h5", "r+") as h5:
        change(h5)
    return {slide: out / f"{slide}.h5"}


def _relabelled(h5):
    h5["features"].attrs["encoder"] = "uni_v2"


def _unlabelled(h5):
    del h5["features"].attrs["encoder"]


def _wider(h5):
    del h5["features"]
    h5.create_dataset("features", data=np.zeros((5, 17), np.float32)).attrs["encoder"] = "x"


def test_a_model_of_imported_features_predicts_on_the_projects_own(synthetic_cohort, tmp_path):
    # TRIDENT's and CLAM's feature files carry no encoder attribute: the configured one counts
    cohort, files, train, val, evaluate = synthetic_fold(synthetic_cohort)
    imported = _copy_features(synthetic_cohort[1], tmp_path / "imported")
    for path in imported.glob("*.h5"):
        with h5py.File(path, "r+") as h5:
            _unlabelled(h5)
    run = model_run("abmil", TRAIN_RUNS["abmil"], {"epochs": 1})
    imported_files = {s: imported / f"{s}.h5" for s in files}
    model = train_fold(
        run, cohort, imported_files, train, val, tmp_path / "m", encoder="synthetic", fold=0
    )
    ckpt = checkpoint.load(model)
    assert ckpt["features_encoder"] == "synthetic" and ckpt["in_dim"] == 16
    predict_slides([model], {s: files[s] for s in evaluate}, tmp_path / "deploy")
    assert len(pd.read_csv(tmp_path / "deploy" / "predictions.csv")) == len(evaluate)


def test_deployment_refuses_another_encoder_unless_allowed(synthetic_cohort, tmp_path):
    from querent.cli import main

    model = train_synthetic(synthetic_cohort, tmp_path / "m", epochs=1)
    files = _one_slide_copy(synthetic_cohort[1], tmp_path / "uni", _relabelled)
    with pytest.raises(CohortError) as err:
        predict_slides([model], files, tmp_path / "out")
    message = " ".join(str(err.value).split())
    for part in (*map(str, files.values()), "'uni_v2'", "'synthetic'", str(model),
                 "extract these slides with 'synthetic'", "--allow-encoder-mismatch"):  # fmt: skip
        assert part in message
    assert not (tmp_path / "out").exists()
    out = tmp_path / "allowed"
    argv = ["predict", str(model), "--features", str(tmp_path / "uni"), "-o", str(out)]
    assert main([*argv, "--allow-encoder-mismatch"]) == 0
    assert list(pd.read_csv(out / "predictions.csv")["slide_id"]) == list(files)


def test_a_width_mismatch_is_refused_even_when_encoders_may_differ(synthetic_cohort, tmp_path):
    model = train_synthetic(synthetic_cohort, tmp_path / "m", epochs=1)
    files = _one_slide_copy(synthetic_cohort[1], tmp_path / "wide", _wider)
    with pytest.raises(CohortError) as err:
        predict_slides([model], files, tmp_path / "out", allow_encoder_mismatch=True)
    message = " ".join(str(err.value).split())
    for part in (*map(str, files.values()), "17 wide", "16-wide", "'synthetic'", str(model)):
        assert part in message
    assert not (tmp_path / "out").exists()


def test_files_without_an_encoder_and_old_unknown_models_are_checked_by_width(
    synthetic_cohort, tmp_path
):
    model = train_synthetic(synthetic_cohort, tmp_path / "m", epochs=1)
    unlabelled = _one_slide_copy(synthetic_cohort[1], tmp_path / "plain", _unlabelled)
    predict_slides([model], unlabelled, tmp_path / "plain_out")
    assert (tmp_path / "plain_out" / "predictions.csv").exists()

    old = tmp_path / "old.pt"  # as saved before the configured encoder was recorded
    checkpoint.save({**checkpoint.load(model), "features_encoder": "unknown"}, old)
    relabelled = _one_slide_copy(synthetic_cohort[1], tmp_path / "uni", _relabelled)
    predict_slides([old], relabelled, tmp_path / "old_out")
    assert (tmp_path / "old_out" / "predictions.csv").exists()
    wider = _one_slide_copy(synthetic_cohort[1], tmp_path / "wide", _wider)
    with pytest.raises(CohortError, match="17 wide"):
        predict_slides([old], wider, tmp_path / "old_wide")

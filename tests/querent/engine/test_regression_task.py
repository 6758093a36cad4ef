"""The regression task: its loss, its standardised target; a fold trained, evaluated, deployed."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from extractors.errors import SettingsError
from querent.data.cohort import CohortSettings, cohort_from_table, read_cohort
from querent.data.splits import SplitSettings, fold_slides, make_splits
from querent.engine.evaluate import evaluate_fold, load_model, predict_slides
from querent.engine.experiment import match_features
from querent.engine.losses import regression_loss
from querent.engine.runs import TrainSettings, model_run
from querent.engine.tasks import RegressionTask, task_from_state
from querent.engine.train import train_fold

SYNTHETIC = CohortSettings(task="regression", target="signal_share")


def test_regression_loss_by_hand():
    predicted, target = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, -3.0])
    assert regression_loss(predicted, target).item() == pytest.approx((0 + 1 + 9) / 3)
    # Huber, delta 1: e^2 / 2 within, |e| - 1/2 beyond
    huber = regression_loss(predicted, target, kind="huber").item()
    assert huber == pytest.approx((0 + 0.5 + 2.5) / 3)
    with pytest.raises(ValueError, match="mse, huber|'mse', 'huber'"):
        regression_loss(predicted, target, kind="l1")
    with pytest.raises(ValueError, match=r"\(b,\)"):
        regression_loss(predicted[:, None], target)


def _cohort(values):
    table = pd.DataFrame(
        {
            "slide_id": [f"s{i}" for i in range(len(values))],
            "case_id": [f"c{i}" for i in range(len(values))],
            "value": [str(v) for v in values],
        }
    )
    settings = CohortSettings(task="regression", target="value")
    return cohort_from_table(table, settings, Path("sheet.csv"))


def test_regression_task_standardises_its_target_and_round_trips(tmp_path):
    cohort = _cohort([2.0, 4.0, 9.0, 5.0])
    task = TrainSettings(regression_loss="huber").task(cohort)
    assert isinstance(task, RegressionTask) and task.n_outputs == 1 and task.main_metric == "r2"
    with pytest.raises(RuntimeError, match="fit"):
        task.prediction_columns(torch.zeros(2, 1))
    task.fit(cohort.subset(["s0", "s1", "s2"]))
    assert (task.mean, task.scale) == pytest.approx((5.0, np.std([2.0, 4.0, 9.0])))
    targets = task.targets(cohort, ["s3", "s0"])
    assert targets["target"].tolist() == [5.0, 2.0]
    standardised = ((torch.tensor([5.0, 2.0]) - task.mean) / task.scale)[:, None]
    assert task.loss(standardised, targets).item() == pytest.approx(0.0, abs=1e-7)
    assert task.loss(standardised + 3.0, targets).item() == pytest.approx(2.5)  # Huber, linear
    np.testing.assert_allclose(task.prediction_columns(standardised)["prediction"], [5.0, 2.0])
    assert task.truth_columns(cohort, ["s3"]) == {"target": [5.0]}
    torch.save({"task": task.state()}, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)["task"]
    again = task_from_state(state)
    assert again.state() == task.state() and again.loss_kind == "huber"
    constant = RegressionTask()
    constant.fit(cohort.subset(["s3"]))
    assert constant.scale == 1.0  # one training value: centred only
    with pytest.raises(SettingsError, match="regression_loss"):
        TrainSettings(regression_loss="l1")
    with pytest.raises(SettingsError, match="regression_loss"):
        RegressionTask(loss="l1")


@pytest.mark.slow
def test_a_regression_fold_trains_evaluates_and_deploys(synthetic_cohort, tmp_path):
    sheet, folder = synthetic_cohort
    cohort, files = match_features(read_cohort(sheet, SYNTHETIC), folder, "error")
    splits = make_splits(cohort, SplitSettings(folds=2))
    train, val, held = fold_slides(splits, cohort, 0, val_fraction=0.2, seed=0)
    run = model_run(
        "abmil",
        {"arch": "abmil", "dim": 16, "attention_dim": 8},
        {"epochs": 3, "max_patches": 50, "lr": 1e-3, "regression_loss": "huber"},
    )
    model_path = train_fold(
        run, cohort, files, train, val, tmp_path / "model", encoder="syn", fold=0
    )
    history = pd.read_csv(tmp_path / "model" / "history.csv")
    assert "val_r2" in history.columns and len(history) == 3
    _, task, ckpt = load_model(model_path)
    values = cohort.targets(train)
    assert ckpt["task"]["name"] == "regression" and ckpt["task"]["loss"] == "huber"
    assert (task.mean, task.scale) == pytest.approx((values.mean(), values.std()))

    evaluate_fold(model_path, cohort, files, held, tmp_path / "eval")
    predictions = pd.read_csv(tmp_path / "eval" / "predictions.csv", dtype={"case_id": str})
    assert list(predictions.columns) == ["slide_id", "case_id", "target", "prediction"]
    np.testing.assert_allclose(predictions["target"], cohort.targets(held), rtol=1e-5)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["task"] == "regression" and list(metrics["level"]["case"]) == [
        "r2", "pearson", "spearman"
    ]  # fmt: skip

    deployed_dir = tmp_path / "deployed"
    predict_slides([model_path], {s: files[s] for s in held}, deployed_dir)
    deployed = pd.read_csv(deployed_dir / "predictions.csv")
    assert list(deployed.columns) == ["slide_id", "case_id", "prediction"]  # no truth
    assert not (deployed_dir / "metrics.json").exists()
    np.testing.assert_allclose(deployed["prediction"], predictions["prediction"], rtol=1e-5)

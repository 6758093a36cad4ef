"""Models that read clinical covariates: they learn what only a covariate carries, and
evaluation, deployment, resuming and planning treat the covariates as training did."""

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from extractors.errors import CohortError, SettingsError
from querent.data.cohort import CohortSettings, read_cohort
from querent.data.splits import SplitSettings, fold_slides, make_splits
from querent.data.synthetic import write_synthetic_cohort
from querent.engine import checkpoint
from querent.engine.evaluate import evaluate_fold, load_model, predict_slides
from querent.engine.experiment import match_features
from querent.engine.runs import model_run
from querent.engine.train import train_fold
from querent.models import create_model
from querent.pipeline.plan import CohortInputs, Findings, Inputs, check_registries, plan_workflow
from querent.schemas import COHORT_SCHEMA
from tests.helpers import default_config

RUN = {"arch": "abmil", "dim": 8, "attention_dim": 4}
TRAINING = {"epochs": 3, "lr": 0.02, "max_patches": 24, "patience": None}
COVARIATES = CohortSettings(covariates=["age", "stage"])
#: What planning reads of the registries besides the models.
REGISTRIES = {"encoders": {}, "mpp_tolerance": 0.1, "min_batch": {"cox": 8}}
MODELS = {"abmil": ["dim"], "querent": ["region_size", "top_k"]}


@pytest.fixture(scope="module")
def covariate_cohort(tmp_path_factory):
    """Features that carry nothing; the label lives in ``age`` alone (a few ages missing)."""
    out = tmp_path_factory.mktemp("covariates")
    sheet = write_synthetic_cohort(out, n_cases=24, n_patches=(20, 30), dim=8, signal=0.0)
    table = pd.read_csv(sheet, dtype=str)
    rng = np.random.default_rng(1)
    case_age = {
        case: "" if i % 7 == 3 else str(round((65 if label == "pos" else 45) + rng.normal(), 1))
        for i, (case, label) in enumerate(zip(table["case_id"], table["label"], strict=True))
    }
    stages = {case: ("I", "II", "III")[int(rng.integers(3))] for case in case_age}
    table["age"] = table["case_id"].map(case_age)
    table["stage"] = table["case_id"].map(stages)
    table.to_csv(sheet, index=False)
    cohort, files = match_features(read_cohort(sheet, COVARIATES), out / "features", "error")
    splits = make_splits(cohort, SplitSettings(folds=3))
    fold = fold_slides(splits, cohort, 0, val_fraction=0.25, seed=0)
    return sheet, cohort, files, fold


def _train(covariate_cohort, out, *, covariates=True, epochs=TRAINING["epochs"]):
    _, cohort, files, (train, val, _) = covariate_cohort
    run = model_run("abmil", {**RUN, "covariates": covariates}, {**TRAINING, "epochs": epochs})
    return train_fold(run, cohort, files, train, val, out, encoder="synthetic", fold=0)


@pytest.fixture(scope="module")
def trained(covariate_cohort, tmp_path_factory):
    """The same run with and without the covariates: model.pt of each."""
    out = tmp_path_factory.mktemp("runs")
    return {
        name: _train(covariate_cohort, out / name, covariates=name == "with")
        for name in ("with", "without")
    }


def test_only_the_run_with_covariates_learns_a_target_they_alone_carry(
    covariate_cohort, trained, tmp_path
):
    _, cohort, files, (_, _, held_out) = covariate_cohort
    auc = {
        name: evaluate_fold(path, cohort, files, held_out, tmp_path / name)["level"]["case"]["auc"]
        for name, path in trained.items()
    }
    assert auc["with"] > 0.9 and auc["without"] < 0.7, auc  # one held-out age is missing
    model, _, ckpt = load_model(trained["with"])
    assert model.covariate_dim == 5 and model.head.in_features == 8 + 5
    names = [entry["name"] for entry in ckpt["covariates"]["covariates"]]
    assert names == ["age", "stage"]
    model, _, ckpt = load_model(trained["without"])
    assert model.covariate_dim == 0 and ckpt["covariates"] is None and not ckpt["run"]["covariates"]


def test_evaluation_reproduces_the_training_model(covariate_cohort, trained, tmp_path):
    """The validation slides evaluated from model.pt score the loss and AUC of its epoch."""
    _, cohort, files, (_, val, _) = covariate_cohort
    metrics = evaluate_fold(trained["with"], cohort, files, val, tmp_path)
    ckpt = torch.load(trained["with"], weights_only=True)
    assert metrics["level"]["case"]["auc"] == pytest.approx(ckpt["metric"])
    table = pd.read_csv(tmp_path / "predictions.csv")
    classes = table["truth"].map({"neg": 0, "pos": 1}).to_numpy()
    truth = table[["prob_neg", "prob_pos"]].to_numpy()[np.arange(len(table)), classes]
    history = pd.read_csv(trained["with"].parent / "history.csv")
    loss = history.loc[ckpt["epoch"], "val_loss"]
    assert -np.log(truth).mean() == pytest.approx(loss, rel=1e-4)


def test_deployment_needs_the_covariates_and_agrees_with_evaluation(
    covariate_cohort, trained, tmp_path
):
    _, cohort, files, (_, _, held_out) = covariate_cohort
    new = {s: files[s] for s in held_out}
    with pytest.raises(
        CohortError, match=r"reads the clinical covariates age, stage.*--covariates"
    ):
        predict_slides([trained["with"]], new, tmp_path / "none")
    sheet = cohort.table[["slide_id", "age", "stage"]]
    predict_slides([trained["with"]], new, tmp_path / "deploy", covariates=sheet)
    predict_slides([trained["without"]], new, tmp_path / "plain")  # needs no values
    evaluate_fold(trained["with"], cohort, files, held_out, tmp_path / "eval")
    deployed = pd.read_csv(tmp_path / "deploy" / "predictions.csv").set_index("slide_id")
    evaluated = pd.read_csv(tmp_path / "eval" / "predictions.csv").set_index("slide_id")
    columns = ["prob_neg", "prob_pos"]
    np.testing.assert_allclose(deployed[columns], evaluated.loc[deployed.index, columns])


def test_a_resume_file_without_the_covariates_is_not_continued(
    covariate_cohort, tmp_path, monkeypatch, caplog
):
    save = checkpoint.save

    def killed_at_the_model(state, path):
        if path.name == "model.pt":
            raise SystemExit("killed")
        save(state, path)

    monkeypatch.setattr(checkpoint, "save", killed_at_the_model)
    with pytest.raises(SystemExit):
        _train(covariate_cohort, tmp_path, covariates=False, epochs=1)
    monkeypatch.undo()
    assert (tmp_path / "resume.pt").exists()
    _train(covariate_cohort, tmp_path, epochs=1)
    assert "starting afresh" in caplog.text
    assert load_model(tmp_path / "model.pt")[0].covariate_dim == 5


def test_the_head_reads_the_covariates_beside_the_embedding():
    model = create_model("mean_pool", in_dim=4, n_outputs=2, dim=6, covariate_dim=3)
    features, cells = torch.randn(5, 4), torch.zeros(5, 2, dtype=torch.long)
    cells[:, 0] = torch.arange(5)
    covariates = torch.tensor([1.0, 0.0, -2.0])
    out = model(features, cells, covariates=covariates)
    expected = model.head(torch.cat([out.embedding, covariates]))
    torch.testing.assert_close(out.logits, expected)
    with pytest.raises(ValueError, match="reads 3 covariate values, got none"):
        model(features, cells)
    with pytest.raises(ValueError, match=r"must be \(3,\)"):
        model(features, cells, covariates=torch.zeros(2))


def test_planning_refuses_a_covariate_the_sheet_lacks(tmp_path, covariate_cohort):
    sheet, _, files, _ = covariate_cohort
    where = CohortInputs(
        "resources/demo/cohort.csv",
        "results/features/{encoder}",
        yaml.safe_load(COHORT_SCHEMA.read_text()),
    )

    runs = {"abmil": {"arch": "abmil"}, "abmil_nocov": {"arch": "abmil", "covariates": False}}
    own = {
        "demo": {"enabled": "auto"},
        "features": {"dir": str(next(iter(files.values())).parent), "encoder": "synthetic"},
        "splits": {"folds": 3},
    }

    def problems(sections, **cohort):
        config = default_config(**sections, cohort=cohort, models=runs)
        findings = Findings()
        plan_workflow(
            config,
            demo_slides="resources/demo/slides/{slide}.svs",
            where=where,
            mpp_cache=tmp_path / "slide_mpp.json",
            findings=findings,
        )
        return findings.problems

    assert problems(own, sheet=str(sheet), covariates=["age", "stage"]) == []
    (message,) = problems(own, sheet=str(sheet), covariates=["age", "grade"])
    assert str(sheet) in message and "column(s) 'grade' not in the sheet" in message
    assert "Fix: add the columns" in message and "or remove them from cohort.covariates" in message
    (message,) = problems({}, covariates=["age"])  # the demo's sheet has no age
    assert "resources/demo/cohort.csv" in message and "'age' not in the sheet" in message
    with pytest.raises(SettingsError, match="models.abmil.covariates must be true or false"):
        model_run("abmil", {"arch": "abmil", "covariates": "yes"}, {})
    findings, registries = Findings(), {"models": MODELS, "run_problems": {}}
    inputs = Inputs(own_features=True, own_slides=False, demo=False)
    check_registries(default_config(models=runs), inputs, [], registries | REGISTRIES, findings)
    assert findings.problems == [] and findings.notes == [
        "models.abmil_nocov.covariates: false changes nothing while cohort.covariates is empty."
    ]

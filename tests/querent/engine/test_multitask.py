"""Several label columns on one model: the sheet, the task, training, metrics and the summary."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from extractors.errors import CohortError, SettingsError
from extractors.io import write_features
from querent.data.cohort import CohortSettings, read_cohort
from querent.data.splits import SplitSettings, fold_slides, make_splits
from querent.engine.aggregate import aggregate, read_predictions, summarize_run
from querent.engine.evaluate import evaluate_fold, predict_slides
from querent.engine.experiment import match_features
from querent.engine.metrics import case_level, compute_metrics, fold_metrics
from querent.engine.multitask import MultiLabelTask
from querent.engine.outputs import write_predictions
from querent.engine.runs import TrainSettings, model_run
from querent.engine.target_tables import target_table
from querent.engine.tasks import task_from_state
from querent.engine.train import train_fold
from querent.figures import PlotSettings, draw_run_plots, heatmap_slides
from querent.pipeline.plan import CohortInputs, Findings, plan_workflow
from querent.schemas import COHORT_SCHEMA
from tests.helpers import default_config

TWO = CohortSettings(label=["label", "grade"], classes={"grade": ["low", "mid", "high"]})
GRADES = ("low", "mid", "high")


def _sheet(tmp_path, rows, name="cohort.csv"):
    path = tmp_path / name
    pd.DataFrame(rows, columns=["slide_id", "case_id", "label", "grade"]).to_csv(path, index=False)
    return path


def test_settings_take_several_label_columns_and_refuse_bad_ones():
    assert CohortSettings(label=["label"]).label == "label"  # a list of one is one column
    assert TWO.label == ("label", "grade") and TWO.classes == {"grade": GRADES}
    bad = [
        ({"label": ["a", "a"]}, "cohort.label: columns listed twice: a"),
        ({"label": ["a", "case_id"]}, "cannot be targets: 'case_id'"),
        ({"label": ["a", "b:c"]}, "cannot be targets: 'b:c'"),
        ({"label": ["a", "b"], "task": "survival"}, "cohort.task is survival"),
        ({"label": ["a", "b"], "classes": ["x", "y"]}, "classes is a list but cohort.label"),
        ({"label": "a", "classes": {"a": ["x", "y"]}}, "a mapping but cohort.label names one"),
        ({"label": ["a", "b"], "classes": {"c": ["x", "y"]}}, "orders 'c', not listed"),
        ({"label": ["a", "b"], "classes": {"b": ["x"]}}, "cohort.classes.b needs at least two"),
    ]
    for settings, message in bad:
        with pytest.raises(SettingsError, match="Fix|needs") as error:
            CohortSettings(**settings)
        assert message in str(error.value), settings


def test_the_cohort_reads_a_binary_and_a_three_class_column(tmp_path):
    rows = [
        ("s1", "c1", "pos", "high"),
        ("s2", "c1", "pos", "high"),
        ("s3", "c2", "neg", "NA"),  # unknown grade
        ("s4", "c3", "neg", "low"),
        ("s5", "c4", "pos", ""),  # unknown grade
        ("s6", "c5", "neg", "mid"),
    ]
    cohort = read_cohort(_sheet(tmp_path, rows), TWO)
    assert cohort.labels == {"label": ("neg", "pos"), "grade": GRADES}
    assert cohort.classes == ("neg", "pos") and cohort.target_columns == ["label", "grade"]
    assert cohort.targets(["s5", "s1", "s6"]).tolist() == [[1, -1], [1, 2], [0, 1]]
    assert cohort.strata().to_dict() == {"c1": 1, "c2": 0, "c3": 0, "c4": 1, "c5": 0}
    assert cohort.subset(["s1", "s3"]).labels == cohort.labels
    task = TrainSettings().task(cohort)
    assert isinstance(task, MultiLabelTask) and task.n_outputs == 5


def test_a_bad_sheet_is_refused_with_every_problem_named(tmp_path):
    rows = [
        ("s1", "c1", "pos", "high"),
        ("s2", "c1", "pos", ""),  # line 3: its case says high on s1
        ("s3", "c2", "", "low"),  # line 4: the first column must be filled in
        ("s4", "c3", "neg", "severe"),  # line 5: not in cohort.classes.grade
        ("s5", "c4", "neg", "low"),
    ]
    sheet = _sheet(tmp_path, rows)
    with pytest.raises(CohortError) as error:
        read_cohort(sheet, TWO)
    message = str(error.value)
    assert f"cohort sheet {sheet}: 3 problems" in message and message.count("Fix:") == 3
    assert "missing labels in column 'label', the first of cohort.label, at line 4" in message
    assert "labels in column 'grade' not in cohort.classes.grade (low, mid, high)" in message
    assert "'severe' (line 5)" in message
    assert "different labels in column 'grade' on their slides: c1" in message
    one_class = [("s1", "c1", "pos", "low"), ("s2", "c2", "neg", "low")]
    with pytest.raises(CohortError, match="only one class \\('low'\\) in column 'grade'"):
        read_cohort(
            _sheet(tmp_path, one_class, "one.csv"), CohortSettings(label=["label", "grade"])
        )


def test_the_task_masks_unknown_labels_and_round_trips():
    task = MultiLabelTask(targets={"label": ("neg", "pos"), "grade": GRADES})
    torch.manual_seed(0)
    logits = torch.randn(3, 5)
    labels = torch.tensor([[0, 2], [1, -1], [1, 0]])
    expected = (
        F.cross_entropy(logits[:, :2], labels[:, 0])
        + F.cross_entropy(logits[[0, 2], 2:], labels[[0, 2], 1])
    ) / 2
    assert task.loss(logits, {"labels": labels}).item() == pytest.approx(expected.item())
    only_first = torch.tensor([[0, -1], [1, -1], [1, -1]])
    first = F.cross_entropy(logits[:, :2], only_first[:, 0])
    assert task.loss(logits, {"labels": only_first}).item() == pytest.approx(first.item())

    columns = task.prediction_columns(logits)
    names = ["label:prob_neg", "label:prob_pos", *(f"grade:prob_{g}" for g in GRADES)]
    assert list(columns) == names
    np.testing.assert_allclose(columns["label:prob_neg"] + columns["label:prob_pos"], 1, rtol=1e-6)
    np.testing.assert_allclose(sum(columns[f"grade:prob_{g}"] for g in GRADES), 1, rtol=1e-6)

    task.parts["grade"].weights = [1.0, 2.0, 3.0]
    rebuilt = task_from_state(json.loads(json.dumps(task.state())))  # plain data
    assert isinstance(rebuilt, MultiLabelTask) and rebuilt.state() == task.state()
    assert rebuilt.loss(logits, {"labels": labels}).item() == pytest.approx(
        task.loss(logits, {"labels": labels}).item()
    )


def _features(path, rng, directions, dim=8):
    """A bag of 40-60 Gaussian patches; half of them carry each of ``directions``."""
    n = int(rng.integers(40, 60))
    features = rng.normal(size=(n, dim)).astype(np.float32)
    for direction in directions:
        features[rng.random(n) < 0.5, direction] += 3.0
    cells = np.stack(np.divmod(np.arange(n), 8), axis=1)[:, ::-1] * 256
    attrs = {"step_level0": 256, "patch_size_level0": 256}
    write_features(path, features, cells, attrs, {"encoder": "syn"}, np.zeros((0, 2)))


@pytest.fixture(scope="module")
def two_target_cohort(tmp_path_factory):
    """30 one-slide cases: ``label`` carried by feature 0, ``grade`` by feature 1, 2 or 3
    (low, mid, high), every seventh grade unknown."""
    out = tmp_path_factory.mktemp("multilabel")
    rng = np.random.default_rng(0)
    rows = []
    for case in range(30):
        label, grade = ("neg", "pos")[case % 2], GRADES[(case // 2) % 3]
        directions = [0] * (label == "pos") + [1 + GRADES.index(grade)]
        _features(out / "features" / f"s{case:02d}.h5", rng, directions)
        rows.append((f"s{case:02d}", f"c{case:02d}", label, "" if case % 7 == 3 else grade))
    return _sheet(out, rows), out / "features"


@pytest.mark.slow
def test_a_model_learns_both_targets_and_each_gets_its_plots_and_summary_row(
    two_target_cohort, tmp_path
):
    sheet, folder = two_target_cohort
    cohort, files = match_features(read_cohort(sheet, TWO), folder, "error")
    splits = make_splits(cohort, SplitSettings(folds=2))
    train, val, held = fold_slides(splits, cohort, 0, val_fraction=0.2, seed=0)
    run = model_run(
        "abmil",
        {"arch": "abmil", "dim": 16, "attention_dim": 8},
        {"epochs": 3, "max_patches": 40, "lr": 5e-3, "patience": None},
    )
    model = train_fold(run, cohort, files, train, val, tmp_path / "model", encoder="syn", fold=0)
    history = pd.read_csv(tmp_path / "model" / "history.csv")
    assert "val_auc" in history.columns and len(history) == 3

    eval_dir = tmp_path / "eval"
    metrics = evaluate_fold(model, cohort, files, held, eval_dir)
    predictions = pd.read_csv(eval_dir / "predictions.csv", dtype=str)
    assert list(predictions.columns[:4]) == ["slide_id", "case_id", "label:truth", "grade:truth"]
    unknown = sum(int(s[1:]) % 7 == 3 for s in held)
    assert predictions["grade:truth"].isna().sum() == unknown
    aucs = {target: part["level"]["case"]["auc"] for target, part in metrics["targets"].items()}
    assert aucs["label"] > 0.75 and aucs["grade"] > 0.75, aucs  # held-out cases, chance 0.5
    assert metrics["level"]["case"]["auc"] == pytest.approx(np.mean(list(aucs.values())))
    written = json.loads((eval_dir / "metrics.json").read_text())["targets"]
    assert (written["label"]["n_cases"], written["grade"]["n_cases"]) == (
        len(held),
        len(held) - unknown,
    )

    summary, comparisons = aggregate([("abmil", "syn", [[eval_dir]])], n_boot=20)
    assert summary[["model", "task", "target"]].values.tolist() == [
        ["abmil", "classification", "label"],
        ["abmil", "classification", "grade"],
    ]
    assert summary["auc_pooled"].tolist() == pytest.approx([aucs["label"], aucs["grade"]])
    assert comparisons.empty

    written = draw_run_plots(
        [eval_dir], [tmp_path / "model" / "history.csv"], tmp_path / "plots", PlotSettings(("png",))
    )
    assert sorted(p.name for p in written) == [
        "confusion_grade.png", "confusion_label.png", "roc_grade.png", "roc_label.png",
        "training.png",
    ]  # fmt: skip

    predict_slides([model], {s: files[s] for s in held}, tmp_path / "deployed")
    deployed = pd.read_csv(tmp_path / "deployed" / "predictions.csv")
    prob_columns = [c for c in predictions.columns if ":prob_" in c]
    assert list(deployed.columns) == ["slide_id", "case_id", *prob_columns]


def _fold(rng, fold, skill):
    """Ten cases of a two-target table; ``skill`` moves the probabilities toward the truth."""
    rows = []
    for case in range(10):
        label, grade = ("neg", "pos")[case % 2], ("1", "2", "3")[case % 3]
        positive = 1 / (1 + np.exp(-(skill * (2 * (label == "pos") - 1) + rng.normal())))
        scores = rng.normal(size=3) + skill * (np.arange(1, 4) == int(grade))
        grades = np.exp(scores) / np.exp(scores).sum()
        rows.append(
            {
                "slide_id": f"s{fold}{case}",
                "case_id": f"{fold}{case:02d}",
                "label:truth": label,
                "grade:truth": "" if case == 4 else grade,
                "label:prob_neg": 1 - positive,
                "label:prob_pos": positive,
                **{f"grade:prob_{g}": grades[i] for i, g in enumerate(("1", "2", "3"))},
            }
        )
    return pd.DataFrame(rows)


def test_metrics_summary_and_comparisons_come_per_target(tmp_path):
    rng = np.random.default_rng(1)
    runs, tables = [], {}
    for model, skill in (("good", 3.0), ("noise", 0.0)):
        tables[model] = [_fold(rng, fold, skill) for fold in range(2)]
        dirs = []
        for fold, table in enumerate(tables[model]):
            write_predictions(table, tmp_path / model / f"fold_{fold}" / "predictions.csv")
            dirs.append(tmp_path / model / f"fold_{fold}")
        runs.append((model, "uni", [dirs]))

    fold = tables["good"][0]
    grade = target_table(fold, "grade")
    assert list(grade.columns) == ["slide_id", "case_id", "truth", "prob_1", "prob_2", "prob_3"]
    assert len(grade) == 9  # the case without a grade is left out of the grade's slice
    metrics = fold_metrics(fold)
    assert metrics["targets"]["grade"] == fold_metrics(grade)
    both = [compute_metrics(case_level(target_table(fold, t))) for t in ("label", "grade")]
    assert metrics["level"]["case"]["auc"] == pytest.approx((both[0]["auc"] + both[1]["auc"]) / 2)

    summary, comparisons = aggregate(runs, n_boot=50)
    assert list(summary.columns[:5]) == ["model", "encoder", "task", "target", "n_cases"]
    assert summary[["model", "target", "n_cases"]].values.tolist() == [
        ["good", "label", 20], ["good", "grade", 18], ["noise", "label", 20], ["noise", "grade", 18]
    ]  # fmt: skip
    folds = [read_predictions(folder / "predictions.csv") for folder in runs[0][2][0]]
    single = summarize_run("good", "uni", [[target_table(f, "grade") for f in folds]], n_boot=50)
    row = summary.iloc[1].to_dict()
    numbers = [key for key, value in single.items() if not isinstance(value, str)]
    assert [row[key] for key in numbers] == pytest.approx(
        [single[key] for key in numbers], nan_ok=True
    )
    assert comparisons[["model_a", "model_b", "target", "metric"]].values.tolist() == [
        ["good", "noise", "label", "auc"],
        ["good", "noise", "grade", "auc"],
    ]
    assert (comparisons["difference"] > 0).all()

    chosen = heatmap_slides(fold, per_group=1, extra=[])  # heatmaps: the first target's ends
    assert set(chosen["group"]) == {"neg", "pos"}


def test_planning_refuses_bad_label_settings_and_sheets(tmp_path, two_target_cohort):
    sheet, features = two_target_cohort
    where = CohortInputs(
        "resources/demo/cohort.csv",
        "results/features/{encoder}",
        yaml.safe_load(COHORT_SCHEMA.read_text()),
    )

    def problems(sheet: Path, **cohort) -> list[str]:
        config = default_config(
            demo={"enabled": "auto"},
            features={"dir": str(features), "encoder": "syn"},
            cohort={"sheet": str(sheet), "label": ["label", "grade"], **cohort},
            splits={"folds": 2},
        )
        findings = Findings()
        plan_workflow(
            config,
            demo_slides="resources/demo/slides/{slide}.svs",
            where=where,
            mpp_cache=tmp_path / "slide_mpp.json",
            findings=findings,
        )
        return findings.problems

    assert problems(sheet) == []
    (message,) = problems(sheet, classes=["low", "high"])
    assert "cohort.classes is a list but cohort.label lists several columns" in message
    table = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    table.loc[5, "grade"] = "severe"  # line 7
    table.to_csv(tmp_path / "bad.csv", index=False)
    (message,) = problems(tmp_path / "bad.csv", classes={"grade": list(GRADES)})
    assert str(tmp_path / "bad.csv") in message and "'severe' (line 7)" in message

import math

import numpy as np
import pandas as pd
import pytest

from extractors.errors import FileFormatError, QuerentError
from querent.engine.aggregate import (
    aggregate,
    format_summary,
    read_predictions,
    summarize_run,
    write_summary,
)
from querent.engine.metrics import METRICS, bootstrap_ci, case_level, compute_metrics

N_BOOT = 100
CLASSES = ["benign", "tumour", "other"]


def classification_fold(fold, rng):
    """10 cases per fold, ids unique over folds, every other case with two slides."""
    rows = []
    for case in range(10):
        truth = CLASSES[case % 3]
        for slide in range(1 + case % 2):
            logits = rng.normal(size=3)
            logits[CLASSES.index(truth)] += 1.0
            probs = np.exp(logits) / np.exp(logits).sum()
            rows.append(
                {
                    "slide_id": f"s{fold}{case}{slide}",
                    "case_id": f"{fold}{case:02d}",  # numeric-looking: must stay a string
                    "truth": truth,
                    **{f"prob_{name}": p for name, p in zip(CLASSES, probs, strict=True)},
                }
            )
    return pd.DataFrame(rows)


def survival_fold(fold, rng):
    n = 12
    risk = rng.normal(size=n)
    return pd.DataFrame(
        {
            "slide_id": [f"s{fold}_{i}" for i in range(n)],
            "case_id": [f"case{fold}_{i}" for i in range(n)],
            "time": rng.exponential(np.exp(-risk)).round(4),
            "event": (np.arange(n) % 3 != 0).astype(int),
            "risk": risk + rng.normal(scale=0.7, size=n),
            "hazard_0": rng.random(n),
        }
    )


@pytest.fixture
def runs(tmp_path):
    """Two runs of three folds on disk: abmil (classification) and coxmil (survival)."""
    rng = np.random.default_rng(0)
    result, folds = [], {}
    for model, make in (("abmil", classification_fold), ("coxmil", survival_fold)):
        folds[model] = [make(k, rng) for k in range(3)]
        dirs = []
        for k, predictions in enumerate(folds[model]):
            fold_dir = tmp_path / "eval" / model / "uni" / f"fold_{k}"
            fold_dir.mkdir(parents=True)
            predictions.to_csv(fold_dir / "predictions.csv", index=False, float_format="%.6f")
            dirs.append(fold_dir)
        result.append((model, "uni", [dirs]))
    return result, folds


def test_aggregate_columns_and_counts(runs):
    run_list, _ = runs
    table, _ = aggregate(run_list, n_boot=N_BOOT)
    base = ["model", "encoder", "task", "n_cases", "n_folds", "n_seeds", "min_fold_cases"]
    assert list(table.columns[:7]) == base
    metrics = [*METRICS["classification"], *METRICS["survival"]]
    statistics = ("pooled", "ci_low", "ci_high", "mean", "std", "seed_std")
    stats = [f"{m}_{s}" for m in metrics for s in statistics]
    assert list(table.columns[7:]) == stats
    assert table["model"].tolist() == ["abmil", "coxmil"]
    assert table["task"].tolist() == ["classification", "survival"]
    assert table["n_cases"].tolist() == [30, 36]
    assert table["n_folds"].tolist() == [3, 3]
    assert table["n_seeds"].tolist() == [1, 1]
    assert table["auc_seed_std"].isna().all()  # one seed: no spread
    # Mixed tasks: each run's columns of the other task are NaN.
    assert table.loc[0, [c for c in stats if c.startswith("c_index")]].isna().all()
    assert table.loc[1, [c for c in stats if c.startswith("auc")]].isna().all()
    defined = [c for c in stats if not c.startswith("c_index") and not c.endswith("seed_std")]
    assert table.loc[0, defined].notna().all()


def test_aggregate_of_one_task_has_only_its_columns(runs):
    run_list, _ = runs
    table, comparisons = aggregate(run_list[1:], n_boot=N_BOOT)
    assert list(table.columns) == [
        "model",
        "encoder",
        "task",
        "n_cases",
        "n_folds",
        "n_seeds",
        "min_fold_cases",
        "c_index_pooled",
        "c_index_ci_low",
        "c_index_ci_high",
        "c_index_mean",
        "c_index_std",
        "c_index_seed_std",
    ]
    assert comparisons.empty  # one run: nothing to compare


@pytest.mark.parametrize("model", ["abmil", "coxmil"])
def test_headline_is_pooled_with_its_ci_and_folds_beside_it(runs, model):
    run_list, folds = runs
    row = aggregate(run_list, n_boot=N_BOOT)[0].set_index("model").loc[model]
    dirs = {name: seed_dirs[0] for name, _, seed_dirs in run_list}[model]
    fold_frames = [read_predictions(d / "predictions.csv") for d in dirs]
    task = row["task"]
    per_fold = [compute_metrics(case_level(fold)) for fold in fold_frames]
    pooled = case_level(pd.concat(fold_frames))
    ci = bootstrap_ci(pooled, n_boot=N_BOOT)
    for metric in METRICS[task]:
        values = np.array([fold[metric] for fold in per_fold])
        assert row[f"{metric}_pooled"] == pytest.approx(compute_metrics(pooled)[metric])
        assert row[f"{metric}_mean"] == pytest.approx(np.mean(values))
        assert row[f"{metric}_std"] == pytest.approx(np.std(values, ddof=1))
        assert (row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]) == pytest.approx(ci[metric])
        assert row[f"{metric}_ci_low"] <= row[f"{metric}_ci_high"]
    # The files round-trip the frames written (up to float_format).
    for written, read in zip(folds[model], fold_frames, strict=True):
        pd.testing.assert_frame_equal(written, read, check_exact=False, atol=1e-6)


def test_summarize_run_single_fold_has_nan_std():
    fold = classification_fold(0, np.random.default_rng(1))
    row = summarize_run("abmil", "uni", [[fold]], n_boot=N_BOOT)
    assert row["n_folds"] == 1 and row["n_cases"] == 10 and row["min_fold_cases"] == 10
    assert row["auc_mean"] == pytest.approx(compute_metrics(case_level(fold))["auc"])
    assert math.isnan(row["auc_std"])


def test_summarize_run_rejects_mixed_folds():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="mix tasks"):
        summarize_run("m", "e", [[classification_fold(0, rng), survival_fold(1, rng)]])
    other = classification_fold(1, rng).rename(columns={"prob_other": "prob_normal"})
    with pytest.raises(ValueError, match="classes"):
        summarize_run("m", "e", [[classification_fold(0, rng), other]])


def test_missing_predictions_names_the_path(runs):
    run_list, _ = runs
    missing = run_list[0][2][0][1] / "predictions.csv"
    missing.unlink()
    with pytest.raises(FileFormatError, match="evaluate_model") as error:
        aggregate(run_list, n_boot=N_BOOT)
    assert str(missing) in str(error.value)
    assert isinstance(error.value, QuerentError)


def test_unreadable_predictions_name_the_path(tmp_path):
    path = tmp_path / "predictions.csv"
    path.write_text("")
    with pytest.raises(FileFormatError, match="predictions.csv"):
        read_predictions(path)
    path.write_text("slide_id,case_id,score\ns1,c1,0.5\n")
    with pytest.raises(FileFormatError, match="not a predictions table"):
        read_predictions(path)


def test_write_summary_round_trip(runs, tmp_path):
    run_list, _ = runs
    table, _ = aggregate(run_list, n_boot=N_BOOT)
    path = tmp_path / "results" / "summary.tsv"
    write_summary(table, path)
    assert not list(path.parent.glob("summary.tsv.*tmp"))
    back = pd.read_csv(path, sep="\t")
    assert list(back.columns) == list(table.columns)
    pd.testing.assert_frame_equal(back, table, check_exact=False, atol=1e-4)


def test_format_summary(runs):
    run_list, _ = runs
    table, _ = aggregate(run_list, n_boot=N_BOOT)
    text = format_summary(table)
    lines = text.splitlines()
    assert len(lines) == 4  # what the numbers are, the header, two runs; no small-fold warning
    assert lines[0].startswith("Pooled out-of-fold")
    assert lines[1].split()[:4] == ["model", "encoder", "task", "n_cases"]
    assert "c_index" in lines[1] and "auc" in lines[1]
    row = table.iloc[1]
    pooled = (
        f"{row['c_index_pooled']:.3f} [{row['c_index_ci_low']:.3f}, {row['c_index_ci_high']:.3f}]"
    )
    folds = f"{row['c_index_mean']:.3f} ± {row['c_index_std']:.3f}"
    assert pooled in lines[3] and folds in lines[3]
    assert "coxmil" in lines[3] and "±" in lines[2]
    assert "auc folds" in lines[1] and "c_index folds" in lines[1]
    assert "accuracy folds" not in lines[1]  # only the main metric shows its folds


def test_tiny_folds_headline_the_pooled_metric_and_warn(caplog):
    """The demo's fault: 3 cases a fold score 1.0 each while the pooled cases do not."""
    folds = []
    for fold, (benign, tumour) in enumerate([(0.2, 0.6), (0.3, 0.8), (0.7, 0.95)]):
        # each fold ranks its own cases perfectly; pooled, fold 2's benign outranks fold 0's tumour
        folds.append(
            pd.DataFrame(
                {
                    "slide_id": [f"s{fold}a", f"s{fold}b", f"s{fold}c"],
                    "case_id": [f"c{fold}a", f"c{fold}b", f"c{fold}c"],
                    "truth": ["benign", "tumour", "tumour"],
                    "prob_benign": [1 - benign, 1 - tumour, 1 - tumour],
                    "prob_tumour": [benign, tumour, tumour],
                }
            )
        )
    with caplog.at_level("WARNING"):
        row = summarize_run("querent", "demo", [folds], n_boot=N_BOOT)
    assert row["auc_mean"] == 1.0 and row["auc_std"] == 0.0
    assert row["auc_pooled"] < 1.0
    assert row["min_fold_cases"] == 3
    assert "only 3 held-out cases" in caplog.text
    text = format_summary(pd.DataFrame([row]))
    assert f"{row['auc_pooled']:.3f} [" in text
    assert text.splitlines()[-1].startswith("Warning: folds of 3 held-out cases")

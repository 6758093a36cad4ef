"""Regression predictions: R², Pearson and Spearman from the libraries, CIs, the summary row."""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import r2_score

from querent.engine.aggregate import summarize_run, summary_columns
from querent.engine.metrics import (
    METRICS,
    bootstrap_ci,
    case_level,
    compute_metrics,
    fold_metrics,
    regression_metrics,
    resample_metrics,
    task_of,
)


def regression_table(n_cases, seed=0, noise=1.0, slides_per_case=1, ties=False):
    """Slide-level predictions of a number; ``noise`` blurs them, ``ties`` rounds the truth."""
    rng = np.random.default_rng(seed)
    target = rng.normal(10.0, 3.0, n_cases)
    if ties:
        target = np.round(target / 2.0)
    rows = [
        {
            "slide_id": f"s{case}_{slide}",
            "case_id": f"k{case:03d}",
            "target": target[case],
            "prediction": target[case] + rng.normal(scale=3.0 * noise),
        }
        for case in range(n_cases)
        for slide in range(slides_per_case)
    ]
    return pd.DataFrame(rows)


def test_task_of_and_case_level_of_a_regression():
    slides = regression_table(5, slides_per_case=2)
    assert task_of(slides) == "regression"
    assert task_of(slides.drop(columns="target")) == "regression"  # predictions without truth
    cases = case_level(slides)
    assert list(cases.columns) == ["case_id", "target", "prediction"]
    np.testing.assert_allclose(
        cases["prediction"], slides.groupby("case_id")["prediction"].mean().to_numpy()
    )
    slides.loc[1, "target"] += 1.0
    with pytest.raises(ValueError, match="k000"):
        case_level(slides)


@pytest.mark.parametrize("ties", [False, True])
def test_regression_metrics_are_the_libraries(ties):
    table = regression_table(40, seed=1, ties=ties)
    target, predicted = table["target"], table["prediction"]
    metrics = compute_metrics(table)
    assert list(metrics) == list(METRICS["regression"]) == ["r2", "pearson", "spearman"]
    assert metrics["r2"] == pytest.approx(r2_score(target, predicted), abs=1e-12)
    assert metrics["pearson"] == pytest.approx(pearsonr(target, predicted)[0], abs=1e-12)
    assert metrics["spearman"] == pytest.approx(spearmanr(target, predicted)[0], abs=1e-12)


def test_regression_metrics_undefined_are_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN, and no warning on the way
        one = regression_metrics([1.0], [2.0])
        constant_truth = regression_metrics([3.0, 3.0, 3.0], [1.0, 2.0, 3.0])
        constant_prediction = regression_metrics([1.0, 2.0, 4.0], [2.0, 2.0, 2.0])
    assert all(math.isnan(v) for v in (*one.values(), *constant_truth.values()))
    assert constant_prediction["r2"] == pytest.approx(r2_score([1, 2, 4], [2, 2, 2]))
    assert math.isnan(constant_prediction["pearson"]) and math.isnan(
        constant_prediction["spearman"]
    )
    with pytest.raises(ValueError, match="equally long"):
        regression_metrics([1.0, 2.0], [1.0])


def test_resample_metrics_regression_equal_compute_metrics():
    # 5 cases with tied values: some resamples hold one value only (every metric NaN)
    cases = regression_table(5, seed=2, ties=True)
    indices = np.random.default_rng(4).integers(0, 5, (80, 5))
    slow = pd.DataFrame([compute_metrics(cases.iloc[i]) for i in indices])
    fast = resample_metrics(cases, indices)
    pd.testing.assert_frame_equal(fast, slow, atol=1e-12, rtol=0)
    assert slow["r2"].isna().any() and slow["r2"].notna().any()


def test_regression_bootstrap_covers_the_estimate_and_is_seeded():
    cases = case_level(regression_table(150, seed=3, slides_per_case=2))
    intervals = bootstrap_ci(cases, n_boot=200)
    assert list(intervals) == list(METRICS["regression"])
    point = compute_metrics(cases)
    for metric, (low, high) in intervals.items():
        assert low < point[metric] < high, metric
    assert intervals == bootstrap_ci(cases, n_boot=200)
    assert intervals != bootstrap_ci(cases, n_boot=200, seed=1)


def test_regression_fold_metrics_are_plain_json():
    slides = regression_table(12, slides_per_case=2)
    result = fold_metrics(slides)
    assert result["task"] == "regression" and (result["n_cases"], result["n_slides"]) == (12, 24)
    assert result["level"]["case"] == compute_metrics(case_level(slides))
    json.loads(json.dumps(result))


def test_summary_row_of_a_regression_run():
    table = regression_table(36, seed=5, noise=0.5)
    folds = [table.iloc[k::3].reset_index(drop=True) for k in range(3)]
    row = summarize_run("abmil", "uni", [folds], n_boot=100)  # one seed
    columns = summary_columns({"regression"})
    assert list(row) == columns
    pooled = [c for c in columns if c.endswith("_pooled")]
    assert pooled == ["r2_pooled", "pearson_pooled", "spearman_pooled"]
    assert row["task"] == "regression" and row["n_cases"] == 36 and row["n_folds"] == 3
    assert row["r2_pooled"] == pytest.approx(r2_score(table["target"], table["prediction"]))
    per_fold = [r2_score(fold["target"], fold["prediction"]) for fold in folds]
    assert row["r2_mean"] == pytest.approx(np.mean(per_fold))
    assert row["r2_std"] == pytest.approx(np.std(per_fold, ddof=1))
    for metric in METRICS["regression"]:
        assert row[f"{metric}_ci_low"] < row[f"{metric}_pooled"] < row[f"{metric}_ci_high"]

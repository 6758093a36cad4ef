"""A run over several training seeds, and paired comparisons of runs on the same cases."""

import numpy as np
import pandas as pd
import pytest

from querent.engine.aggregate import aggregate, summarize_run
from querent.engine.compare import (
    COMPARISON_COLUMNS,
    format_comparisons,
    paired_comparison,
    resample_indices,
    seed_tables,
)
from querent.engine.metrics import case_level, compute_metrics, resample_metrics

N_BOOT = 200
N_CASES = 60


def folds_of(skill: float, seed: int, *, folds: int = 3) -> list[pd.DataFrame]:
    """Binary out-of-fold predictions of N_CASES cases; ``skill`` moves the tumour scores up."""
    rng = np.random.default_rng(seed)
    truth = np.array(["benign", "tumour"])[np.arange(N_CASES) % 2]
    score = 1 / (1 + np.exp(-(skill * (truth == "tumour") + rng.normal(size=N_CASES))))
    table = pd.DataFrame(
        {
            "slide_id": [f"s{i:03d}" for i in range(N_CASES)],
            "case_id": [f"c{i:03d}" for i in range(N_CASES)],
            "truth": truth,
            "prob_benign": 1 - score,
            "prob_tumour": score,
        }
    )
    return [table.iloc[k::folds].reset_index(drop=True) for k in range(folds)]


def test_seeds_headline_the_mean_of_each_seeds_pooled_metric_with_their_spread():
    seeds = [folds_of(1.0, seed) for seed in (0, 1, 2)]
    row = summarize_run("querent", "uni", seeds, n_boot=N_BOOT)
    per_seed = [compute_metrics(case_level(pd.concat(folds)))["auc"] for folds in seeds]
    assert row["n_seeds"] == 3 and row["n_folds"] == 3 and row["n_cases"] == N_CASES
    assert row["auc_pooled"] == pytest.approx(np.mean(per_seed))
    assert row["auc_seed_std"] == pytest.approx(np.std(per_seed, ddof=1))
    # not the seed ensemble (predictions averaged over seeds), which scores differently
    ensemble = compute_metrics(case_level(pd.concat([f for folds in seeds for f in folds])))
    assert row["auc_pooled"] != pytest.approx(ensemble["auc"])
    # the CI resamples cases once and scores every seed on them
    tables = [case_level(pd.concat(folds)).sort_values("case_id") for folds in seeds]
    indices = resample_indices(N_CASES, N_BOOT, 0)
    samples = np.mean([resample_metrics(t, indices)["auc"] for t in tables], axis=0)
    low, high = np.quantile(samples, [0.025, 0.975])
    assert (row["auc_ci_low"], row["auc_ci_high"]) == pytest.approx((low, high))
    fold_aucs = [compute_metrics(case_level(f))["auc"] for folds in seeds for f in folds]
    assert row["auc_mean"] == pytest.approx(np.mean(fold_aucs))


def test_seeds_that_predicted_other_cases_are_refused():
    other = folds_of(1.0, 1)
    other[0] = other[0].iloc[1:]
    with pytest.raises(ValueError, match="seed 1 of querent / uni predicted other cases"):
        summarize_run("querent", "uni", [folds_of(1.0, 0), other], n_boot=N_BOOT)


def test_a_run_compared_with_itself_differs_by_nothing():
    run = seed_tables("a", "uni", [folds_of(1.0, 0)])
    twin = seed_tables("b", "uni", [folds_of(1.0, 0)])
    row = paired_comparison(run, twin, n_boot=N_BOOT)
    assert row["difference"] == 0 and (row["ci_low"], row["ci_high"]) == (0, 0)
    assert row["p_value"] == 1.0


def test_a_better_run_wins_its_paired_comparison_and_the_order_flips_the_sign():
    strong = seed_tables("querent", "uni", [folds_of(3.0, s) for s in (0, 1)])
    weak = seed_tables("abmil", "uni", [folds_of(0.0, s + 10) for s in (0, 1)])
    row = paired_comparison(strong, weak, n_boot=N_BOOT)
    assert set(row) == set(COMPARISON_COLUMNS)
    assert row["metric"] == "auc" and row["n_cases"] == N_CASES and row["n_seeds"] == 2
    assert row["difference"] == pytest.approx(row["a"] - row["b"]) and row["difference"] > 0.2
    assert 0 < row["ci_low"] <= row["difference"] <= row["ci_high"]
    assert row["p_value"] <= 2 / N_BOOT
    back = paired_comparison(weak, strong, n_boot=N_BOOT)
    assert back["difference"] == pytest.approx(-row["difference"])
    assert (back["ci_low"], back["ci_high"]) == pytest.approx((-row["ci_high"], -row["ci_low"]))


def test_runs_are_compared_on_the_cases_both_predicted():
    strong = seed_tables("querent", "uni", [folds_of(3.0, 0)])
    fewer = folds_of(0.0, 5)
    fewer[2] = fewer[2].iloc[4:]  # 4 cases this run never predicted
    weak = seed_tables("abmil", "uni", [fewer])
    row = paired_comparison(strong, weak, n_boot=N_BOOT)
    assert row["n_cases"] == N_CASES - 4
    common = list(weak.case_ids)
    alone = compute_metrics(strong.tables[0].set_index("case_id").loc[common].reset_index())
    assert row["a"] == pytest.approx(alone["auc"])


def test_runs_that_disagree_on_the_truth_are_not_compared():
    a = seed_tables("a", "uni", [folds_of(1.0, 0)])
    relabelled = folds_of(1.0, 0)
    relabelled[0].loc[0, "truth"] = (
        "tumour" if relabelled[0].loc[0, "truth"] == "benign" else "benign"
    )
    b = seed_tables("b", "uni", [relabelled])
    with pytest.raises(ValueError, match="disagree on the truth"):
        paired_comparison(a, b, n_boot=N_BOOT)


def test_aggregate_compares_every_pair_of_one_task(tmp_path):
    runs = []
    for model, skill in (("querent", 3.0), ("abmil", 0.5), ("mean_pool", 0.0)):
        seed_dirs = []
        for seed in (0, 1):
            dirs = []
            for fold, table in enumerate(folds_of(skill, seed)):
                folder = tmp_path / model / f"seed_{seed}" / f"fold_{fold}"
                folder.mkdir(parents=True)
                table.to_csv(folder / "predictions.csv", index=False)
                dirs.append(folder)
            seed_dirs.append(dirs)
        runs.append((model, "uni", seed_dirs))
    summary, comparisons = aggregate(runs, n_boot=N_BOOT)
    assert summary["n_seeds"].tolist() == [2, 2, 2]
    pairs = list(zip(comparisons["model_a"], comparisons["model_b"], strict=True))
    assert pairs == [("querent", "abmil"), ("querent", "mean_pool"), ("abmil", "mean_pool")]
    # the comparison's A and B are the summary's headlines of the two runs
    headline = summary.set_index("model")["auc_pooled"]
    for _, row in comparisons.iterrows():
        assert row["a"] == pytest.approx(headline[row["model_a"]])
        assert row["b"] == pytest.approx(headline[row["model_b"]])
    text = format_comparisons(comparisons)
    assert text.startswith("Paired comparisons")
    first = comparisons.iloc[0]
    assert (
        f"querent (uni) vs abmil (uni): auc {first['a']:.3f} vs {first['b']:.3f}, difference "
        f"{first['difference']:+.3f} [{first['ci_low']:+.3f}, {first['ci_high']:+.3f}], "
        f"p = {first['p_value']:.3f} ({N_CASES} cases, 2 seeds)"
    ) in text

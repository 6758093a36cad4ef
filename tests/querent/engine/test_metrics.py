import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import roc_auc_score

from querent.engine.metrics import (
    METRICS,
    bootstrap_ci,
    case_level,
    class_names,
    classification_metrics,
    compute_metrics,
    fold_metrics,
    resample_metrics,
    survival_metrics,
    task_of,
)

# Three-class example, worked by hand below. Predictions (argmax): x y y x z z y.
TRUTH_3 = ["x", "x", "y", "y", "z", "z", "z"]
PROBS_3 = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.3, 0.5, 0.2],
        [0.2, 0.6, 0.2],
        [0.5, 0.3, 0.2],
        [0.1, 0.3, 0.6],
        [0.4, 0.1, 0.5],
        [0.1, 0.7, 0.2],
    ]
)


def classification_table(n_cases, n_classes=2, signal=1.0, seed=0, slides_per_case=1):
    """Synthetic slide-level predictions; ``signal`` moves probability towards the truth."""
    rng = np.random.default_rng(seed)
    classes = [f"c{i}" for i in range(n_classes)]
    truth = rng.integers(0, n_classes, n_cases)
    rows = []
    for case in range(n_cases):
        for slide in range(slides_per_case):
            logits = rng.normal(size=n_classes)
            logits[truth[case]] += signal
            probs = np.exp(logits) / np.exp(logits).sum()
            rows.append(
                {
                    "slide_id": f"s{case}_{slide}",
                    "case_id": f"k{case:03d}",
                    "truth": classes[truth[case]],
                    **{f"prob_{name}": p for name, p in zip(classes, probs, strict=True)},
                }
            )
    return pd.DataFrame(rows)


def survival_table(n_cases, seed=0):
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n_cases)
    time_ = rng.exponential(np.exp(-risk))
    return pd.DataFrame(
        {
            "slide_id": [f"s{i}" for i in range(n_cases)],
            "case_id": [f"k{i:03d}" for i in range(n_cases)],
            "time": time_,
            "event": rng.random(n_cases) < 0.7,
            "risk": risk + rng.normal(scale=0.5, size=n_cases),
        }
    ).astype({"event": int})


# --- tables ----------------------------------------------------------------------------------


def test_task_of_and_class_names():
    table = pd.DataFrame(columns=["slide_id", "case_id", "truth", "prob_b", "prob_a"])
    assert task_of(table) == "classification"
    assert class_names(table) == ["b", "a"]  # column order, not sorted
    survival = pd.DataFrame(columns=["slide_id", "case_id", "time", "event", "risk", "hazard_0"])
    assert task_of(survival) == "survival"
    with pytest.raises(ValueError, match="prob_"):
        task_of(pd.DataFrame(columns=["slide_id", "case_id", "time", "risk"]))


def test_case_level_averages_slides_of_a_case():
    slides = pd.DataFrame(
        {
            "slide_id": ["s1", "s2", "s3", "s4"],
            "case_id": ["k2", "k1", "k1", "k3"],
            "truth": ["a", "b", "b", "a"],
            "prob_a": [0.9, 0.2, 0.6, 0.3],
            "prob_b": [0.1, 0.8, 0.4, 0.7],
        }
    )
    cases = case_level(slides)
    assert list(cases.columns) == ["case_id", "truth", "prob_a", "prob_b"]
    assert cases["case_id"].tolist() == ["k1", "k2", "k3"]
    np.testing.assert_allclose(cases["prob_a"], [0.4, 0.9, 0.3])  # k1: (0.2 + 0.6) / 2
    np.testing.assert_allclose(cases["prob_b"], [0.6, 0.1, 0.7])
    assert cases["truth"].tolist() == ["b", "a", "a"]
    pd.testing.assert_frame_equal(case_level(cases), cases)


def test_case_level_survival_drops_extra_columns_and_rejects_conflicts():
    slides = pd.DataFrame(
        {
            "slide_id": ["s1", "s2", "s3"],
            "case_id": ["k1", "k1", "k2"],
            "time": [5.0, 5.0, 2.0],
            "event": [1, 1, 0],
            "risk": [1.0, 2.0, -1.0],
            "hazard_0": [0.1, 0.2, 0.3],
        }
    )
    cases = case_level(slides)
    assert list(cases.columns) == ["case_id", "time", "event", "risk"]
    np.testing.assert_allclose(cases["risk"], [1.5, -1.0])
    slides.loc[1, "event"] = 0
    with pytest.raises(ValueError, match="k1"):
        case_level(slides)


# --- classification --------------------------------------------------------------------------


def test_binary_metrics_by_hand():
    # p(b) = 0.1 0.4 0.6 0.8 for truth a b a b. Positive/negative pairs: 0.4 > 0.1 yes,
    # 0.4 > 0.6 no, 0.8 > 0.1 yes, 0.8 > 0.6 yes -> AUC 3/4.
    # Predicted a a b b: correct rows 0 and 3 -> accuracy 1/2; recall a 1/2, b 1/2 ->
    # balanced 1/2; F1 a = 2*1 / (2*1 + 1 + 1) = 1/2, F1 b likewise -> macro 1/2.
    p_b = np.array([0.1, 0.4, 0.6, 0.8])
    metrics = classification_metrics(["a", "b", "a", "b"], np.c_[1 - p_b, p_b], ["a", "b"])
    assert list(metrics) == list(METRICS["classification"])
    assert metrics == pytest.approx(
        {"auc": 0.75, "balanced_accuracy": 0.5, "f1_macro": 0.5, "accuracy": 0.5}
    )
    # The second class is the positive one: swapping the class order flips the AUC.
    swapped = classification_metrics(["a", "b", "a", "b"], np.c_[p_b, 1 - p_b], ["b", "a"])
    assert swapped["auc"] == pytest.approx(0.75)


def test_three_class_metrics_by_hand():
    # One-vs-rest AUCs (pairs positive > negative, ties 1/2):
    #   x: positives 0.7, 0.3 vs 0.2 0.5 0.1 0.4 0.1 -> 5 + 3 = 8 of 10 -> 0.8
    #   y: positives 0.6, 0.3 vs 0.2 0.5 0.3 0.1 0.7 -> 4 + (2 + tie 0.5) = 6.5 of 10 -> 0.65
    #   z: positives 0.6, 0.5, 0.2 vs 0.1 0.2 0.2 0.2 -> 4 + 4 + (1 + 3 ties) = 10.5/12 -> 0.875
    #   macro = (0.8 + 0.65 + 0.875) / 3 = 0.775
    # Predicted x y y x z z y vs truth x x y y z z z: correct 0, 2, 4, 5 -> accuracy 4/7.
    # Recall x 1/2, y 1/2, z 2/3 -> balanced (1/2 + 1/2 + 2/3) / 3 = 5/9.
    # F1 = 2tp / (2tp + fp + fn): x 2/(2+1+1) = 0.5, y 2/(2+2+1) = 0.4, z 4/(4+0+1) = 0.8
    # -> macro 1.7 / 3.
    metrics = classification_metrics(TRUTH_3, PROBS_3, ["x", "y", "z"])
    assert metrics == pytest.approx(
        {"auc": 0.775, "balanced_accuracy": 5 / 9, "f1_macro": 1.7 / 3, "accuracy": 4 / 7}
    )
    # Equal to sklearn's own multi_class="ovr" with all labels.
    ovr = roc_auc_score([0, 0, 1, 1, 2, 2, 2], PROBS_3, multi_class="ovr", labels=range(3))
    assert metrics["auc"] == pytest.approx(ovr)


@pytest.mark.filterwarnings("ignore:A single label was found")
def test_auc_undefined_or_over_present_classes():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)  # NaN without sklearn's warning
        one_class = classification_metrics(["a", "a", "a"], np.full((3, 2), 0.5), ["a", "b"])
    assert math.isnan(one_class["auc"])
    assert one_class["accuracy"] == 1.0  # argmax of a tie is the first class
    # Class z absent: the macro AUC over x and y only. By hand on rows 0-3:
    #   x: 0.7, 0.3 vs 0.2, 0.5 -> 2 + 1 = 3 of 4; y: 0.6, 0.3 vs 0.2, 0.5 -> 2 + 1 = 3 of 4.
    absent = classification_metrics(TRUTH_3[:4], PROBS_3[:4], ["x", "y", "z"])
    assert absent["auc"] == pytest.approx(0.75)


def test_classification_rejects_unknown_classes_and_bad_shapes():
    with pytest.raises(ValueError, match="'c'"):
        classification_metrics(["a", "c"], np.full((2, 2), 0.5), ["a", "b"])
    with pytest.raises(ValueError, match="probs"):
        classification_metrics(["a", "b"], np.full((2, 3), 1 / 3), ["a", "b"])


# --- survival --------------------------------------------------------------------------------


def test_harrell_c_by_hand():
    # Subjects A..D: (time, event, risk) = (1, 1, .85) (2, 0, .5) (3, 1, .8) (4, 0, .8).
    # Comparable pairs (the shorter time is an event): A-B, A-C, A-D, C-D; B is censored at 2,
    # so B-C and B-D are not comparable. A is riskier than B, C and D: 3 concordant; C and D
    # tie in risk: 1/2. C = 3.5 / 4. (Treating B as an event would add two discordant pairs.)
    metrics = survival_metrics([1, 2, 3, 4], [1, 0, 1, 0], [0.85, 0.5, 0.8, 0.8])
    assert metrics == {"c_index": pytest.approx(0.875)}
    # Higher risk = shorter survival: perfect and reversed orderings.
    assert survival_metrics([1, 2, 3], [1, 1, 1], [3, 2, 1])["c_index"] == 1.0
    assert survival_metrics([1, 2, 3], [1, 1, 1], [1, 2, 3])["c_index"] == 0.0


def test_harrell_c_undefined():
    assert math.isnan(survival_metrics([1, 2, 3], [0, 0, 0], [1, 2, 3])["c_index"])
    # The only event is the longest time: nothing to compare it with.
    assert math.isnan(survival_metrics([1, 2, 3], [0, 0, 1], [1, 2, 3])["c_index"])


# --- fold metrics ----------------------------------------------------------------------------


def test_fold_metrics_structure():
    slides = classification_table(20, n_classes=3, slides_per_case=2)
    result = fold_metrics(slides)
    assert set(result) == {"task", "level", "n_cases", "n_slides"}
    assert result["task"] == "classification"
    assert (result["n_cases"], result["n_slides"]) == (20, 40)
    assert set(result["level"]) == {"case", "slide"}
    for level in ("case", "slide"):
        assert list(result["level"][level]) == list(METRICS["classification"])
    assert result["level"]["case"] == compute_metrics(case_level(slides))
    assert result["level"]["slide"] == compute_metrics(slides)
    assert result["level"]["case"] != result["level"]["slide"]
    json.loads(json.dumps(result))  # plain JSON types

    survival = fold_metrics(survival_table(30))
    assert survival["task"] == "survival"
    assert list(survival["level"]["case"]) == ["c_index"]


def test_compute_metrics_reads_numeric_class_names():
    table = pd.DataFrame({"case_id": ["1", "2"], "truth": [0, 1], "prob_0": [0.8, 0.3]})
    table["prob_1"] = 1 - table["prob_0"]
    assert compute_metrics(table)["auc"] == 1.0


# --- bootstrap -------------------------------------------------------------------------------


@pytest.mark.parametrize("n_classes", [2, 3, 4])
def test_resample_metrics_equal_compute_metrics(n_classes):
    # 7 cases: many resamples miss a class, in the truth or in the predictions.
    cases = classification_table(7, n_classes=n_classes, signal=0.5, seed=n_classes)
    indices = np.random.default_rng(1).integers(0, 7, (60, 7))
    fast = resample_metrics(cases, indices)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the classes a resample lacks
        slow = pd.DataFrame([compute_metrics(cases.iloc[i]) for i in indices])
    pd.testing.assert_frame_equal(fast, slow)


def test_resample_metrics_survival():
    cases = survival_table(6)
    indices = np.random.default_rng(2).integers(0, 6, (50, 6))
    slow = pd.DataFrame([compute_metrics(cases.iloc[i]) for i in indices])
    pd.testing.assert_frame_equal(resample_metrics(cases, indices), slow)


def test_bootstrap_is_deterministic():
    cases = classification_table(60)
    ci = bootstrap_ci(cases, n_boot=100, seed=3)
    assert ci == bootstrap_ci(cases, n_boot=100, seed=3)
    assert ci != bootstrap_ci(cases, n_boot=100, seed=4)


def test_bootstrap_covers_the_estimate():
    cases = case_level(classification_table(120, n_classes=3, slides_per_case=2))
    ci = bootstrap_ci(cases, n_boot=200)
    point = compute_metrics(cases)
    assert list(ci) == list(METRICS["classification"])
    for metric, (low, high) in ci.items():
        assert low < point[metric] < high, metric

    survival = survival_table(150)
    (low, high) = bootstrap_ci(survival, n_boot=200)["c_index"]
    assert low < compute_metrics(survival)["c_index"] < high


def test_bootstrap_narrower_with_more_cases():
    def width(n_cases):
        low, high = bootstrap_ci(classification_table(n_cases, seed=5), n_boot=200)["auc"]
        return high - low

    assert width(400) < width(50) / 2  # width ~ 1 / sqrt(n): about a third


def test_bootstrap_skips_undefined_resamples():
    # 1 case of class b among 6: a resample misses it with chance (5/6)^6 = 1/3.
    cases = pd.DataFrame({"case_id": list("abcdef"), "truth": list("aaaaab")})
    cases["prob_a"] = [0.9, 0.8, 0.7, 0.6, 0.5, 0.2]
    cases["prob_b"] = 1 - cases["prob_a"]
    ci = bootstrap_ci(cases, n_boot=200)
    assert ci["auc"] == (1.0, 1.0)
    none_defined = bootstrap_ci(cases.iloc[:5], n_boot=20)["auc"]
    assert all(math.isnan(bound) for bound in none_defined)

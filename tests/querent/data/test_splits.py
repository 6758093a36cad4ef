import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extractors.errors import CohortError, SettingsError
from querent.data.cohort import CohortSettings, read_cohort
from querent.data.splits import (
    SplitSettings,
    fold_slides,
    make_splits,
    read_splits,
    write_splits,
)


def _write_cohort(folder, labels, slides_per_case, name="cohort.csv"):
    """A classification sheet: case i has label labels[i] and slides_per_case[i] slides."""
    rows = [
        (f"S{case:03d}-{s}", f"P{case:03d}", label)
        for case, (label, n) in enumerate(zip(labels, slides_per_case, strict=True))
        for s in range(n)
    ]
    rows = [rows[i] for i in np.random.default_rng(len(rows)).permutation(len(rows))]
    path = folder / name
    pd.DataFrame(rows, columns=["slide_id", "case_id", "label"]).to_csv(path, index=False)
    return read_cohort(path, CohortSettings())


@st.composite
def split_problems(draw, min_cases=10):
    """A cohort (as labels and slides per case) with every class large enough, and settings."""
    folds = draw(st.integers(2, 5))
    test_fraction = draw(st.sampled_from([0.0, 0.0, 0.1, 0.3]))
    n_classes = draw(st.integers(2, 4))
    least = max(math.ceil((folds + 2) / (1 - test_fraction)), math.ceil(min_cases / n_classes))
    if test_fraction:  # the test set must be able to hold one case of each class
        least = max(least, math.ceil(1 / test_fraction))
    counts = [draw(st.integers(least, 80 // n_classes)) for _ in range(n_classes)]
    labels = draw(st.permutations([f"c{i}" for i, n in enumerate(counts) for _ in range(n)]))
    slides = draw(st.lists(st.integers(1, 3), min_size=len(labels), max_size=len(labels)))
    split = SplitSettings(
        folds=folds, seed=draw(st.integers(0, 2**16)), test_fraction=test_fraction
    )
    return labels, slides, split


def _case_folds(splits):
    return splits.drop_duplicates("case_id").set_index("case_id")["fold"]


@settings(max_examples=40, deadline=None)
@given(problem=split_problems())
def test_split_invariants(tmp_path_factory, problem):
    labels, slides, split = problem
    folder = tmp_path_factory.mktemp("splits")
    cohort = _write_cohort(folder, labels, slides)
    splits = make_splits(cohort, split)

    # every slide exactly once, with its own case, sorted
    assert list(splits.columns) == ["slide_id", "case_id", "fold"]
    assert splits["slide_id"].tolist() == cohort.slide_ids
    assert splits["case_id"].tolist() == cohort.table["case_id"].tolist()
    # no case in two folds
    assert (splits.groupby("case_id")["fold"].nunique() == 1).all()
    names = set(splits["fold"])
    assert names - {"test"} == {str(i) for i in range(split.folds)}
    assert ("test" in names) == (split.test_fraction > 0)
    # per class, each fold holds within one of the ideal share of the non-test cases
    cases = cohort.cases().assign(fold=lambda t: t["case_id"].map(_case_folds(splits)))
    cv = cases.loc[cases["fold"] != "test"]
    table = pd.crosstab(cv["label"], cv["fold"])
    assert table.shape == (len(set(labels)), split.folds)
    for label, row in table.iterrows():
        ideal = row.sum() / split.folds
        assert (row >= math.floor(ideal)).all() and (row <= math.ceil(ideal)).all(), (label, row)
    if split.test_fraction > 0:
        n_test = (cases["fold"] == "test").sum()
        assert n_test == math.ceil(split.test_fraction * len(cases))
    # deterministic
    pd.testing.assert_frame_equal(make_splits(cohort, split), splits)
    # round trip through the file
    path = folder / "out" / "splits.csv"
    write_splits(splits, path)
    pd.testing.assert_frame_equal(read_splits(path, cohort), splits)

    cv_slides = set(splits.loc[splits["fold"] != "test", "slide_id"])
    case_of = dict(zip(cohort.slide_ids, cohort.table["case_id"], strict=True))
    for fold in range(split.folds):
        train, val, evaluation = fold_slides(splits, cohort, fold, val_fraction=0.2, seed=3)
        assert train and val and evaluation
        assert all(part == sorted(part) for part in (train, val, evaluation))
        assert set(evaluation) == set(splits.loc[splits["fold"] == str(fold), "slide_id"])
        assert len(train) + len(val) + len(evaluation) == len(cv_slides)
        assert set(train) | set(val) | set(evaluation) == cv_slides
        groups = [{case_of[s] for s in part} for part in (train, val, evaluation)]
        assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
        n_other = len(groups[0]) + len(groups[1])
        assert len(groups[1]) == math.ceil(0.2 * n_other)
        again = fold_slides(splits, cohort, fold, val_fraction=0.2, seed=3)
        assert again == (train, val, evaluation)


@settings(max_examples=15, deadline=None)
@given(problem=split_problems(min_cases=40))
def test_another_seed_gives_another_assignment(tmp_path_factory, problem):
    labels, slides, split = problem
    cohort = _write_cohort(tmp_path_factory.mktemp("seeds"), labels, slides)
    other = SplitSettings(folds=split.folds, seed=split.seed + 1, test_fraction=split.test_fraction)
    assert not make_splits(cohort, split).equals(make_splits(cohort, other))


def test_fold_slides_validation_depends_on_seed_and_fold(tmp_path):
    cohort = _write_cohort(tmp_path, ["a", "b"] * 30, [1] * 60)
    splits = make_splits(cohort, SplitSettings(folds=3))
    _, val0, _ = fold_slides(splits, cohort, 0, val_fraction=0.2, seed=0)
    _, val1, _ = fold_slides(splits, cohort, 0, val_fraction=0.2, seed=1)
    assert val0 != val1
    # stratified: both classes carved out evenly (40 cases, 8 for validation)
    labels = cohort.table.set_index("slide_id").loc[val0, "label"]
    assert labels.value_counts().to_dict() == {"a": 4, "b": 4}
    with pytest.raises(CohortError, match="fold 3 is not in the splits"):
        fold_slides(splits, cohort, 3, val_fraction=0.2, seed=0)


def test_survival_folds_balance_events(tmp_path):
    rng = np.random.default_rng(1)
    events = rng.permutation([1] * 23 + [0] * 17)
    rows = [(f"S{i}", f"P{i}", float(rng.integers(1, 100)), e) for i, e in enumerate(events)]
    path = tmp_path / "survival.csv"
    pd.DataFrame(rows, columns=["slide_id", "case_id", "time", "event"]).to_csv(path, index=False)
    cohort = read_cohort(path, CohortSettings(task="survival"))
    splits = make_splits(cohort, SplitSettings(folds=4, seed=5))
    per_fold = (
        splits.assign(event=cohort.table["event"]).groupby("fold")["event"].agg(["sum", "size"])
    )
    assert per_fold["sum"].between(5, 6).all() and per_fold["size"].eq(10).all()


def test_survival_with_few_censored_cases_splits_without_warnings(tmp_path):
    rows = [(f"S{i}", f"P{i}", 10.0 + i, int(i > 0)) for i in range(12)]
    path = tmp_path / "survival.csv"
    pd.DataFrame(rows, columns=["slide_id", "case_id", "time", "event"]).to_csv(path, index=False)
    cohort = read_cohort(path, CohortSettings(task="survival"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splits = make_splits(cohort, SplitSettings(folds=3, test_fraction=0.2))
        fold_slides(splits, cohort, 0, val_fraction=0.3, seed=0)
    assert splits["fold"].value_counts().to_dict() == {"test": 3, "0": 3, "1": 3, "2": 3}


def _regression_cohort(folder, values, slides_per_case=1):
    rows = [
        (f"S{case:03d}-{s}", f"P{case:03d}", value)
        for case, value in enumerate(values)
        for s in range(slides_per_case + case % 2)
    ]
    path = folder / "regression.csv"
    pd.DataFrame(rows, columns=["slide_id", "case_id", "value"]).to_csv(path, index=False)
    return read_cohort(path, CohortSettings(task="regression", target="value"))


def test_regression_folds_are_stratified_on_quantile_bins(tmp_path):
    values = np.random.default_rng(3).permutation(40) * 1.5
    cohort = _regression_cohort(tmp_path, values)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splits = make_splits(cohort, SplitSettings(folds=4, seed=2))
        train, val, held = fold_slides(splits, cohort, 0, val_fraction=0.2, seed=0)
    folds = _case_folds(splits)
    quintile = (cohort.cases().set_index("case_id")["target"].rank() - 1) // 8
    per_bin = pd.crosstab(quintile, folds.loc[quintile.index])
    assert per_bin.shape == (5, 4) and (per_bin == 2).all().all()  # 8 cases a bin, 2 per fold
    assert not set(train) & set(val) and not (set(train) | set(val)) & set(held)


def test_regression_with_tied_values_uses_fewer_bins(tmp_path):
    # 4 quartile bins would leave 2 cases (the two 3.0) in a bin, fewer than the 3 folds
    cohort = _regression_cohort(tmp_path, [0.0] + [1.0] * 5 + [2.0] * 4 + [3.0] * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # StratifiedKFold warns of a bin smaller than the folds
        splits = make_splits(cohort, SplitSettings(folds=3))
    assert _case_folds(splits).value_counts().tolist() == [4, 4, 4]


def test_regression_with_fewer_cases_than_folds(tmp_path):
    cohort = _regression_cohort(tmp_path, [1.0, 2.0])
    with pytest.raises(CohortError, match="3 folds need at least 3 cases; there are 2"):
        make_splits(cohort, SplitSettings(folds=3))


# --- errors ----------------------------------------------------------------------------------


def test_too_few_cases_in_a_class(tmp_path):
    cohort = _write_cohort(tmp_path, ["a"] * 10 + ["b"] * 3, [2] * 13)
    with pytest.raises(CohortError, match=r"'b' \(3 cases\)") as info:
        make_splits(cohort, SplitSettings(folds=4))
    assert "'a'" not in str(info.value) and "fewer folds" in str(info.value)
    make_splits(cohort, SplitSettings(folds=3))


def test_declared_class_without_cases(tmp_path):
    path = tmp_path / "c.csv"
    pd.DataFrame(
        {"slide_id": [f"S{i}" for i in range(8)], "case_id": range(8), "label": ["a", "b"] * 4}
    ).to_csv(path, index=False)
    cohort = read_cohort(path, CohortSettings(classes=("a", "b", "c")))
    with pytest.raises(CohortError, match=r"'c' \(0 cases\)"):
        make_splits(cohort, SplitSettings(folds=2))


def test_too_few_cases_outside_the_test_set(tmp_path):
    cohort = _write_cohort(tmp_path, ["a", "b"] * 5, [1] * 10)
    make_splits(cohort, SplitSettings(folds=5))
    with pytest.raises(CohortError, match="outside the test set"):
        make_splits(cohort, SplitSettings(folds=5, test_fraction=0.2))


def test_test_set_smaller_than_the_strata(tmp_path):
    cohort = _write_cohort(tmp_path, ["a", "b", "c"] * 10, [1] * 30)
    with pytest.raises(CohortError, match="fewer than the 3 strata"):
        make_splits(cohort, SplitSettings(folds=2, test_fraction=0.05))


def test_too_few_events(tmp_path):
    rows = [(f"S{i}", f"P{i}", 10.0, int(i < 2)) for i in range(12)]
    path = tmp_path / "survival.csv"
    pd.DataFrame(rows, columns=["slide_id", "case_id", "time", "event"]).to_csv(path, index=False)
    cohort = read_cohort(path, CohortSettings(task="survival"))
    with pytest.raises(CohortError, match="there are 2"):
        make_splits(cohort, SplitSettings(folds=3))


def test_split_settings_are_checked():
    for bad in ({"folds": 1}, {"test_fraction": 0.5}, {"val_fraction": 0.0}, {"folds": 2.5}):
        with pytest.raises(SettingsError):
            SplitSettings(**bad)


@pytest.fixture
def small(tmp_path):
    cohort = _write_cohort(tmp_path, ["a", "b"] * 6, [2] * 12)
    splits = make_splits(cohort, SplitSettings(folds=3))
    return cohort, splits, tmp_path / "splits.csv"


def _read_error(cohort, splits, path):
    splits.to_csv(path, index=False)
    with pytest.raises(CohortError) as info:
        read_splits(path, cohort)
    assert str(path) in str(info.value) and "Fix:" in str(info.value)
    return str(info.value)


def test_read_splits_catches_a_case_in_two_folds(small):
    cohort, splits, path = small
    first = splits.index[splits["case_id"] == "P004"][0]
    fold = splits.loc[first, "fold"]
    splits.loc[first, "fold"] = "test" if fold != "test" else "0"
    message = _read_error(cohort, splits, path)
    assert "P004 (folds" in message and "test" in message and "P005" not in message


def test_read_splits_catches_missing_and_unknown_slides(small):
    cohort, splits, path = small
    message = _read_error(cohort, splits.drop(index=[3, 5]), path)
    missing = sorted(splits.loc[[3, 5], "slide_id"])
    assert f"without a fold: {missing[0]}, {missing[1]}" in message
    extra = pd.DataFrame({"slide_id": ["X1"], "case_id": ["P999"], "fold": ["0"]})
    assert "X1" in _read_error(cohort, pd.concat([splits, extra]), path)


def test_read_splits_catches_bad_content(small):
    cohort, splits, path = small
    wrong_case = splits.assign(case_id=splits["case_id"].where(splits.index != 0, "P777"))
    assert "P777" in _read_error(cohort, wrong_case, path)
    bad_fold = splits.assign(fold=splits["fold"].where(splits.index != 2, "x"))
    assert "line 4 ('x')" in _read_error(cohort, bad_fold, path)
    gap = splits.assign(fold=splits["fold"].replace("1", "7"))
    assert "0, 2, 7" in _read_error(cohort, gap, path)
    one = splits.assign(fold="0")
    assert "k >= 2" in _read_error(cohort, one, path)
    assert "fold" in _read_error(cohort, splits.drop(columns="fold"), path)
    assert "twice" in _read_error(cohort, pd.concat([splits, splits.iloc[:1]]), path)


def test_read_splits_accepts_a_users_file(small):
    cohort, splits, path = small
    mine = splits.assign(fold=splits["fold"].map({"0": "02", "1": "1", "2": "0"}))
    mine.iloc[::-1].to_csv(path, index=False)
    got = read_splits(path, cohort)
    assert got["slide_id"].tolist() == cohort.slide_ids
    assert got["fold"].tolist() == splits["fold"].map({"0": "2", "1": "1", "2": "0"}).tolist()
    with pytest.raises(CohortError, match="not found"):
        read_splits(path.with_name("nope.csv"), cohort)

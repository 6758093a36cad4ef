"""Patient-level, stratified cross-validation folds, a held-out test set, and validation cases.

Splits are made at the case (patient) level: one row per case, so every slide of a case lands
in the case's fold. An optional held-out ``test`` share of the cases is drawn first
(scikit-learn's ``train_test_split`` with ``stratify``), then ``StratifiedKFold`` deals the
remaining cases into ``k`` folds, stratified on the case's class (several label columns: its
class in the first; survival: its event; regression: the quantile bin of its value, as
scikit-learn's users bin a continuous target to stratify it). With one row per case this is
the grouping ``StratifiedGroupKFold`` does, with an exact guarantee: in every fold, the cases
of each stratum number within one of (cases of the stratum) / k, where
``StratifiedGroupKFold`` only balances greedily.

The split file ``splits.csv`` has columns ``slide_id, case_id, fold``; ``fold`` is ``0..k-1`` or
``test``. A person may bring their own; :func:`read_splits` checks it against the cohort.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from extractors.errors import CohortError, SettingsError
from extractors.io import atomic_path
from querent.data.cohort import REGRESSION_STRATA, Cohort, format_items, read_table

logger = logging.getLogger(__name__)

COLUMNS = ["slide_id", "case_id", "fold"]
TEST = "test"


@dataclass(frozen=True)
class SplitSettings:
    """The config section ``splits``."""

    folds: int = field(default=5, metadata={"help": "cross-validation folds (k)"})
    seed: int = field(default=0, metadata={"help": "random seed of the fold assignment"})
    test_fraction: float = field(
        default=0.0,
        metadata={"help": "share of cases held out as `test` before the folds (0: none)"},
    )
    file: str = field(
        default="",
        metadata={
            "help": "your own split file (slide_id, case_id, fold) instead of generated folds"
        },
    )
    val_fraction: float = field(
        default=0.2,
        metadata={"help": "share of the training cases carved out (by case) for model selection"},
    )

    def __post_init__(self) -> None:
        """Check the ranges."""
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
            raise SettingsError(f"splits.folds must be an integer >= 2, not {self.folds!r}")
        if not 0 <= self.test_fraction < 0.5:
            raise SettingsError(
                f"splits.test_fraction must be in [0, 0.5), not {self.test_fraction!r}"
            )
        if not 0 < self.val_fraction < 0.5:
            raise SettingsError(
                f"splits.val_fraction must be in (0, 0.5), not {self.val_fraction!r}"
            )


def _case_strata(cohort: Cohort, folds: int, where: str = "") -> pd.Series:
    """The stratum of each case; raises when a stratum has too few cases for ``folds`` folds.

    Survival cases are stratified on their event, unless fewer than ``folds`` are censored
    (then all cases form one stratum, and only the events must fill every fold). Regression
    cases are stratified on quantile bins of their value, as many (up to
    :data:`~querent.data.cohort.REGRESSION_STRATA`) as leave ``folds`` cases in every bin.
    """
    fix = " lower splits.test_fraction," if where else ""
    if cohort.task == "regression":
        return _regression_strata(cohort, folds, where, fix)
    strata = cohort.strata()
    counts = strata.value_counts()
    if cohort.task == "classification":
        short = [
            f"{name!r} ({counts.get(i, 0)} cases)"
            for i, name in enumerate(cohort.classes)
            if counts.get(i, 0) < folds
        ]
        if short:
            raise CohortError(
                f"{cohort.source}: {folds} folds need at least {folds} cases per class{where}; too "
                f"few in {format_items(short)}. Fix: fewer folds (splits.folds),{fix} merge "
                "classes, or drop the class from cohort.classes."
            )
        return strata
    events, censored = int(counts.get(1, 0)), int(counts.get(0, 0))
    if events < folds:
        raise CohortError(
            f"{cohort.source}: {folds} folds need at least {folds} cases with an event{where} "
            f"(for the C-index of every fold); there are {events}. Fix: fewer folds "
            f"(splits.folds){' or' + fix.rstrip(',') if where else ''}."
        )
    if 0 < censored < folds:
        logger.info("%d censored cases < %d folds: folds are not stratified", censored, folds)
        return strata * 0
    return strata


def _regression_strata(cohort: Cohort, folds: int, where: str, fix: str) -> pd.Series:
    """Quantile bins of the cases' values, the most that hold ``folds`` cases each."""
    n_cases = len(cohort.cases())
    if n_cases < folds:
        raise CohortError(
            f"{cohort.source}: {folds} folds need at least {folds} cases{where}; there are "
            f"{n_cases}. Fix: fewer folds (splits.folds){' or' + fix.rstrip(',') if where else ''}."
        )
    for bins in range(min(REGRESSION_STRATA, n_cases // folds), 1, -1):
        strata = cohort.strata(bins)
        if strata.value_counts().min() >= folds:
            return strata
    return cohort.strata(1)


def make_splits(cohort: Cohort, settings: SplitSettings) -> pd.DataFrame:
    """Deal the cases of ``cohort`` into folds (and an optional held-out test set).

    Returns:
        Columns ``slide_id, case_id, fold`` (``"0".."k-1"`` or ``"test"``), sorted by slide id.

    Raises:
        CohortError: A class (survival: the events) has fewer cases than folds, or the test set
            is too small to hold every stratum; the message names them and the fix.
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split  # slow to import

    k = settings.folds
    strata = _case_strata(cohort, k)
    fold = pd.Series("", index=strata.index, dtype=object)
    remaining = strata
    if settings.test_fraction > 0:
        n_test = math.ceil(settings.test_fraction * len(strata))
        n_strata = strata.nunique()
        if n_test < n_strata:
            least = math.ceil(100 * n_strata / len(strata)) / 100
            raise CohortError(
                f"{cohort.source}: test_fraction {settings.test_fraction} holds out {n_test} "
                f"of {len(strata)} cases, fewer than the {n_strata} strata. Fix: raise "
                f"splits.test_fraction to at least {least}, or set it to 0."
            )
        remaining, test = train_test_split(
            strata, test_size=n_test, stratify=strata, random_state=settings.seed
        )
        fold[test.index] = TEST
        rest = cohort.subset(_slides_of(cohort, remaining.index))
        remaining = _case_strata(rest, k, " outside the test set")
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=settings.seed)
    for i, (_, held) in enumerate(folds.split(np.zeros(len(remaining)), remaining.to_numpy())):
        fold[remaining.index[held]] = str(i)
    table = cohort.table[["slide_id", "case_id"]]
    splits = table.assign(fold=table["case_id"].map(fold).astype(str))
    counts = splits.drop_duplicates("case_id")["fold"].value_counts().sort_index()
    logger.info("splits: %s cases per fold", counts.to_dict())
    return splits.sort_values("slide_id").reset_index(drop=True)[COLUMNS]


def check_splits(cohort: Cohort, settings: SplitSettings) -> None:
    """Raise what :func:`make_splits` would, without scikit-learn unless a test set is drawn.

    The workflow calls this while it plans, where importing scikit-learn would cost seconds.
    """
    if settings.test_fraction > 0:  # what is left for the folds depends on the test draw
        make_splits(cohort, settings)
    else:
        _case_strata(cohort, settings.folds)


def split_cohort(cohort: Cohort, settings: SplitSettings) -> pd.DataFrame:
    """The cohort's splits: the user's ``settings.file`` (checked), else new folds."""
    if settings.file:
        return read_splits(settings.file, cohort)
    return make_splits(cohort, settings)


def _slides_of(cohort: Cohort, cases: pd.Index) -> list[str]:
    return cohort.table.loc[cohort.table["case_id"].isin(cases), "slide_id"].tolist()


def write_splits(splits: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``splits`` as CSV (atomic)."""
    with atomic_path(path) as tmp:
        splits[COLUMNS].to_csv(tmp, index=False)


def _fail(path: object, problem: str, fix: str) -> CohortError:
    return CohortError(f"split file {path}: {problem}. Fix: {fix}")


def _normalise_folds(splits: pd.DataFrame, path: Path) -> pd.Series:
    """Fold values as ``"test"`` or ``"0".."k-1"``; raises on anything else."""
    fold = splits["fold"].where(splits["fold"].str.lower() != TEST, TEST)
    numeric = fold.str.fullmatch(r"\d+")
    bad = splits.loc[~numeric & (fold != TEST)]
    if len(bad):
        items = (f"line {i + 2} ({v!r})" for i, v in bad["fold"].items())
        raise _fail(path, f"folds must be 0..k-1 or 'test': {format_items(items)}", "fix them")
    fold = fold.where(~numeric, fold[numeric].astype(int).astype(str))
    found = sorted({int(v) for v in fold if v != TEST})
    if len(found) < 2 or found != list(range(len(found))):
        raise _fail(
            path,
            f"fold numbers {format_items(found)} are not 0..k-1 with k >= 2",
            "number the folds 0, 1, ..., k-1 without gaps",
        )
    return fold


def read_splits(path: str | os.PathLike, cohort: Cohort) -> pd.DataFrame:
    """Read and check a split file (ours or a person's own) against ``cohort``.

    Returns:
        Columns ``slide_id, case_id, fold`` (string), sorted by slide id, as
        :func:`make_splits` returns them.

    Raises:
        CohortError: The file is missing, lacks columns, misses slides of the cohort, names
            unknown slides, disagrees on a slide's case, has bad fold values, or puts a case in
            two folds; the message names them and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "not found", "run make_splits, or set splits.file to an existing CSV")
    splits = read_table(path, "split file")
    absent = [column for column in COLUMNS if column not in splits.columns]
    if absent:
        raise _fail(
            path,
            f"missing column(s) {', '.join(absent)}; it has {format_items(splits.columns)}",
            "give it the columns slide_id, case_id, fold",
        )
    splits = splits[COLUMNS].copy()
    doubled = splits.loc[splits["slide_id"].duplicated(), "slide_id"].unique()
    if len(doubled):
        raise _fail(path, f"slides listed twice: {format_items(doubled)}", "list each once")
    known = set(cohort.slide_ids)
    unknown = [s for s in splits["slide_id"] if s not in known]
    if unknown:
        raise _fail(
            path,
            f"slides not in the cohort sheet {cohort.source}: {format_items(unknown)}",
            "drop them from the split file, or add them to the sheet",
        )
    missing = sorted(known - set(splits["slide_id"]))
    if missing:
        raise _fail(
            path,
            f"cohort slides without a fold: {format_items(missing)}",
            "give every slide of the cohort sheet a fold (or drop it from the sheet)",
        )
    merged = splits.merge(cohort.table[["slide_id", "case_id"]], on="slide_id", suffixes=("", "_"))
    wrong = merged.loc[merged["case_id"] != merged["case_id_"]]
    if len(wrong):
        items = (f"{r.slide_id} ({r.case_id!r}, sheet {r.case_id_!r})" for r in wrong.itertuples())
        raise _fail(
            path,
            f"case ids that disagree with the cohort sheet: {format_items(items)}",
            "use the sheet's case ids",
        )
    splits["fold"] = _normalise_folds(splits, path)
    per_case = splits.groupby("case_id")["fold"].unique()
    split_cases = per_case[per_case.map(len) > 1]
    if len(split_cases):
        items = (f"{c} (folds {', '.join(sorted(f))})" for c, f in split_cases.items())
        raise _fail(
            path,
            f"cases in more than one fold: {format_items(items)}",
            "put every slide of a case in the same fold (patient-level splits)",
        )
    return splits.sort_values("slide_id").reset_index(drop=True)[COLUMNS]


def fold_slides(
    splits: pd.DataFrame, cohort: Cohort, fold: int, *, val_fraction: float, seed: int
) -> tuple[list[str], list[str], list[str]]:
    """The (train, validation, evaluation) slide ids for evaluating ``fold``, each sorted.

    Evaluation is fold ``fold``. Validation is a ``val_fraction`` share of the cases of the
    other folds (never ``test``), stratified when every stratum there has two or more cases,
    seeded by ``(seed, fold)``; train is the rest of the other folds.

    Raises:
        CohortError: ``fold`` is not in ``splits``, or the other folds hold fewer than two cases.
    """
    names = sorted({f for f in splits["fold"] if f != TEST}, key=int)
    if str(fold) not in names:
        raise CohortError(f"fold {fold} is not in the splits (folds {', '.join(names)})")
    evaluation = splits.loc[splits["fold"] == str(fold), "slide_id"]
    others = splits.loc[~splits["fold"].isin([str(fold), TEST])]
    strata = cohort.strata().loc[sorted(others["case_id"].unique())]
    if len(strata) < 2:
        raise CohortError(
            f"{cohort.source}: the folds other than {fold} hold {len(strata)} case(s), too few "
            "to carve out validation cases. Fix: more cases per fold, or fewer folds."
        )
    from sklearn.model_selection import train_test_split  # slow to import

    n_val = math.ceil(val_fraction * len(strata))
    n_strata = strata.nunique()
    counts = strata.value_counts()
    stratify = strata if counts.min() >= 2 and min(n_val, len(strata) - n_val) >= n_strata else None
    state = int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])
    _, val_cases = train_test_split(
        strata.index.to_numpy(), test_size=n_val, stratify=stratify, random_state=state
    )
    in_val = others["case_id"].isin(val_cases)
    train = sorted(others.loc[~in_val, "slide_id"])
    return train, sorted(others.loc[in_val, "slide_id"]), sorted(evaluation)

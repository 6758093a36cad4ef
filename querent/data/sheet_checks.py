"""The checks of a cohort sheet's ids and target columns, one function per kind of target.

Each check takes the sheet as read (every cell a stripped string, index = data row, so row ``i``
is line ``i + 2`` of the file) and returns the problems it found, each a pair (what is wrong,
how to fix it) that names the lines or cases; :mod:`querent.data.cohort` reports them all at
once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from extractors.io import SLIDE_ID_PATTERN

if TYPE_CHECKING:
    from querent.data.cohort import CohortSettings

#: Cell values read as "no value" in the target columns.
MISSING = frozenset({"", "NA", "N/A", "NaN", "nan", "null", "NULL"})
_EVENTS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}

#: One problem of a sheet: (what is wrong, how to fix it).
Problem = tuple[str, str]


def format_items(items: Iterable[object], limit: int = 10) -> str:
    """Up to ``limit`` items joined by commas, then "and N more"."""
    items = [str(item) for item in items]
    shown = ", ".join(items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown


def sheet_lines(index: Iterable[int]) -> str:
    """Sheet line numbers of 0-based data rows (the header is line 1)."""
    return format_items(f"line {int(i) + 2}" for i in index)


def _valued_lines(values: pd.Series) -> str:
    """``line N ('value')`` for every row of ``values``."""
    return format_items(f"line {i + 2} ({v!r})" for i, v in values.items())


def check_ids(table: pd.DataFrame) -> list[Problem]:
    """Empty ids, slide ids unsafe in file names, and slides listed twice."""
    problems = []
    for column in ("slide_id", "case_id"):
        empty = table.index[table[column] == ""]
        if len(empty):
            problems.append((f"empty {column} at {sheet_lines(empty)}", f"fill in {column}"))
    named = table.loc[table["slide_id"] != ""]
    unsafe = named.loc[~named["slide_id"].str.fullmatch(SLIDE_ID_PATTERN)]
    if len(unsafe):
        bad = (f"{s!r} (line {i + 2})" for i, s in unsafe["slide_id"].items())
        problems.append(
            (
                f"slide ids unsafe in file names: {format_items(bad)}",
                "use letters, digits, '.', '_' and '-' only, first a letter or digit",
            )
        )
    doubled = named.loc[named["slide_id"].duplicated(keep=False)].groupby("slide_id").groups
    if doubled:
        bad = (f"{s} ({sheet_lines(rows)})" for s, rows in doubled.items())
        problems.append((f"duplicate slide ids: {format_items(bad)}", "list each slide once"))
    return problems


def inconsistent_cases(table: pd.DataFrame, columns: list[str]) -> list[str]:
    """``case (column values; ...)`` for each case whose slides disagree on ``columns``."""
    varying = table.groupby("case_id")[columns].nunique().gt(1).any(axis=1)
    out = []
    for case in varying.index[varying]:
        rows = table.loc[table["case_id"] == case]
        values = "; ".join(
            f"{c} {format_items(sorted(rows[c].astype(str).unique()))}" for c in columns
        )
        out.append(f"{case} ({values})")
    return out


def classification_problems(
    table: pd.DataFrame, settings: CohortSettings
) -> tuple[list[Problem], tuple[str, ...]]:
    """Problems of the ``label`` column, and the class order (settings' or sorted labels)."""
    return label_problems(table, settings.label, settings.classes)


def label_problems(
    table: pd.DataFrame,
    column: str,
    classes: tuple[str, ...] | None,
    *,
    where: str = "",
    key: str = "cohort.classes",
    missing_ok: bool = False,
) -> tuple[list[Problem], tuple[str, ...]]:
    """Problems of the labels ``table["label"]`` (sheet column ``column``), and the class order.

    ``where`` names the column in the messages of a sheet with several label columns, ``key``
    the setting that orders its classes. With ``missing_ok`` an empty cell is an unknown label,
    and the slides of a case must agree on that too.
    """
    problems = []
    missing = table["label"].isin(MISSING)
    if missing.any() and not missing_ok:
        problems.append(
            (f"missing labels at {sheet_lines(table.index[missing])}", "fill in or drop those rows")
        )
    labelled = table.loc[~missing]
    if classes is not None:
        foreign = labelled.loc[~labelled["label"].isin(classes)].groupby("label").groups
        if foreign:
            bad = (f"{label!r} ({sheet_lines(rows)})" for label, rows in foreign.items())
            problems.append(
                (
                    f"labels{where} not in {key} ({', '.join(classes)}): {format_items(bad)}",
                    f"add them to {key} or correct the sheet",
                )
            )
    present = sorted(labelled["label"].unique())
    if len(present) < 2:
        problems.append(
            (
                f"only one class ({present[0]!r}) in column {column!r}"
                if present
                else f"no label in column {column!r}",
                "a classifier needs two or more classes; check that cohort.label names the label",
            )
        )
    checked = (
        table.assign(label=table["label"].where(~missing, "(empty)")) if missing_ok else labelled
    )
    conflicts = inconsistent_cases(checked, ["label"])
    if conflicts:
        problems.append(
            (
                f"cases with different labels{where} on their slides: {format_items(conflicts)}",
                "give every slide of a case the case's label"
                + (" (or leave it empty on all)" if missing_ok else ""),
            )
        )
    return problems, classes if classes is not None else tuple(present)


def survival_problems(
    table: pd.DataFrame, settings: CohortSettings
) -> tuple[list[Problem], pd.DataFrame]:
    """Problems of the ``time`` and ``event`` columns, and the valid rows parsed."""
    problems = []
    text = table["time"]
    time = pd.to_numeric(text.where(~text.isin(MISSING)), errors="coerce")
    bad_time = ~np.isfinite(time) | (time <= 0)
    if bad_time.any():
        problems.append(
            (
                f"follow-up times in column {settings.time!r} must be numbers > 0: "
                f"{_valued_lines(text[bad_time])}",
                "fill in positive times (any unit) or drop those rows",
            )
        )
    event = table["event"].str.lower().map(_EVENTS)
    if event.isna().any():
        problems.append(
            (
                f"events in column {settings.event!r} must be 1 (event) or 0 (censored): "
                f"{_valued_lines(table['event'][event.isna()])}",
                "code events as 1/0 (or true/false)",
            )
        )
    valid = ~bad_time & event.notna()
    table = table.assign(time=time, event=event)
    checked = table.loc[valid].astype({"time": np.float64, "event": np.int64})
    conflicts = inconsistent_cases(checked, ["time", "event"])
    if conflicts:
        problems.append(
            (
                f"cases with different time or event on their slides: {format_items(conflicts)}",
                "give every slide of a case the case's follow-up",
            )
        )
    if event.notna().any() and not (event == 1).any():
        problems.append(
            (
                f"no event (every value in column {settings.event!r} is 0)",
                "survival metrics need events; code events as 1 and censored as 0",
            )
        )
    return problems, checked


def regression_problems(
    table: pd.DataFrame, settings: CohortSettings
) -> tuple[list[Problem], pd.DataFrame]:
    """Problems of the continuous ``target`` column, and the valid rows parsed as float64.

    A missing value, text that is not a number, and ``inf`` are each named with their lines; so
    are cases whose slides carry different values, and a column without two distinct values.
    """
    problems = []
    text = table["target"]
    missing = text.isin(MISSING)
    if missing.any():
        problems.append(
            (
                f"missing values in column {settings.target!r} at "
                f"{sheet_lines(table.index[missing])}",
                "fill in a number for every slide, or drop those rows",
            )
        )
    value = pd.to_numeric(text.where(~missing), errors="coerce")
    not_numbers = ~missing & ~np.isfinite(value)
    if not_numbers.any():
        problems.append(
            (
                f"values in column {settings.target!r} must be finite numbers: "
                f"{_valued_lines(text[not_numbers])}",
                "write plain numbers (decimal point '.', no units), or drop those rows",
            )
        )
    checked = table.assign(target=value).loc[np.isfinite(value)].astype({"target": np.float64})
    conflicts = inconsistent_cases(checked, ["target"])
    if conflicts:
        problems.append(
            (
                f"cases with different values on their slides: {format_items(conflicts)}",
                "give every slide of a case the case's value",
            )
        )
    distinct = checked["target"].nunique()
    if distinct < 2:
        problems.append(
            (
                f"column {settings.target!r} holds {'one value' if distinct else 'no number'}",
                "a regression needs values that differ; check that cohort.target names the "
                "column to predict",
            )
        )
    return problems, checked

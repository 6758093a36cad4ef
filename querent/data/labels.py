"""Several label columns on one model (multi-label classification): settings and sheet checks.

``cohort.label: [subtype, grade]`` names several label columns, each a target of its own
(binary or multi-class). Each target's classes are its sorted labels, or the order that
``cohort.classes: {grade: [low, high]}`` gives it. The first column stratifies the folds and
must be filled in on every slide; a later column may be left empty (or ``NA``) where a label is
unknown, and that target's loss and metrics leave the slide out. The slides of a case carry the
same label in every column, or are all empty there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from extractors.errors import SettingsError
from querent.data.sheet_checks import MISSING, Problem, format_items, label_problems, sheet_lines

if TYPE_CHECKING:
    from querent.data.cohort import CohortSettings

#: Between a target's name and its column in a predictions table: ``{target}:prob_{class}``.
SEPARATOR = ":"
#: Columns a target may not be named after.
RESERVED = ("slide_id", "case_id")


def class_order(classes: object, key: str) -> tuple[str, ...]:
    """A configured class order as strings; refuses a class listed twice or fewer than two.

    Raises:
        SettingsError: The message names ``key`` (``cohort.classes`` or one of its columns).
    """
    if isinstance(classes, str | Mapping) or not hasattr(classes, "__iter__"):
        raise SettingsError(f"{key} must be a list of class names, got {classes!r}")
    order = tuple(str(name) for name in classes)
    doubled = sorted({name for name in order if order.count(name) > 1})
    if doubled:
        raise SettingsError(
            f"{key} names {format_items(map(repr, doubled))} more than once; list each class once"
        )
    if len(order) < 2:
        raise SettingsError(f"{key} needs at least two classes (or null)")
    return order


def label_settings(
    label: object, classes: object, task: str
) -> tuple[str | tuple[str, ...], object]:
    """``cohort.label`` and ``cohort.classes`` checked: one column, or several with a mapping.

    Returns:
        One column: its name and ``classes`` as given (a list of one label becomes the name).
        Several: their names as a tuple and ``{column: class order}`` for the columns that
        ``classes`` orders.

    Raises:
        SettingsError: Several columns for a task other than classification, a column twice,
            an id column or a name holding :data:`SEPARATOR`, or ``classes`` of the wrong shape
            (each message names the key and the fix).
    """
    if isinstance(classes, Mapping) and isinstance(label, str):
        raise SettingsError(
            "cohort.classes is a mapping but cohort.label names one column. Fix: give the class "
            "order as a list (classes: [a, b]), or list the label columns in cohort.label."
        )
    if isinstance(label, str):
        return label, classes
    columns = tuple(str(name) for name in label or ())
    if len(columns) == 1 and not isinstance(classes, Mapping):
        return columns[0], classes
    if not columns:
        raise SettingsError("cohort.label is an empty list. Fix: name the label column(s)")
    if task != "classification":
        raise SettingsError(
            f"cohort.label lists several columns but cohort.task is {task}. Fix: name one "
            "label column, or set cohort.task: classification."
        )
    doubled = sorted({name for name in columns if columns.count(name) > 1})
    bad = [name for name in columns if name in RESERVED or SEPARATOR in name or not name]
    if doubled or bad:
        raise SettingsError(
            f"cohort.label: {'columns listed twice: ' + ', '.join(doubled) if doubled else ''}"
            f"{'; ' if doubled and bad else ''}"
            f"{'columns that cannot be targets: ' + ', '.join(map(repr, bad)) if bad else ''}. "
            f"Fix: list each label column once; a target may not be slide_id or case_id, nor "
            f"hold {SEPARATOR!r} (rename the sheet column)."
        )
    if classes is not None and not isinstance(classes, Mapping):
        raise SettingsError(
            "cohort.classes is a list but cohort.label lists several columns. Fix: give one "
            f"order per column, e.g. classes: {{{columns[0]}: [a, b]}}, or null (sorted labels)."
        )
    orders = dict(classes or {})
    unknown = sorted(set(map(str, orders)) - set(columns))
    if unknown:
        raise SettingsError(
            f"cohort.classes orders {', '.join(map(repr, unknown))}, not listed in cohort.label "
            f"({', '.join(columns)}). Fix: use the label columns' names as its keys."
        )
    return columns, {
        str(column): class_order(order, f"cohort.classes.{column}")
        for column, order in orders.items()
    }


def several_label_problems(
    table: pd.DataFrame, settings: CohortSettings
) -> tuple[list[Problem], dict[str, tuple[str, ...]], pd.DataFrame]:
    """Problems of every label column, each target's classes, and the table with unknown = "".

    Args:
        table: The sheet with ``case_id`` and a column per target (every cell a string).
        settings: The checked settings (``label`` a tuple, ``classes`` a mapping).
    """
    problems, targets = [], {}
    first = settings.label[0]
    missing = table[first].isin(MISSING)
    if missing.any():
        problems.append(
            (
                f"missing labels in column {first!r}, the first of cohort.label, at "
                f"{sheet_lines(table.index[missing])}",
                "fill them in or drop those rows (the first label column stratifies the folds; "
                "the others may be empty where a label is unknown)",
            )
        )
    for column in settings.label:
        found, targets[column] = label_problems(
            table[["case_id", column]].rename(columns={column: "label"}),
            column,
            settings.classes.get(column),
            where=f" in column {column!r}",
            key=f"cohort.classes.{column}",
            missing_ok=True,
        )
        problems += found
    unknown = {column: table[column].where(~table[column].isin(MISSING), "") for column in targets}
    return problems, targets, table.assign(**unknown)


def label_indices(rows: pd.DataFrame, targets: Mapping[str, tuple[str, ...]]) -> np.ndarray:
    """(slides, targets) int64 class indices of ``rows``; -1 where a label is unknown."""
    columns = [
        rows[column].map({name: i for i, name in enumerate(classes)}).fillna(-1)
        for column, classes in targets.items()
    ]
    return np.stack([column.to_numpy(dtype=np.int64) for column in columns], axis=1)

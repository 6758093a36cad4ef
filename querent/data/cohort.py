"""The cohort sheet: one row per slide with its case (patient) and its target.

A classification sheet holds ``slide_id, case_id, <label>``; a survival sheet holds
``slide_id, case_id, <time>, <event>``; a regression sheet ``slide_id, case_id, <target>`` (a
number; column names from :class:`CohortSettings`). Every problem a person can fix in the sheet
raises :class:`~extractors.errors.CohortError` naming the sheet, the lines (header = line 1) or
ids, and the fix; every problem of a sheet is reported at once, one line each (the checks are in
:mod:`querent.data.sheet_checks`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from extractors.errors import CohortError, SettingsError
from querent.data.covariates import column_kinds, covariate_problems
from querent.data.labels import class_order, label_indices, label_settings, several_label_problems
from querent.data.sheet_checks import (
    Problem,
    check_ids,
    classification_problems,
    format_items,
    regression_problems,
    survival_problems,
)

logger = logging.getLogger(__name__)

#: The kinds of target a cohort sheet holds (``cohort.task``).
TASK_KINDS = ("classification", "survival", "regression")
#: What one bag of a model is (``cohort.bag``): a slide, or every slide of a case.
BAG_MODES = ("slide", "case")
#: The sheet columns of each kind of target: table column -> the ``cohort`` key naming it.
TARGET_KEYS: dict[str, dict[str, str]] = {
    "classification": {"label": "label"},
    "survival": {"time": "time", "event": "event"},
    "regression": {"target": "target"},
}
#: Most quantile bins of a regression target that its cases are stratified on.
REGRESSION_STRATA = 5


@dataclass(frozen=True)
class CohortSettings:
    """The config section ``cohort`` (one fact in one place: defaults and help live here)."""

    sheet: str = field(
        default="",
        metadata={
            "help": "cohort sheet (CSV, or TSV by .tsv/.tab suffix); "
            "empty: the demo's resources/demo/cohort.csv"
        },
    )
    task: str = field(
        default="classification", metadata={"help": "classification | survival | regression"}
    )
    label: str | tuple[str, ...] = field(
        default="label",
        metadata={"help": "label column (classification); a list: several targets, one model"},
    )
    time: str = field(default="time", metadata={"help": "follow-up time column (survival)"})
    event: str = field(
        default="event", metadata={"help": "event column, 1 = event, 0 = censored (survival)"}
    )
    target: str = field(
        default="target", metadata={"help": "column of the number to predict (regression)"}
    )
    classes: tuple[str, ...] | dict[str, tuple[str, ...]] | None = field(
        default=None,
        metadata={"help": "class order; null: sorted labels; several labels: {column: order}"},
    )
    on_missing: str = field(
        default="error",
        metadata={
            "help": "sheet slides without features, or features without a sheet row: error | "
            "skip (listed in the log)"
        },
    )
    covariates: tuple[str, ...] = field(
        default=(),
        metadata={"help": "clinical covariate columns (one value per case) the models' head reads"},
    )

    bag: str = field(
        default="slide",
        metadata={"help": "slide | case: every slide of a case forms one bag (one prediction)"},
    )

    def __post_init__(self) -> None:
        """Check the settings; class orders become tuples of strings, one label a string."""
        if self.task not in TASK_KINDS:
            raise SettingsError(
                f"cohort.task {self.task!r} is unknown; choose one of {', '.join(TASK_KINDS)}"
            )
        if self.on_missing not in ("error", "skip"):
            raise SettingsError(f"cohort.on_missing must be error or skip, got {self.on_missing!r}")
        if self.bag not in BAG_MODES:
            raise SettingsError(f"cohort.bag must be slide or case, got {self.bag!r}")
        if self.task == "regression" and self.classes is not None:
            raise SettingsError(
                "cohort.classes is set but cohort.task is regression (classes order the labels "
                "of a classification). Fix: set cohort.classes: null, or cohort.task: "
                "classification."
            )
        label, classes = label_settings(self.label, self.classes, self.task)
        if isinstance(label, str) and classes is not None:
            classes = class_order(classes, "cohort.classes")
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "classes", classes)
        covariates = tuple(str(name) for name in self.covariates or ())
        doubled = sorted({name for name in covariates if covariates.count(name) > 1})
        if doubled:
            raise SettingsError(
                f"cohort.covariates names {format_items(map(repr, doubled))} more than once; "
                "list each column once"
            )
        object.__setattr__(self, "covariates", covariates)


@dataclass(frozen=True, eq=False)
class Cohort:
    """The slides of a cohort and their targets.

    Attributes:
        task: ``classification``, ``survival`` or ``regression``.
        table: One row per slide, sorted by ``slide_id``, index 0..n-1; columns ``slide_id``,
            ``case_id`` (strings) and ``label`` (string), or ``time`` (float) and ``event``
            (0/1), or ``target`` (float); then the covariate columns (strings, by their sheet
            names).
        classes: The class order (classification); ``()`` for the other tasks. With several
            label columns, the first one's (it stratifies the folds).
        source: The sheet path, for messages.
        covariates: The covariate columns (``cohort.covariates``), in the config's order.
        labels: Several label columns (:mod:`querent.data.labels`): each target's column (by
            its sheet name, in the table instead of ``label``; "" where unknown) and classes,
            in ``cohort.label`` order; empty for one label column.
    """

    task: str
    table: pd.DataFrame
    classes: tuple[str, ...]
    source: str
    covariates: tuple[str, ...] = ()
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def target_columns(self) -> list[str]:
        """The target columns of the task (several label columns: theirs)."""
        return list(self.labels) or list(TARGET_KEYS[self.task])

    @property
    def slide_ids(self) -> list[str]:
        """The slide ids, sorted."""
        return self.table["slide_id"].tolist()

    def cases(self) -> pd.DataFrame:
        """One row per case, sorted by ``case_id``: ``case_id`` and the target columns."""
        columns = ["case_id", *self.target_columns]
        first = self.table.drop_duplicates("case_id")[columns]
        return first.sort_values("case_id").reset_index(drop=True)

    def strata(self, bins: int = REGRESSION_STRATA) -> pd.Series:
        """Per case (index ``case_id``): its class index, event or target bin.

        Classification: the class index; survival: the event; regression: the quantile bin of
        the case's value among the cases, ``bins`` bins at most (fewer where tied values make
        edges repeat).
        """
        cases = self.cases().set_index("case_id")
        if self.task == "classification":
            order = {name: i for i, name in enumerate(self.classes)}
            first = cases[self.target_columns[0]]
            return first.map(order).astype(np.int64).rename("stratum")
        if self.task == "regression":
            quantile = pd.qcut(cases["target"], max(bins, 1), labels=False, duplicates="drop")
            return quantile.astype(np.int64).rename("stratum")
        return cases["event"].astype(np.int64).rename("stratum")

    def _rows(self, slide_ids: Sequence[str]) -> pd.DataFrame:
        indexed = self.table.set_index("slide_id")
        unknown = [s for s in slide_ids if s not in indexed.index]
        if unknown:
            raise CohortError(
                f"{self.source}: slide ids not in the cohort sheet: {format_items(unknown)}. "
                "Fix: add them to the sheet, or drop them from the splits and feature folder."
            )
        return indexed.loc[list(slide_ids)]

    def targets(self, slide_ids: Sequence[str]) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """The targets of ``slide_ids``, in that order.

        Returns:
            Classification: int64 class indices in :attr:`classes` order (several label
            columns: (slides, targets), -1 where unknown). Survival: the float64 times and the
            int64 events. Regression: the float64 values.
        """
        rows = self._rows(slide_ids)
        if self.labels:
            return label_indices(rows, self.labels)
        if self.task == "classification":
            order = {name: i for i, name in enumerate(self.classes)}
            return rows["label"].map(order).to_numpy(dtype=np.int64)
        if self.task == "regression":
            return rows["target"].to_numpy(dtype=np.float64)
        return rows["time"].to_numpy(dtype=np.float64), rows["event"].to_numpy(dtype=np.int64)

    def subset(self, slide_ids: Iterable[str]) -> Cohort:
        """The cohort of ``slide_ids`` only (same classes, source and covariates)."""
        rows = self._rows(sorted(set(slide_ids))).reset_index()
        return dataclasses.replace(self, table=rows[self.table.columns])

    def covariate_kinds(self) -> dict[str, str]:
        """Covariate column -> ``numeric`` or ``categorical``, read off the whole table."""
        return column_kinds(self.table, self.covariates)


def read_table(path: Path, what: str) -> pd.DataFrame:
    """Every cell of a CSV (TSV by a ``.tsv``/``.tab`` suffix) as a stripped string.

    Blank lines are dropped and the index keeps the data row number, so row ``i`` is line
    ``i + 2`` of the file. ``what`` names the file in messages ("cohort sheet", "split file").

    Raises:
        CohortError: The file cannot be parsed.
    """
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    options = {"dtype": str, "keep_default_na": False, "skip_blank_lines": False}
    try:
        raw = pd.read_csv(path, sep=sep, encoding="utf-8-sig", **options)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise CohortError(
            f"{what} {path} is not a readable {'CSV' if sep == ',' else 'TSV'} file ({err}). "
            "Fix: save it as UTF-8 text with a header line."
        ) from err
    raw.columns = [str(name).strip() for name in raw.columns]
    raw = raw.apply(lambda column: column.str.strip())
    return raw[(raw != "").any(axis=1)]


def _fail(source: object, problem: str, fix: str) -> CohortError:
    return CohortError(f"cohort sheet {source}: {problem}. Fix: {fix}")


def _fail_all(source: object, problems: list[Problem]) -> CohortError:
    """One error listing every problem of the sheet, one line each."""
    if len(problems) == 1:
        return _fail(source, *problems[0])
    lines = "\n".join(f"  {problem}. Fix: {fix}" for problem, fix in problems)
    return CohortError(f"cohort sheet {source}: {len(problems)} problems, fix them all:\n{lines}")


def read_cohort(path: str | os.PathLike, settings: CohortSettings) -> Cohort:
    """Read and check a cohort sheet (CSV, or TSV by a ``.tsv``/``.tab`` suffix).

    ``slide_id`` and ``case_id`` stay strings ("001" stays "001"), labels are strings, extra
    columns are ignored, and the configured target columns become ``label``, ``time`` and
    ``event``, or ``target``.

    Raises:
        CohortError: The sheet is missing or unreadable, lacks columns, has empty, unsafe or
            duplicate ids, or bad targets; the message names the lines or ids and the fix.
    """
    source = Path(path)
    if not source.is_file():
        raise _fail(source, "not found", "set cohort.sheet to a CSV or TSV file")
    return cohort_from_table(read_table(source, "cohort sheet"), settings, source)


def cohort_from_table(raw: pd.DataFrame, settings: CohortSettings, source: Path) -> Cohort:
    """Check a sheet read by :func:`read_table` (every cell a string) and make it a cohort.

    Raises:
        CohortError: As :func:`read_cohort`.
    """
    keys = TARGET_KEYS[settings.task]
    several = not isinstance(settings.label, str)  # several label columns, each by its name
    targets = (
        dict(zip(settings.label, settings.label, strict=True))
        if several
        else {column: getattr(settings, key) for column, key in keys.items()}
    )
    wanted = {"slide_id": "slide_id", "case_id": "case_id", **targets}
    absent = [column for column in dict.fromkeys(wanted.values()) if column not in raw.columns]
    if absent:
        raise _fail(
            source,
            f"missing column(s) {', '.join(map(repr, absent))}; the sheet has "
            f"{format_items(map(repr, raw.columns), limit=20)}",
            "rename the columns, or set "
            + " / ".join(f"cohort.{key}" for key in keys.values())
            + f" (cohort.task is {settings.task})",
        )
    if raw.empty:
        raise _fail(source, "no slides (only a header line)", "add one row per slide")
    covariates = _covariate_columns(raw, settings, wanted, source)
    table = pd.DataFrame({name: raw[column] for name, column in wanted.items()} | covariates)
    problems = check_ids(table) + covariate_problems(table, settings.covariates)
    labels = {}
    if several:
        target_problems, labels, table = several_label_problems(table, settings)
        classes = labels[settings.label[0]]
    elif settings.task == "classification":
        target_problems, classes = classification_problems(table, settings)
    else:
        check = survival_problems if settings.task == "survival" else regression_problems
        (target_problems, table), classes = check(table, settings), ()
    problems += target_problems
    if problems:
        raise _fail_all(source, problems)
    table = table.sort_values("slide_id").reset_index(drop=True)
    logger.info("%s: %d slides of %d cases", source, len(table), table["case_id"].nunique())
    return Cohort(settings.task, table, tuple(classes), str(source), settings.covariates, labels)


def _covariate_columns(
    raw: pd.DataFrame, settings: CohortSettings, wanted: dict[str, str], source: Path
) -> dict[str, pd.Series]:
    """The sheet's ``cohort.covariates`` columns by name.

    Raises:
        CohortError: A column is not in the sheet, or is an id or target column.
    """
    names = settings.covariates
    taken = [name for name in names if name in {*wanted, *wanted.values()}]
    if taken:
        raise _fail(
            source,
            f"cohort.covariates names {', '.join(map(repr, taken))}, an id or target column "
            "(a model must not read its answer)",
            "remove them from cohort.covariates, or rename the sheet column",
        )
    absent = [name for name in names if name not in raw.columns]
    if absent:
        raise _fail(
            source,
            f"cohort.covariates column(s) {', '.join(map(repr, absent))} not in the sheet; it "
            f"has {format_items(map(repr, raw.columns), limit=20)}",
            "add the columns (one value per case; empty where unknown), or remove them from "
            "cohort.covariates",
        )
    return {name: raw[name] for name in names}

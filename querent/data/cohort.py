"""The cohort sheet: one row per slide with its case (patient) and its target.

A classification sheet holds ``slide_id, case_id, <label>``; a survival sheet holds
``slide_id, case_id, <time>, <event>`` (column names from :class:`CohortSettings`). Every
problem a person can fix in the sheet raises :class:`~extractors.errors.CohortError` naming the
sheet, the lines (header = line 1) or ids, and the fix; every problem of a sheet is reported at
once, one line each.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from extractors.errors import CohortError, SettingsError
from extractors.io import SLIDE_ID_PATTERN

logger = logging.getLogger(__name__)

#: The kinds of target a cohort sheet holds (``cohort.task``).
TASK_KINDS = ("classification", "survival")
#: Cell values read as "no value" in the label, time and event columns.
MISSING = frozenset({"", "NA", "N/A", "NaN", "nan", "null", "NULL"})
_EVENTS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}


def format_items(items: Iterable[object], limit: int = 10) -> str:
    """Up to ``limit`` items joined by commas, then "and N more"."""
    items = [str(item) for item in items]
    shown = ", ".join(items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown


def _lines(index: Iterable[int]) -> str:
    """Sheet line numbers of 0-based data rows (the header is line 1)."""
    return format_items(f"line {int(i) + 2}" for i in index)


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
    task: str = field(default="classification", metadata={"help": "classification | survival"})
    label: str = field(default="label", metadata={"help": "label column (classification)"})
    time: str = field(default="time", metadata={"help": "follow-up time column (survival)"})
    event: str = field(
        default="event", metadata={"help": "event column, 1 = event, 0 = censored (survival)"}
    )
    classes: tuple[str, ...] | None = field(
        default=None, metadata={"help": "class order; null: sorted labels"}
    )
    on_missing: str = field(
        default="error",
        metadata={
            "help": "sheet slides without features, or features without a sheet row: error | "
            "skip (listed in the log)"
        },
    )

    def __post_init__(self) -> None:
        """Check the task and the class list; classes become a tuple of strings."""
        if self.task not in TASK_KINDS:
            raise SettingsError(
                f"cohort.task {self.task!r} is unknown; choose one of {', '.join(TASK_KINDS)}"
            )
        if self.on_missing not in ("error", "skip"):
            raise SettingsError(f"cohort.on_missing must be error or skip, got {self.on_missing!r}")
        if self.classes is not None:
            classes = tuple(str(name) for name in self.classes)
            doubled = sorted({name for name in classes if classes.count(name) > 1})
            if doubled:
                raise SettingsError(
                    f"cohort.classes names {format_items(map(repr, doubled))} more than once; "
                    "list each class once"
                )
            if len(classes) < 2:
                raise SettingsError("cohort.classes needs at least two classes (or null)")
            object.__setattr__(self, "classes", classes)


@dataclass(frozen=True, eq=False)
class Cohort:
    """The slides of a cohort and their targets.

    Attributes:
        task: ``classification`` or ``survival``.
        table: One row per slide, sorted by ``slide_id``, index 0..n-1; columns ``slide_id``,
            ``case_id`` (strings) and ``label`` (string) or ``time`` (float) and ``event`` (0/1).
        classes: The class order (classification); ``()`` for survival.
        source: The sheet path, for messages.
    """

    task: str
    table: pd.DataFrame
    classes: tuple[str, ...]
    source: str

    @property
    def target_columns(self) -> list[str]:
        """The target columns of the task."""
        return ["label"] if self.task == "classification" else ["time", "event"]

    @property
    def slide_ids(self) -> list[str]:
        """The slide ids, sorted."""
        return self.table["slide_id"].tolist()

    def cases(self) -> pd.DataFrame:
        """One row per case, sorted by ``case_id``: ``case_id`` and the target columns."""
        columns = ["case_id", *self.target_columns]
        first = self.table.drop_duplicates("case_id")[columns]
        return first.sort_values("case_id").reset_index(drop=True)

    def strata(self) -> pd.Series:
        """Per case (index ``case_id``): the class index, or the event for survival."""
        cases = self.cases().set_index("case_id")
        if self.task == "classification":
            order = {name: i for i, name in enumerate(self.classes)}
            return cases["label"].map(order).astype(np.int64).rename("stratum")
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
            Classification: int64 class indices in :attr:`classes` order. Survival: the float64
            times and the int64 events.
        """
        rows = self._rows(slide_ids)
        if self.task == "classification":
            order = {name: i for i, name in enumerate(self.classes)}
            return rows["label"].map(order).to_numpy(dtype=np.int64)
        return rows["time"].to_numpy(dtype=np.float64), rows["event"].to_numpy(dtype=np.int64)

    def subset(self, slide_ids: Iterable[str]) -> Cohort:
        """The cohort of ``slide_ids`` only (same classes and source)."""
        rows = self._rows(sorted(set(slide_ids))).reset_index()
        return Cohort(self.task, rows[self.table.columns], self.classes, self.source)


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


#: One problem of a sheet: (what is wrong, how to fix it).
_Problem = tuple[str, str]


def _fail_all(source: object, problems: list[_Problem]) -> CohortError:
    """One error listing every problem of the sheet, one line each."""
    if len(problems) == 1:
        return _fail(source, *problems[0])
    lines = "\n".join(f"  {problem}. Fix: {fix}" for problem, fix in problems)
    return CohortError(f"cohort sheet {source}: {len(problems)} problems, fix them all:\n{lines}")


def _check_ids(table: pd.DataFrame) -> list[_Problem]:
    problems = []
    for column in ("slide_id", "case_id"):
        empty = table.index[table[column] == ""]
        if len(empty):
            problems.append((f"empty {column} at {_lines(empty)}", f"fill in {column}"))
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
        bad = (f"{s} ({_lines(rows)})" for s, rows in doubled.items())
        problems.append((f"duplicate slide ids: {format_items(bad)}", "list each slide once"))
    return problems


def _inconsistent_cases(table: pd.DataFrame, columns: list[str]) -> list[str]:
    """``case: values`` for each case whose slides disagree on ``columns``."""
    varying = table.groupby("case_id")[columns].nunique().gt(1).any(axis=1)
    out = []
    for case in varying.index[varying]:
        rows = table.loc[table["case_id"] == case]
        values = "; ".join(
            f"{c} {format_items(sorted(rows[c].astype(str).unique()))}" for c in columns
        )
        out.append(f"{case} ({values})")
    return out


def _classification(
    table: pd.DataFrame, settings: CohortSettings
) -> tuple[list[_Problem], tuple[str, ...]]:
    problems = []
    missing = table["label"].isin(MISSING)
    if missing.any():
        problems.append(
            (f"missing labels at {_lines(table.index[missing])}", "fill in or drop those rows")
        )
    labelled = table.loc[~missing]
    if settings.classes is not None:
        foreign = labelled.loc[~labelled["label"].isin(settings.classes)].groupby("label").groups
        if foreign:
            bad = (f"{label!r} ({_lines(rows)})" for label, rows in foreign.items())
            problems.append(
                (
                    f"labels not in cohort.classes ({', '.join(settings.classes)}): "
                    f"{format_items(bad)}",
                    "add them to cohort.classes or correct the sheet",
                )
            )
    present = sorted(labelled["label"].unique())
    if len(present) < 2:
        problems.append(
            (
                f"only one class ({present[0]!r}) in column {settings.label!r}"
                if present
                else f"no label in column {settings.label!r}",
                "a classifier needs two or more classes; check that cohort.label names the label",
            )
        )
    conflicts = _inconsistent_cases(labelled, ["label"])
    if conflicts:
        problems.append(
            (
                f"cases with different labels on their slides: {format_items(conflicts)}",
                "give every slide of a case the case's label",
            )
        )
    return problems, settings.classes if settings.classes is not None else tuple(present)


def _survival(table: pd.DataFrame, settings: CohortSettings) -> tuple[list[_Problem], pd.DataFrame]:
    problems = []
    text = table["time"]
    time = pd.to_numeric(text.where(~text.isin(MISSING)), errors="coerce")
    bad_time = ~np.isfinite(time) | (time <= 0)
    if bad_time.any():
        bad = (f"line {i + 2} ({v!r})" for i, v in text[bad_time].items())
        problems.append(
            (
                f"follow-up times in column {settings.time!r} must be numbers > 0: "
                f"{format_items(bad)}",
                "fill in positive times (any unit) or drop those rows",
            )
        )
    event = table["event"].str.lower().map(_EVENTS)
    if event.isna().any():
        bad = (f"line {i + 2} ({v!r})" for i, v in table["event"][event.isna()].items())
        problems.append(
            (
                f"events in column {settings.event!r} must be 1 (event) or 0 (censored): "
                f"{format_items(bad)}",
                "code events as 1/0 (or true/false)",
            )
        )
    valid = ~bad_time & event.notna()
    table = table.assign(time=time, event=event)
    checked = table.loc[valid].astype({"time": np.float64, "event": np.int64})
    conflicts = _inconsistent_cases(checked, ["time", "event"])
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


def read_cohort(path: str | os.PathLike, settings: CohortSettings) -> Cohort:
    """Read and check a cohort sheet (CSV, or TSV by a ``.tsv``/``.tab`` suffix).

    ``slide_id`` and ``case_id`` stay strings ("001" stays "001"), labels are strings, extra
    columns are ignored, and the configured target columns become ``label`` or ``time`` and
    ``event``.

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
    if settings.task == "classification":
        targets = {"label": settings.label}
    else:
        targets = {"time": settings.time, "event": settings.event}
    wanted = {"slide_id": "slide_id", "case_id": "case_id", **targets}
    absent = [column for column in dict.fromkeys(wanted.values()) if column not in raw.columns]
    if absent:
        raise _fail(
            source,
            f"missing column(s) {', '.join(map(repr, absent))}; the sheet has "
            f"{format_items(map(repr, raw.columns), limit=20)}",
            "rename the columns, or set cohort.label / cohort.time / cohort.event",
        )
    if raw.empty:
        raise _fail(source, "no slides (only a header line)", "add one row per slide")
    table = pd.DataFrame({name: raw[column] for name, column in wanted.items()})
    problems = _check_ids(table)
    if settings.task == "classification":
        target_problems, classes = _classification(table, settings)
    else:
        (target_problems, table), classes = _survival(table, settings), ()
    problems += target_problems
    if problems:
        raise _fail_all(source, problems)
    table = table.sort_values("slide_id").reset_index(drop=True)
    logger.info("%s: %d slides of %d cases", source, len(table), table["case_id"].nunique())
    return Cohort(settings.task, table, tuple(classes), str(source))

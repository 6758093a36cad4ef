"""Predictions tables of several targets (several label columns on one model).

Per target ``t`` such a table has a ``t:truth`` column (the label; empty where it is unknown)
and ``t:prob_<class>`` columns. :func:`target_table` cuts it down to one target: the slides
whose label is known, with ``truth`` and ``prob_<class>`` columns, as a single-target
classification table, so every metric, summary row, comparison and plot of a target is the
single-target code's.
"""

from __future__ import annotations

import pandas as pd

from querent.data.labels import SEPARATOR

TRUTH = "truth"


def target_column(target: str, column: str) -> str:
    """The name of a target's column in a table of several targets: ``{target}:{column}``."""
    return f"{target}{SEPARATOR}{column}"


def target_names(table: pd.DataFrame) -> list[str]:
    """The targets of a table, in column order; ``[]`` for a single-target table."""
    suffix = SEPARATOR + TRUTH
    return [str(c)[: -len(suffix)] for c in table.columns if str(c).endswith(suffix)]


def truth_and_scores(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The truth columns of a table of several targets, and their other (score) columns."""
    truth = [target_column(name, TRUTH) for name in target_names(table)]
    return truth, [c for c in table.columns if SEPARATOR in str(c) and c not in truth]


def target_table(table: pd.DataFrame, target: str) -> pd.DataFrame:
    """One target's slice, on the rows whose label is known (index 0..n-1).

    Its columns: those of no target (ids, ``fold``), then the target's own without the prefix.
    """
    prefix = target + SEPARATOR
    own = {c: c[len(prefix) :] for c in map(str, table.columns) if c.startswith(prefix)}
    shared = [c for c in table.columns if SEPARATOR not in str(c)]
    part = table[[*shared, *own]].rename(columns=own)
    known = part[TRUTH].notna() & (part[TRUTH].astype(str) != "")
    return part.loc[known].reset_index(drop=True)


def split_targets(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``{target: its slice}`` of a table of several targets; ``{"": table}`` for one target."""
    names = target_names(table)
    return {name: target_table(table, name) for name in names} if names else {"": table}

"""Clinical covariates: per-case sheet columns encoded as numbers that a model's head reads.

``cohort.covariates`` names sheet columns (age, stage, ...) whose values belong to the case,
so every slide of a case must carry the same value. A column whose every value is a number is
numeric, any other categorical; the kind is read off the whole sheet (a column's type, not a
statistic). :class:`CovariateEncoder` is fitted on the training cases only:

- numeric: standardised by the training cases' mean and standard deviation; where training
  cases lack a value, an indicator column ``{name}_missing`` follows and a missing value takes
  the training mean (0 after standardising);
- categorical: one-hot over the training cases' categories; where training cases lack a
  value, "missing" is a category of its own.

A value the training cases never showed (a new category, or a missing value where none was
missing) is encoded as zeros (numeric: the training mean), and logged. The fitted encoder is
plain data (:meth:`CovariateEncoder.state`), kept in the checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from extractors.errors import CohortError
from querent.data.sheet_checks import MISSING, Problem, format_items, inconsistent_cases

logger = logging.getLogger(__name__)

#: The kinds of covariate column.
NUMERIC, CATEGORICAL = "numeric", "categorical"


def is_missing(text: pd.Series) -> pd.Series:
    """Where ``text`` has no value: an empty cell, ``NA`` and the like (or no cell at all)."""
    return text.isna() | text.isin(MISSING)


def _numbers(text: pd.Series) -> pd.Series:
    """``text`` as float64; missing values and text that is no finite number become NaN."""
    value = pd.to_numeric(text.where(~is_missing(text)), errors="coerce").astype(np.float64)
    return value.where(np.isfinite(value))


def column_kinds(table: pd.DataFrame, names: Sequence[str]) -> dict[str, str]:
    """Column name -> ``numeric`` (every value given is a number) or ``categorical``."""
    kinds = {}
    for name in names:
        given = table[name].loc[~is_missing(table[name])]
        numeric = len(given) > 0 and _numbers(given).notna().all()
        kinds[name] = NUMERIC if numeric else CATEGORICAL
    return kinds


def covariate_problems(table: pd.DataFrame, names: Sequence[str]) -> list[Problem]:
    """Covariate columns without any value, and cases whose slides disagree on a covariate.

    Args:
        table: The sheet (``case_id`` and the covariate columns, every cell a string).
        names: The covariate columns (``cohort.covariates``).
    """
    problems = []
    empty = [name for name in names if is_missing(table[name]).all()]
    if empty:
        problems.append(
            (
                f"cohort.covariates column(s) {', '.join(map(repr, empty))} hold no value at all",
                "fill them in, or remove them from cohort.covariates",
            )
        )
    given = [name for name in names if name not in empty]
    if given:
        same_missing = table.assign(**{n: table[n].where(~is_missing(table[n]), "") for n in given})
        conflicts = inconsistent_cases(same_missing, given)
        if conflicts:
            problems.append(
                (
                    f"cases whose slides differ in a covariate: {format_items(conflicts)}",
                    "covariates describe the case (patient): give every slide of a case the "
                    "case's value",
                )
            )
    return problems


@dataclass(frozen=True)
class Covariate:
    """One fitted covariate column.

    Attributes:
        name: The sheet column.
        kind: ``numeric`` or ``categorical``.
        mean: Training mean (numeric).
        sd: Training standard deviation, 1 where it is 0 or undefined (numeric).
        missing: Training cases lacked values: an indicator (numeric) or a category of its own.
        categories: The training categories, sorted (categorical).
    """

    name: str
    kind: str
    mean: float = 0.0
    sd: float = 1.0
    missing: bool = False
    categories: tuple[str, ...] = ()

    @property
    def features(self) -> list[str]:
        """Names of the encoded columns."""
        if self.kind == NUMERIC:
            return [self.name] + ([f"{self.name}_missing"] if self.missing else [])
        extra = [f"{self.name}=<missing>"] if self.missing else []
        return [f"{self.name}={category}" for category in self.categories] + extra

    @classmethod
    def fit(cls, name: str, kind: str, text: pd.Series) -> Covariate:
        """The encoding of ``text`` (one value per training case, strings)."""
        missing = bool(is_missing(text).any())
        if kind == CATEGORICAL:
            categories = tuple(sorted(text.loc[~is_missing(text)].unique()))
            return cls(name, kind, missing=missing, categories=categories)
        value = _numbers(text).dropna()
        mean = float(value.mean()) if len(value) else 0.0
        sd = float(value.std(ddof=0)) if len(value) else 1.0
        return cls(name, kind, mean, sd if np.isfinite(sd) and sd > 0 else 1.0, missing)

    def encode(self, text: pd.Series) -> np.ndarray:
        """(rows, len(features)) float32 encoding of ``text`` (index: ids, for messages).

        Raises:
            CohortError: A numeric covariate's value is no number (names the ids and values).
        """
        absent = is_missing(text).to_numpy()
        if self.kind == NUMERIC:
            value = _numbers(text).to_numpy()
            wrong = ~absent & np.isnan(value)
            if wrong.any():
                bad = (f"{i} ({v!r})" for i, v in text[wrong].items())
                raise CohortError(
                    f"covariate {self.name!r} is a number to the model, but these values are "
                    f"not: {format_items(bad)}. Fix: write plain numbers, or leave the cell "
                    "empty for a missing value."
                )
            columns = [np.where(absent, 0.0, (value - self.mean) / self.sd)]
            columns += [absent.astype(np.float64)] if self.missing else []
        else:
            categories = np.asarray(self.categories, dtype=object)
            columns = list((text.to_numpy(dtype=object)[:, None] == categories).T)
            columns += [absent.astype(np.float64)] if self.missing else []
            unseen = ~absent & ~text.isin(self.categories).to_numpy()
            if unseen.any():
                logger.warning(
                    "covariate %r: %s never seen in the training cases, encoded as zeros",
                    self.name, format_items(f"{i} ({v!r})" for i, v in text[unseen].items()),
                )  # fmt: skip
        if absent.any() and not self.missing:
            logger.warning(
                "covariate %r: no training case lacked a value; %s encoded as %s",
                self.name, format_items(text.index[absent]),
                "the training mean" if self.kind == NUMERIC else "zeros",
            )  # fmt: skip
        return np.stack(columns, axis=1).astype(np.float32)


@dataclass(frozen=True)
class CovariateEncoder:
    """Covariate columns fitted on training cases, encoded side by side."""

    covariates: tuple[Covariate, ...]

    @classmethod
    def fit(cls, cases: pd.DataFrame, kinds: Mapping[str, str]) -> CovariateEncoder:
        """Fit on ``cases`` (one row per training case) the columns of ``kinds``, in its order."""
        return cls(tuple(Covariate.fit(name, kind, cases[name]) for name, kind in kinds.items()))

    @property
    def names(self) -> list[str]:
        """The sheet columns read."""
        return [covariate.name for covariate in self.covariates]

    @property
    def features(self) -> list[str]:
        """Names of the encoded columns, in order."""
        return [feature for covariate in self.covariates for feature in covariate.features]

    @property
    def dim(self) -> int:
        """Width of the encoding."""
        return len(self.features)

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        """(rows, dim) float32 encoding of ``table``'s covariate columns (index: ids)."""
        return np.concatenate([c.encode(table[c.name]) for c in self.covariates], axis=1)

    def state(self) -> dict:
        """Plain data that :meth:`from_state` rebuilds the encoder from (checkpoints)."""
        return {
            "covariates": [
                {**asdict(covariate), "categories": list(covariate.categories)}
                for covariate in self.covariates
            ]
        }

    @classmethod
    def from_state(cls, state: Mapping) -> CovariateEncoder:
        """The encoder of :meth:`state`."""
        return cls(
            tuple(
                Covariate(**{**entry, "categories": tuple(entry["categories"])})
                for entry in state["covariates"]
            )
        )

    def slide_vectors(
        self, table: pd.DataFrame, slide_ids: Sequence[str], source: str
    ) -> dict[str, np.ndarray]:
        """Slide id -> its (dim,) encoding, from ``table`` (``slide_id`` and the columns).

        Raises:
            CohortError: ``table`` (from ``source``) lacks a column or a slide.
        """
        absent = [name for name in ("slide_id", *self.names) if name not in table.columns]
        if absent:
            raise CohortError(
                f"{source}: the model reads the covariates {', '.join(map(repr, self.names))} "
                f"but there is no column {', '.join(map(repr, absent))}. Fix: list them in "
                "cohort.covariates (as in training), or give a sheet with those columns."
            )
        rows = table.set_index("slide_id")
        wanted = set(slide_ids)
        unknown = [slide for slide in slide_ids if slide not in rows.index]
        doubled = sorted(wanted & set(rows.index[rows.index.duplicated()]))
        if unknown or doubled:
            raise CohortError(
                f"{source}: slides without a row ({format_items(unknown) or 'none'}) or with "
                f"several ({format_items(doubled) or 'none'}). Fix: one row per slide with its "
                "case's covariate values."
            )
        encoded = self.transform(rows.loc[list(slide_ids), self.names])
        return dict(zip(slide_ids, encoded, strict=True))

"""A run's metrics over its training seeds, and paired comparisons of two runs on the same cases.

A run trained with several seeds has one set of out-of-fold predictions per seed, on the same
cases. Its headline metric is the mean over seeds of each seed's pooled out-of-fold metric (the
expected metric of one training, not of a seed ensemble); its bootstrap resamples draw cases,
and each resample scores every seed on the same cases and averages them. The spread over seeds
is their standard deviation.

Two runs are compared on the cases both predicted, with one set of case resamples for both
(a paired bootstrap): the interval of the difference A - B of their seed-mean metrics, and a
two-sided p-value from how often the resampled difference falls on either side of zero. A run
of several label columns is one :class:`SeedTables` per target, and runs are compared target by
target.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from querent.engine.metrics import METRICS, case_level, compute_metrics, resample_metrics, task_of

#: Columns of the comparisons table (``results/eval/comparisons.tsv``).
COMPARISON_COLUMNS = (
    "model_a", "encoder_a", "model_b", "encoder_b", "task", "metric", "n_cases", "n_seeds",
    "a", "b", "difference", "ci_low", "ci_high", "p_value",
)  # fmt: skip


@dataclass(frozen=True, eq=False)
class SeedTables:
    """The pooled out-of-fold case-level predictions of a run, one table per seed.

    Attributes:
        model: Run name.
        encoder: Encoder of its features.
        task: Task of its predictions.
        tables: One case-level table per seed, rows in ``case_ids`` order.
        case_ids: The cases every seed predicted, sorted.
        target: The label column of these tables, of a run of several; "" for one target.
    """

    model: str
    encoder: str
    task: str
    tables: tuple[pd.DataFrame, ...]
    case_ids: tuple[str, ...]
    target: str = ""
    _samples: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        """``model / encoder`` (and ``[target]``), for messages."""
        return f"{self.model} / {self.encoder}" + (f" [{self.target}]" if self.target else "")

    def restricted(self, case_ids: Sequence[str]) -> tuple[pd.DataFrame, ...]:
        """Every seed's table on ``case_ids`` only, in that order."""
        if tuple(case_ids) == self.case_ids:
            return self.tables
        return tuple(
            table.set_index("case_id").loc[list(case_ids)].reset_index() for table in self.tables
        )

    def samples(self, case_ids: Sequence[str], n_boot: int, seed: int) -> pd.DataFrame:
        """Seed-mean metrics of ``n_boot`` resamples of ``case_ids`` (computed once each).

        Runs resampled with the same cases, ``n_boot`` and ``seed`` share the resampled cases,
        so their samples pair up row by row.
        """
        key = (tuple(case_ids), n_boot, seed)
        if key not in self._samples:
            indices = resample_indices(len(case_ids), n_boot, seed)
            self._samples[key] = resample_seed_mean(self.restricted(case_ids), indices)
        return self._samples[key]


def seed_tables(
    model: str, encoder: str, seed_folds: Sequence[Sequence[pd.DataFrame]], *, target: str = ""
) -> SeedTables:
    """Pool each seed's folds to one case-level table; every seed must hold the same cases.

    ``target`` names the label column whose slices (:mod:`querent.engine.target_tables`) the
    folds are, for a run of several.

    Raises:
        ValueError: No seeds, or seeds that predicted different cases or tasks.
    """
    if not seed_folds or not all(seed_folds):
        raise ValueError(f"run {model} / {encoder} has no folds to summarize")
    tasks = {task_of(fold) for folds in seed_folds for fold in folds}
    if len(tasks) > 1:
        raise ValueError(f"the folds of {model} / {encoder} mix tasks: {sorted(tasks)}")
    pooled = [
        case_level(pd.concat(folds, ignore_index=True)).sort_values("case_id", ignore_index=True)
        for folds in seed_folds
    ]
    case_ids = tuple(pooled[0]["case_id"])
    for number, table in enumerate(pooled[1:], start=1):
        if tuple(table["case_id"]) != case_ids:
            raise ValueError(
                f"seed {number} of {model} / {encoder} predicted other cases than seed 0; "
                "every seed must be evaluated on the same splits (rerun its evaluation)"
            )
    return SeedTables(model, encoder, tasks.pop(), tuple(pooled), case_ids, target)


def seed_mean_metrics(tables: Sequence[pd.DataFrame]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and standard deviation (ddof 1; NaN for one seed) over seeds of each metric."""
    values = pd.DataFrame([compute_metrics(table) for table in tables])
    std = values.std(ddof=1) if len(values) > 1 else values.iloc[0] * np.nan
    return values.mean().to_dict(), std.to_dict()


def resample_seed_mean(tables: Sequence[pd.DataFrame], indices: np.ndarray) -> pd.DataFrame:
    """Metrics of every resample (rows of ``indices``), averaged over the seeds' tables."""
    samples = [resample_metrics(table, indices) for table in tables]
    return sum(samples[1:], samples[0]) / len(samples)


def resample_indices(n_cases: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_cases) case positions drawn with replacement (``default_rng(seed)``)."""
    if n_boot < 1:
        raise ValueError(f"need n_boot >= 1, got {n_boot}")
    if n_cases == 0:
        raise ValueError("cannot bootstrap an empty predictions table")
    return np.random.default_rng(seed).integers(0, n_cases, size=(n_boot, n_cases))


def percentile_interval(samples: pd.Series, alpha: float = 0.05) -> tuple[float, float]:
    """The ``alpha / 2`` and ``1 - alpha / 2`` quantiles of the defined samples (else NaN)."""
    values = samples.dropna().to_numpy()
    if len(values) == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def paired_comparison(
    a: SeedTables, b: SeedTables, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict:
    """A - B of the task's main metric on the cases both runs predicted, paired bootstrap.

    Both runs are scored on the same resamples of their common cases (with the same truth);
    the p-value is two-sided, ``2 * min(P(d <= 0), P(d >= 0))`` over the resampled differences
    ``d`` (at most 1), so it cannot go below ``2 / n_boot``.

    Returns:
        One row of :data:`COMPARISON_COLUMNS` (and ``target``, for runs of several label columns).

    Raises:
        ValueError: Runs of different tasks or targets, no common case, or a common case whose
            truth differs between the runs.
    """
    if a.task != b.task or a.target != b.target:
        raise ValueError(f"{a.name} ({a.task}) and {b.name} ({b.task}) cannot be compared")
    common = sorted(set(a.case_ids) & set(b.case_ids))
    if not common:
        raise ValueError(f"{a.name} and {b.name} share no case")
    tables_a, tables_b = a.restricted(common), b.restricted(common)
    truth = [c for c in tables_a[0].columns if c in ("truth", "target", "time", "event")]
    if not tables_a[0][truth].equals(tables_b[0][truth]):
        raise ValueError(f"{a.name} and {b.name} disagree on the truth of their common cases")
    metric = METRICS[a.task][0]
    differences = (
        a.samples(common, n_boot, seed)[metric] - b.samples(common, n_boot, seed)[metric]
    ).dropna()
    value_a = seed_mean_metrics(tables_a)[0][metric]
    value_b = seed_mean_metrics(tables_b)[0][metric]
    low, high = percentile_interval(differences, alpha)
    p_value = (
        min(1.0, 2 * min((differences <= 0).mean(), (differences >= 0).mean()))
        if len(differences)
        else float("nan")
    )
    row = {
        "model_a": a.model, "encoder_a": a.encoder, "model_b": b.model, "encoder_b": b.encoder,
        "task": a.task, "metric": metric, "n_cases": len(common),
        "n_seeds": min(len(a.tables), len(b.tables)), "a": value_a, "b": value_b,
        "difference": value_a - value_b, "ci_low": low, "ci_high": high, "p_value": p_value,
    }  # fmt: skip
    return row | ({"target": a.target} if a.target else {})


def comparison_table(
    runs: Sequence[SeedTables], *, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Every pair of runs of one task and target (in the order given: A before B), paired.

    A ``target`` column follows ``task`` where the runs have several label columns.
    """
    rows = [
        paired_comparison(a, b, n_boot=n_boot, seed=seed)
        for a, b in itertools.combinations(runs, 2)
        if a.task == b.task and a.target == b.target and set(a.case_ids) & set(b.case_ids)
    ]
    columns = list(COMPARISON_COLUMNS)
    if any(run.target for run in runs):
        columns.insert(columns.index("task") + 1, "target")
    return pd.DataFrame(rows, columns=columns)


def format_comparisons(table: pd.DataFrame) -> str:
    """Lines to print under the summary: A vs B, their metric, the difference [CI] and p."""
    lines = []
    for _, row in table.iterrows():
        seeds = f", {row['n_seeds']} seeds" if row["n_seeds"] > 1 else ""
        target = f"{row['target']} " if row.get("target", "") else ""
        lines.append(
            f"  {row['model_a']} ({row['encoder_a']}) vs {row['model_b']} ({row['encoder_b']}): "
            f"{target}{row['metric']} {row['a']:.3f} vs {row['b']:.3f}, "
            f"difference {row['difference']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}], "
            f"p = {row['p_value']:.3f} "
            f"({row['n_cases']} cases{seeds})"
        )
    if not lines:
        return ""
    return (
        "Paired comparisons (bootstrap over the cases both runs predicted; 95% CI):\n"
        + "\n".join(lines)
    )

"""The summary table of all model runs: pooled out-of-fold metrics with bootstrap CIs.

One row per run (a model setting on an encoder's features), or per run and target where the
model predicts several label columns (a ``target`` column then follows ``task``; each target's
row is the single-target row of its slice of the predictions). The headline of every metric of
its task is computed once on the pooled out-of-fold case-level predictions, with a percentile
bootstrap confidence interval of the same cases; the mean and standard deviation over the
folds' own metrics stand beside it. With a few cases per fold a fold's AUC is 1.0 or 0.0 by
chance, so its mean says little: a demo fold of 3 cases scored "1.000 ± 0.000" for a model
whose pooled AUC was 0.643. A run trained with several seeds reports the mean over seeds and
their spread, and every two runs of a task are compared case by case
(:mod:`querent.engine.compare`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from extractors.errors import FileFormatError
from extractors.io import atomic_path
from querent.engine.compare import (
    SeedTables,
    comparison_table,
    percentile_interval,
    seed_mean_metrics,
    seed_tables,
)
from querent.engine.metrics import METRICS, case_level, class_names, compute_metrics, task_of
from querent.engine.target_tables import TRUTH, split_targets, target_column

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.csv"
BASE_COLUMNS = ("model", "encoder", "task", "n_cases", "n_folds", "n_seeds", "min_fold_cases")
STATISTICS = ("pooled", "ci_low", "ci_high", "mean", "std", "seed_std")
#: Fewer held-out cases than this in a fold make its metrics too coarse to average (a
#: warning; the pooled metric is the headline either way).
MIN_FOLD_CASES = 10


def summary_columns(tasks: Sequence[str], *, targets: bool = False) -> list[str]:
    """The summary's columns for runs of ``tasks``: the base columns, then per metric its stats.

    Metrics come in ``METRICS`` order (tasks in that order too, whatever the order of
    ``tasks``), each as ``{metric}_pooled, {metric}_ci_low, {metric}_ci_high, {metric}_mean,
    {metric}_std, {metric}_seed_std``. With ``targets`` (runs of several label columns) a
    ``target`` column follows ``task``.
    """
    metrics = [metric for task in METRICS if task in tasks for metric in METRICS[task]]
    base = list(BASE_COLUMNS)
    if targets:
        base.insert(base.index("task") + 1, "target")
    return [*base, *(f"{metric}_{stat}" for metric in metrics for stat in STATISTICS)]


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read a fold's ``predictions.csv``; ids and class names stay strings.

    Raises:
        FileFormatError: The file is missing (run the evaluation first) or is not a
            predictions table.
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(
            f"{path} does not exist: run the evaluation (rule evaluate_model) of this model and "
            "fold first"
        )
    try:
        header = pd.read_csv(path, nrows=0).columns
        truth = [c for c in header if c == TRUTH or c.endswith(target_column("", TRUTH))]
        predictions = pd.read_csv(path, dtype=dict.fromkeys(["slide_id", "case_id", *truth], str))
        task_of(predictions)
    except ValueError as error:  # pandas' EmptyDataError and ParserError are ValueErrors
        raise FileFormatError(
            f"{path} is not a predictions table ({error}); run the evaluation (rule "
            "evaluate_model) again"
        ) from error
    if "case_id" not in predictions.columns:
        raise FileFormatError(f"{path} has no case_id column; run the evaluation again")
    return predictions


def _fold_statistics(values: list[float], metric: str, model: str) -> tuple[float, float]:
    """Mean and standard deviation (ddof 1) of the folds where ``metric`` is defined."""
    defined = np.array([value for value in values if not math.isnan(value)])
    if len(defined) < len(values):
        logger.warning(
            "%s of %s is undefined in %d of %d folds; mean and std leave those out",
            metric,
            model,
            len(values) - len(defined),
            len(values),
        )
    mean = float(defined.mean()) if len(defined) else float("nan")
    std = float(defined.std(ddof=1)) if len(defined) > 1 else float("nan")
    return mean, std


def summarize_run(
    model: str,
    encoder: str,
    seed_folds: Sequence[Sequence[pd.DataFrame]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """One summary row of a run from its out-of-fold slide-level predictions.

    Args:
        model: Run name of the model (a key of the config's ``models``).
        encoder: Encoder whose features the model read.
        seed_folds: Per training seed, each fold's out-of-fold predictions table.
        n_boot: Bootstrap resamples of the pooled cases.
        seed: Seed of the bootstrap.

    Returns:
        ``{"model", "encoder", "task", "n_cases", "n_folds", "n_seeds", "min_fold_cases",
        "{metric}_pooled", "{metric}_ci_low", "{metric}_ci_high", "{metric}_mean",
        "{metric}_std", "{metric}_seed_std", ...}``. ``pooled`` is the metric of the pooled
        case-level predictions (a case in several folds is averaged over them), averaged over
        seeds; its 95% CI a bootstrap of the same cases (:mod:`querent.engine.compare`).
        ``mean`` and ``std`` (ddof 1; NaN with one fold) are over every seed's folds, leaving
        out folds where a metric is undefined; ``seed_std`` is the spread of the seeds' pooled
        metrics (NaN with one seed). ``n_cases`` counts the distinct pooled cases,
        ``min_fold_cases`` those of the smallest fold (a warning when it is below
        :data:`MIN_FOLD_CASES`).

    Raises:
        ValueError: No folds, folds of different tasks or classes, or seeds that predicted
            different cases.
    """
    return _row(seed_tables(model, encoder, seed_folds), seed_folds, n_boot=n_boot, seed=seed)


def _row(
    run: SeedTables, seed_folds: Sequence[Sequence[pd.DataFrame]], *, n_boot: int, seed: int
) -> dict:
    """The summary row of :func:`summarize_run` from the run's pooled tables and its folds."""
    folds = [fold for seed_run in seed_folds for fold in seed_run]
    if run.task == "classification":
        classes = {tuple(class_names(fold)) for fold in folds}
        if len(classes) > 1:
            raise ValueError(f"the folds of {run.name} differ in classes: {classes}")
    fold_cases = [case_level(fold) for fold in folds]
    per_fold = [compute_metrics(cases) for cases in fold_cases]
    pooled, seed_std = seed_mean_metrics(run.tables)
    samples = run.samples(run.case_ids, n_boot, seed)
    smallest = min(len(cases) for cases in fold_cases)
    if smallest < MIN_FOLD_CASES:
        logger.warning(
            "%s: a fold holds only %d held-out cases, too few for a stable fold metric; read "
            "the pooled out-of-fold metric and its CI, not the mean over folds",
            run.name, smallest,
        )  # fmt: skip
    row: dict = {
        "model": run.model,
        "encoder": run.encoder,
        "task": run.task,
        **({"target": run.target} if run.target else {}),  # runs of several label columns
        "n_cases": len(run.case_ids),
        "n_folds": len(seed_folds[0]),
        "n_seeds": len(seed_folds),
        "min_fold_cases": smallest,
    }
    for metric in METRICS[run.task]:
        if math.isnan(pooled[metric]):
            logger.warning(
                "%s of %s is undefined on the pooled out-of-fold cases (a class without cases, "
                "or no events?)",
                metric, run.name,
            )  # fmt: skip
        mean, std = _fold_statistics([fold[metric] for fold in per_fold], metric, run.model)
        low, high = percentile_interval(samples[metric])
        row |= {
            f"{metric}_pooled": pooled[metric],
            f"{metric}_ci_low": low,
            f"{metric}_ci_high": high,
            f"{metric}_mean": mean,
            f"{metric}_std": std,
            f"{metric}_seed_std": seed_std[metric],
        }
    return row


def aggregate(
    runs: Sequence[tuple[str, str, Sequence[Sequence[Path]]]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The summary table of runs, one row each (:func:`summarize_run`), and their comparisons.

    Args:
        runs: ``(model, encoder, fold directories per seed)``; each directory holds
            ``predictions.csv``.
        n_boot: Bootstrap resamples per run (and per comparison).
        seed: Seed of every bootstrap; runs on the same cases share their resamples.

    Returns:
        The summary (columns :func:`summary_columns` of the tasks present; a run's columns of
        another task are NaN) and every pair of runs of one task compared on their common
        cases (:func:`querent.engine.compare.comparison_table`).

    Raises:
        FileFormatError: A fold's ``predictions.csv`` is missing or unreadable.
    """
    rows, pooled = [], []
    for model, encoder, seed_dirs in runs:
        seed_folds = [
            [read_predictions(Path(fold_dir) / PREDICTIONS_FILE) for fold_dir in fold_dirs]
            for fold_dirs in seed_dirs
        ]
        split = [[split_targets(fold) for fold in folds] for folds in seed_folds]
        for target in split[0][0]:  # a fold without a known label of the target is left out
            target_folds = [[p[target] for p in folds if len(p[target])] for folds in split]
            pooled.append(seed_tables(model, encoder, target_folds, target=target))
            rows.append(_row(pooled[-1], target_folds, n_boot=n_boot, seed=seed))
    targets = any("target" in row for row in rows)
    columns = summary_columns({row["task"] for row in rows}, targets=targets)
    summary = pd.DataFrame(rows, columns=columns)
    return summary, comparison_table(pooled, n_boot=n_boot, seed=seed)


def write_summary(table: pd.DataFrame, path: str | Path) -> None:
    """Write the summary as TSV (atomic), floats with 4 decimals, undefined values as NaN."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f", na_rep="NaN")


def read_summary(path: str | Path) -> pd.DataFrame:
    """Read a summary written by :func:`write_summary`."""
    return pd.read_csv(
        path, sep="\t", dtype={"model": str, "encoder": str, "task": str, "target": str}
    )


def format_summary(table: pd.DataFrame) -> str:
    """A table to print: per run and metric ``pooled [ci_low, ci_high]``, 3 decimals.

    The main metric of each task (the first of ``METRICS``) also gets its ``mean ± std`` over
    folds and, where a run has several seeds, over seeds; a run's cells for metrics of another
    task are empty. A first line says what the numbers are; a last one warns when a fold held
    fewer than :data:`MIN_FOLD_CASES` cases.
    """
    tasks = [task for task in METRICS if f"{METRICS[task][0]}_pooled" in table.columns]
    several_seeds = bool((table["n_seeds"] > 1).any())
    named = [c for c in ("model", "encoder", "task", "target", "n_cases") if c in table.columns]
    shown = table[named].copy()

    def cells(task: str, text) -> list[str]:
        return [text(row) if row["task"] == task else "" for _, row in table.iterrows()]

    for task in tasks:
        for position, metric in enumerate(METRICS[task]):
            shown[metric] = cells(
                task,
                lambda row, m=metric: (
                    f"{row[f'{m}_pooled']:.3f} "
                    f"[{row[f'{m}_ci_low']:.3f}, {row[f'{m}_ci_high']:.3f}]"
                ),
            )
            if position == 0:
                shown[f"{metric} folds"] = cells(
                    task, lambda row, m=metric: f"{row[f'{m}_mean']:.3f} ± {row[f'{m}_std']:.3f}"
                )
            if position == 0 and several_seeds:
                shown[f"{metric} seeds"] = cells(
                    task,
                    lambda row, m=metric: f"{row[f'{m}_pooled']:.3f} ± {row[f'{m}_seed_std']:.3f}",
                )
    seeds = " (mean over training seeds)" if several_seeds else ""
    lines = [
        f"Pooled out-of-fold case-level metrics{seeds} [bootstrap 95% CI]; the main one's "
        "mean ± sd over folds" + (" and over seeds" if several_seeds else "") + " beside it:",
        *(line.rstrip() for line in shown.to_string(index=False).splitlines()),
    ]
    small = table[table["min_fold_cases"] < MIN_FOLD_CASES]
    if len(small):
        lines.append(
            f"Warning: folds of {int(small['min_fold_cases'].min())} held-out cases (fewer "
            f"than {MIN_FOLD_CASES}): their fold metrics are coarse; trust the pooled value."
        )
    return "\n".join(lines)

"""The summary table of all model runs: pooled out-of-fold metrics with bootstrap CIs.

One row per run (a model setting on an encoder's features). The headline of every metric of
its task is computed once on the pooled out-of-fold case-level predictions, with a percentile
bootstrap confidence interval of the same cases; the mean and standard deviation over the
folds' own metrics stand beside it. With a few cases per fold a fold's AUC is 1.0 or 0.0 by
chance, so its mean says little: a demo fold of 3 cases scored "1.000 ± 0.000" for a model
whose pooled AUC was 0.643.
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
from querent.engine.metrics import (
    METRICS,
    bootstrap_ci,
    case_level,
    class_names,
    compute_metrics,
    task_of,
)

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.csv"
BASE_COLUMNS = ("model", "encoder", "task", "n_cases", "n_folds", "min_fold_cases")
STATISTICS = ("pooled", "ci_low", "ci_high", "mean", "std")
#: Fewer held-out cases than this in a fold make its metrics too coarse to average (a
#: warning; the pooled metric is the headline either way).
MIN_FOLD_CASES = 10


def summary_columns(tasks: Sequence[str]) -> list[str]:
    """The summary's columns for runs of ``tasks``: the base columns, then per metric its stats.

    Metrics come in ``METRICS`` order (tasks in that order too, whatever the order of
    ``tasks``), each as ``{metric}_pooled, {metric}_ci_low, {metric}_ci_high, {metric}_mean,
    {metric}_std``.
    """
    metrics = [metric for task in METRICS if task in tasks for metric in METRICS[task]]
    return [*BASE_COLUMNS, *(f"{metric}_{stat}" for metric in metrics for stat in STATISTICS)]


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
        predictions = pd.read_csv(path, dtype={"slide_id": str, "case_id": str, "truth": str})
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
    fold_predictions: list[pd.DataFrame],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """One summary row of a run from its folds' slide-level predictions.

    Args:
        model: Run name of the model (a key of the config's ``models``).
        encoder: Encoder whose features the model read.
        fold_predictions: Each fold's out-of-fold predictions table.
        n_boot: Bootstrap resamples of the pooled cases.
        seed: Seed of the bootstrap.

    Returns:
        ``{"model", "encoder", "task", "n_cases", "n_folds", "min_fold_cases",
        "{metric}_pooled", "{metric}_ci_low", "{metric}_ci_high", "{metric}_mean",
        "{metric}_std", ...}``. ``pooled`` is the metric of the pooled case-level predictions
        (a case in several folds is averaged over them), its 95% CI (at ``alpha=0.05``) a
        bootstrap of the same cases; mean and std (ddof 1; NaN with one fold) are over the
        folds' case-level metrics, leaving out folds where a metric is undefined.
        ``n_cases`` counts the distinct pooled cases, ``min_fold_cases`` those of the smallest
        fold (a warning when it is below :data:`MIN_FOLD_CASES`).

    Raises:
        ValueError: No folds, or folds of different tasks or classes.
    """
    if not fold_predictions:
        raise ValueError(f"run {model} / {encoder} has no folds to summarize")
    tasks = {task_of(fold) for fold in fold_predictions}
    if len(tasks) > 1:
        raise ValueError(f"the folds of {model} / {encoder} mix tasks: {sorted(tasks)}")
    task = tasks.pop()
    if task == "classification":
        classes = {tuple(class_names(fold)) for fold in fold_predictions}
        if len(classes) > 1:
            raise ValueError(f"the folds of {model} / {encoder} differ in classes: {classes}")
    fold_cases = [case_level(fold) for fold in fold_predictions]
    per_fold = [compute_metrics(cases) for cases in fold_cases]
    pooled = case_level(pd.concat(fold_predictions, ignore_index=True))
    pooled_metrics = compute_metrics(pooled)
    intervals = bootstrap_ci(pooled, n_boot=n_boot, seed=seed)
    smallest = min(len(cases) for cases in fold_cases)
    if smallest < MIN_FOLD_CASES:
        logger.warning(
            "%s / %s: a fold holds only %d held-out cases, too few for a stable fold metric; "
            "read the pooled out-of-fold metric and its CI, not the mean over folds",
            model, encoder, smallest,
        )  # fmt: skip
    row: dict = {
        "model": model,
        "encoder": encoder,
        "task": task,
        "n_cases": len(pooled),
        "n_folds": len(fold_predictions),
        "min_fold_cases": smallest,
    }
    for metric in METRICS[task]:
        if math.isnan(pooled_metrics[metric]):
            logger.warning(
                "%s of %s / %s is undefined on the pooled out-of-fold cases (a class without "
                "cases, or no events?)",
                metric, model, encoder,
            )  # fmt: skip
        mean, std = _fold_statistics([fold[metric] for fold in per_fold], metric, model)
        low, high = intervals[metric]
        row |= {
            f"{metric}_pooled": pooled_metrics[metric],
            f"{metric}_ci_low": low,
            f"{metric}_ci_high": high,
            f"{metric}_mean": mean,
            f"{metric}_std": std,
        }
    return row


def aggregate(
    runs: Sequence[tuple[str, str, Sequence[Path]]], *, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """The summary table of runs, one row each (:func:`summarize_run`).

    Args:
        runs: ``(model, encoder, fold directories)``; each directory holds ``predictions.csv``.
        n_boot: Bootstrap resamples per run.
        seed: Seed of every run's bootstrap.

    Returns:
        Columns :func:`summary_columns` of the tasks present; a run's columns of another task
        are NaN.

    Raises:
        FileFormatError: A fold's ``predictions.csv`` is missing or unreadable.
    """
    rows = []
    for model, encoder, fold_dirs in runs:
        folds = [read_predictions(Path(fold_dir) / PREDICTIONS_FILE) for fold_dir in fold_dirs]
        rows.append(summarize_run(model, encoder, folds, n_boot=n_boot, seed=seed))
    columns = summary_columns({row["task"] for row in rows})
    return pd.DataFrame(rows, columns=columns)


def write_summary(table: pd.DataFrame, path: str | Path) -> None:
    """Write the summary as TSV (atomic), floats with 4 decimals, undefined values as NaN."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f", na_rep="NaN")


def read_summary(path: str | Path) -> pd.DataFrame:
    """Read a summary written by :func:`write_summary`."""
    return pd.read_csv(path, sep="\t", dtype={"model": str, "encoder": str, "task": str})


def format_summary(table: pd.DataFrame) -> str:
    """A table to print: per run and metric ``pooled [ci_low, ci_high]``, 3 decimals.

    The main metric of each task (the first of ``METRICS``) also gets its ``mean ± std`` over
    folds; a run's cells for metrics of another task are empty. A first line says what the
    numbers are; a last one warns when a fold held fewer than :data:`MIN_FOLD_CASES` cases.
    """
    tasks = [task for task in METRICS if f"{METRICS[task][0]}_pooled" in table.columns]
    shown = table[["model", "encoder", "task", "n_cases"]].copy()
    for task in tasks:
        for position, metric in enumerate(METRICS[task]):
            shown[metric] = [
                f"{row[f'{metric}_pooled']:.3f} "
                f"[{row[f'{metric}_ci_low']:.3f}, {row[f'{metric}_ci_high']:.3f}]"
                if row["task"] == task
                else ""
                for _, row in table.iterrows()
            ]
            if position == 0:
                shown[f"{metric} folds"] = [
                    f"{row[f'{metric}_mean']:.3f} ± {row[f'{metric}_std']:.3f}"
                    if row["task"] == task
                    else ""
                    for _, row in table.iterrows()
                ]
    lines = [
        "Pooled out-of-fold case-level metrics [bootstrap 95% CI]; the main one's mean ± sd "
        "over folds beside it:",
        *(line.rstrip() for line in shown.to_string(index=False).splitlines()),
    ]
    small = table[table["min_fold_cases"] < MIN_FOLD_CASES]
    if len(small):
        lines.append(
            f"Warning: folds of {int(small['min_fold_cases'].min())} held-out cases (fewer "
            f"than {MIN_FOLD_CASES}): their fold metrics are coarse; trust the pooled value."
        )
    return "\n".join(lines)

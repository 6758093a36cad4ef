"""The summary table of all model runs: metrics over folds and bootstrap CIs of pooled folds.

One row per run (a model setting on an encoder's features): for every metric of its task the
mean and standard deviation over the folds' case-level metrics, and a percentile bootstrap
confidence interval on the pooled out-of-fold case-level predictions.
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
BASE_COLUMNS = ("model", "encoder", "task", "n_cases", "n_folds")
STATISTICS = ("mean", "std", "ci_low", "ci_high")


def summary_columns(tasks: Sequence[str]) -> list[str]:
    """The summary's columns for runs of ``tasks``: the base columns, then per metric its stats.

    Metrics come in ``METRICS`` order (tasks in that order too, whatever the order of
    ``tasks``), each as ``{metric}_mean, {metric}_std, {metric}_ci_low, {metric}_ci_high``.
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
        ``{"model", "encoder", "task", "n_cases", "n_folds", "{metric}_mean", "{metric}_std",
        "{metric}_ci_low", "{metric}_ci_high", ...}``. Mean and std (ddof 1; NaN with one
        fold) are over the folds' case-level metrics, leaving out folds where a metric is
        undefined; the 95% CI (at ``alpha=0.05``) is a bootstrap of the pooled case-level
        predictions (a case in several folds is averaged over them). ``n_cases`` counts the
        distinct cases of the pooled predictions.

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
    per_fold = [compute_metrics(case_level(fold)) for fold in fold_predictions]
    pooled = case_level(pd.concat(fold_predictions, ignore_index=True))
    intervals = bootstrap_ci(pooled, n_boot=n_boot, seed=seed)
    row: dict = {
        "model": model,
        "encoder": encoder,
        "task": task,
        "n_cases": len(pooled),
        "n_folds": len(fold_predictions),
    }
    for metric in METRICS[task]:
        mean, std = _fold_statistics([fold[metric] for fold in per_fold], metric, model)
        low, high = intervals[metric]
        row |= {
            f"{metric}_mean": mean,
            f"{metric}_std": std,
            f"{metric}_ci_low": low,
            f"{metric}_ci_high": high,
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
    """A table to print: per run and metric ``mean ± std [ci_low, ci_high]``, 3 decimals.

    A run's cells for metrics of another task are empty.
    """
    metrics = [m for task in METRICS for m in METRICS[task] if f"{m}_mean" in table.columns]
    shown = table[["model", "encoder", "task", "n_cases"]].copy()
    for metric in metrics:
        shown[metric] = [
            ""
            if metric not in METRICS[row["task"]]
            else (
                f"{row[f'{metric}_mean']:.3f} ± {row[f'{metric}_std']:.3f} "
                f"[{row[f'{metric}_ci_low']:.3f}, {row[f'{metric}_ci_high']:.3f}]"
            )
            for _, row in table.iterrows()
        ]
    return "\n".join(line.rstrip() for line in shown.to_string(index=False).splitlines())

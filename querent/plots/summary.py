"""One metric across model runs, from ``summary.tsv``."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from querent.plots.style import OKABE_ITO, new_figure, styled

#: The value of a metric for a model that guesses, where it does not depend on the classes.
CHANCE: dict[str, float] = {"auc": 0.5, "c_index": 0.5, "balanced_accuracy": 0.5, "r2": 0.0}


@styled
def summary_figure(summary: pd.DataFrame, metric: str) -> Figure:
    """Horizontal bars of a metric's pooled out-of-fold value per model run, with its CI.

    Args:
        summary: The ``summary.tsv`` table: ``model``, ``encoder`` and ``{metric}_pooled``,
            ``{metric}_ci_low``, ``{metric}_ci_high``, ``{metric}_mean`` columns, one row per
            model run (and ``target``, one row per run and target, for several label columns).
            Rows without a pooled value for ``metric`` (runs of another task) are left out.
        metric: The metric to draw, such as ``auc`` or ``c_index``.

    Returns:
        The figure: one bar per run labelled ``model (encoder)`` (``: target``), best at the
        top, at the metric of the pooled out-of-fold cases; the error bar spans its bootstrap
        ``[ci_low, ci_high]``; a diamond marks the mean over folds (coarse with few cases per
        fold); a dashed line at chance for metrics in :data:`CHANCE` (0.5 is binary chance
        for balanced accuracy).

    Raises:
        ValueError: Missing columns, or no row with a pooled value for ``metric``.
    """
    pooled_column, low_column, high_column, mean_column = (
        f"{metric}_{s}" for s in ("pooled", "ci_low", "ci_high", "mean")
    )
    columns = ["model", "encoder", pooled_column, low_column, high_column, mean_column]
    missing = [column for column in columns if column not in summary.columns]
    if missing:
        raise ValueError(f"the summary lacks the columns {missing} for metric {metric!r}")
    table = summary[summary[pooled_column].notna()].sort_values(pooled_column, kind="stable")
    if table.empty:
        raise ValueError(f"the summary has no row with a value of {pooled_column}")
    pooled = table[pooled_column].to_numpy(dtype=float)
    low = table[low_column].to_numpy(dtype=float)
    high = table[high_column].to_numpy(dtype=float)
    fold_mean = table[mean_column].to_numpy(dtype=float)
    labels = [f"{m} ({e})" for m, e in zip(table["model"], table["encoder"], strict=True)]
    if "target" in table.columns:
        labels = [
            f"{label}: {target}" for label, target in zip(labels, table["target"], strict=True)
        ]

    figure = new_figure(7.0, 1.6 + 0.35 * len(table))
    ax = figure.add_subplot()
    rows = np.arange(len(table))
    ax.barh(rows, pooled, height=0.6, color=OKABE_ITO[0], alpha=0.85, label="pooled out-of-fold")
    has_ci = np.isfinite(low) & np.isfinite(high)
    if has_ci.any():
        ax.errorbar(
            (low[has_ci] + high[has_ci]) / 2,
            rows[has_ci],
            xerr=(high[has_ci] - low[has_ci]) / 2,
            fmt="none",
            ecolor="black",
            elinewidth=1.0,
            capsize=3,
            label="95% CI (bootstrap)",
        )
    has_mean = np.isfinite(fold_mean)
    if has_mean.any():
        ax.scatter(
            fold_mean[has_mean], rows[has_mean], marker="D", s=18, zorder=3,
            color=OKABE_ITO[1], label="mean over folds",
        )  # fmt: skip
    for row, value in zip(rows, pooled, strict=True):
        ax.text(0.01, row, f"{value:.3f}", va="center", fontsize=7, color="white")
    if metric in CHANCE:
        ax.axvline(CHANCE[metric], color="grey", linestyle="--", linewidth=1.0, label="chance")
    ax.set_yticks(rows, labels)
    ax.grid(False, axis="y")
    drawn = np.concatenate([low, high, pooled, fold_mean])
    left = min(0.0, float(np.nanmin(drawn)) * 1.02)  # a negative R² is drawn, not cut off
    ax.set_xlim(left, max(1.0, float(np.nanmax(drawn))) * 1.02)
    ax.set_xlabel(metric)
    ax.set_ylabel("model (encoder)")
    ax.set_title(f"{metric} per model run (pooled out-of-fold cases)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure

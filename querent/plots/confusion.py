"""Confusion matrix of argmax predictions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

from querent.plots.style import new_figure, styled


def argmax_predictions(table: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """The class with the highest ``prob_<class>`` in every row (the first one on ties).

    Raises:
        ValueError: A ``prob_<class>`` column is missing.
    """
    columns = [f"prob_{name}" for name in classes]
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise ValueError(f"the predictions lack the columns {missing}")
    return np.asarray(classes, dtype=object)[table[columns].to_numpy().argmax(axis=1)]


@styled
def confusion_figure(table: pd.DataFrame, classes: Sequence[str]) -> Figure:
    """Confusion matrix of argmax predictions: count and row share in every cell.

    Args:
        table: Predictions at the level to plot (``truth``, ``prob_<class>`` columns); pass a
            case-level table (one row per case, slides averaged) for a case-level matrix. Several
            folds' out-of-fold tables may be concatenated.
        classes: Class names, in the order of the rows and columns.

    Returns:
        The figure: rows are true classes, columns predicted ones; a cell reads ``count`` over
        its share of the row (the recall on the diagonal), coloured by that share.

    Raises:
        ValueError: Fewer than two classes, a missing column, or a true class not in ``classes``.
    """
    classes = [str(name) for name in classes]
    if len(classes) < 2:
        raise ValueError(f"a confusion matrix needs two or more classes, got {classes}")
    truth = table["truth"].astype(str).to_numpy()
    unknown = sorted(set(truth) - set(classes))
    if unknown:
        raise ValueError(f"true classes {unknown} are not among {classes}")
    counts = confusion_matrix(truth, argmax_predictions(table, classes), labels=classes)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)

    size = 2.4 + 0.8 * len(classes)
    figure = new_figure(size + 1.0, size)
    ax = figure.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for row, column in np.ndindex(counts.shape):
        share = f"{shares[row, column]:.0%}" if totals[row, 0] else "–"
        ax.text(
            column,
            row,
            f"{counts[row, column]}\n{share}",
            ha="center",
            va="center",
            fontsize=9,
            color="white" if shares[row, column] > 0.6 else "black",
        )
    ticks = np.arange(len(classes))
    rotation = 30 if max(map(len, classes)) > 6 else 0
    ax.set_xticks(ticks, classes, rotation=rotation, ha="right" if rotation else "center")
    ax.set_yticks(ticks, classes)
    ax.grid(False)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix (n = {int(counts.sum())})")
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of true class")
    return figure

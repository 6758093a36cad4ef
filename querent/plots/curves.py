"""ROC curves over folds and training curves.

Inputs are tables already at the level to plot (slide or case): callers that want case-level
ROC curves average the slides of a case first (``querent.engine.metrics.case_level``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from querent.plots.style import new_figure, styled

#: The common false-positive-rate grid the mean ROC curve is interpolated on.
FPR_GRID = np.linspace(0.0, 1.0, 201)


def probability_classes(table: pd.DataFrame) -> list[str]:
    """Class names of the ``prob_<class>`` columns, in column order.

    Raises:
        ValueError: Fewer than two ``prob_`` columns.
    """
    classes = [column[len("prob_") :] for column in table.columns if column.startswith("prob_")]
    if len(classes) < 2:
        raise ValueError(f"a classification table needs two or more prob_ columns, got {classes}")
    return classes


class FoldRoc(NamedTuple):
    """One fold's ROC curve: as drawn, on :data:`FPR_GRID`, and its AUC."""

    fpr: np.ndarray
    tpr: np.ndarray
    tpr_on_grid: np.ndarray
    auc: float


def _binary_roc(truth: np.ndarray, score: np.ndarray) -> FoldRoc:
    """The ROC curve and AUC of one binary problem."""
    fpr, tpr, _ = roc_curve(truth, score)
    on_grid = np.interp(FPR_GRID, fpr, tpr)
    on_grid[0] = 0.0
    return FoldRoc(fpr, tpr, on_grid, float(roc_auc_score(truth, score)))


def fold_roc(table: pd.DataFrame, classes: Sequence[str]) -> FoldRoc | str:
    """One fold's ROC curve and AUC, or why the fold is skipped.

    Two classes: the positive class is the second. More: one-vs-rest per class, and the
    macro mean of the per-class curves (on :data:`FPR_GRID`) and AUCs, which is sklearn's
    ``multi_class="ovr"`` macro AUC.

    Args:
        table: ``truth`` and ``prob_<class>`` columns.
        classes: Class names in the order of the ``prob_`` columns.

    Returns:
        The curve, or a note naming the absent classes.

    Raises:
        ValueError: A true class that is not among ``classes``.
    """
    truth = table["truth"].astype(str).to_numpy()
    unknown = sorted(set(truth) - set(classes))
    if unknown:
        raise ValueError(f"true classes {unknown} are not among the prob_ classes {list(classes)}")
    absent = [name for name in classes if name not in set(truth)]
    if absent:
        return f"{', '.join(absent)} absent"
    if len(classes) == 2:
        return _binary_roc(truth == classes[1], table[f"prob_{classes[1]}"].to_numpy())
    per_class = [_binary_roc(truth == name, table[f"prob_{name}"].to_numpy()) for name in classes]
    macro = np.mean([roc.tpr_on_grid for roc in per_class], axis=0)
    return FoldRoc(FPR_GRID, macro, macro, float(np.mean([roc.auc for roc in per_class])))


@styled
def roc_figure(folds: Sequence[pd.DataFrame], *, title: str = "") -> Figure:
    """ROC curve of every fold (thin), their mean on a common FPR grid and a ±1 std band.

    Args:
        folds: One predictions table per fold (``truth``, ``prob_<class>`` columns), at the
            level to plot. Fold ``k`` is the ``k``-th table.
        title: Figure title; ``" (one-vs-rest macro)"`` is appended for more than two classes.

    Returns:
        The figure; the legend gives each fold's AUC as ``0.812`` and their mean ± std (ddof 1,
        as in ``summary.tsv``); the band is ± 1 std of the folds' curves.

    Raises:
        ValueError: No folds, or folds with different classes.
    """
    if not folds:
        raise ValueError("roc_figure needs at least one fold")
    classes = probability_classes(folds[0])
    for table in folds[1:]:
        if probability_classes(table) != classes:
            raise ValueError(f"folds disagree on the classes: {probability_classes(table)}")
    multiclass = len(classes) > 2
    figure = new_figure(5.0, 5.0)
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="chance")
    curves, aucs = [], []
    for fold, table in enumerate(folds):
        result = fold_roc(table, classes)
        if isinstance(result, str):
            ax.plot([], [], " ", label=f"fold {fold} skipped: {result}")
            continue
        label = f"fold {fold} (AUC {result.auc:.3f})"
        ax.plot(result.fpr, result.tpr, linewidth=0.9, alpha=0.7, label=label)
        curves.append(result.tpr_on_grid)
        aucs.append(result.auc)
    if curves:
        # ddof 1, as in summary.tsv, so the legend and the table agree; no spread with one fold
        mean = np.mean(curves, axis=0)
        mean[-1] = 1.0
        kind = "macro mean" if multiclass else "mean"
        spread = f" ± {np.std(aucs, ddof=1):.3f}" if len(aucs) > 1 else ""
        label = f"{kind} (AUC {np.mean(aucs):.3f}{spread})"
        ax.plot(FPR_GRID, mean, color="black", linewidth=2.0, label=label)
        if len(curves) > 1:
            std = np.std(curves, axis=0, ddof=1)
            lower, upper = np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1)
            ax.fill_between(FPR_GRID, lower, upper, color="grey", alpha=0.25, label="± 1 std")
    positive = "one-vs-rest macro" if multiclass else f"positive class: {classes[1]}"
    ax.set_title(f"{title or 'ROC'} ({positive})")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.legend(loc="lower right")
    return figure


def _require(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise ValueError naming the ``columns`` missing from ``table``."""
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise ValueError(f"{what} lacks the columns {missing}; it has {list(table.columns)}")


@styled
def training_figure(histories: Sequence[pd.DataFrame], metric: str) -> Figure:
    """Train and validation loss per fold, and the validation metric per fold, over epochs.

    Args:
        histories: One ``history.csv`` table per fold (``epoch, train_loss, val_loss,
            val_<metric>``); fold ``k`` is the ``k``-th table.
        metric: The validation metric's name, such as ``auc`` or ``c_index``.

    Returns:
        The figure: losses on the left (train solid, validation dashed, one colour per fold),
        ``val_<metric>`` on the right.

    Raises:
        ValueError: No histories, or a history without the needed columns.
    """
    if not histories:
        raise ValueError("training_figure needs at least one history")
    column = f"val_{metric}"
    for fold, history in enumerate(histories):
        _require(history, ["epoch", "train_loss", "val_loss", column], f"history of fold {fold}")
    figure = new_figure(9.0, 3.8)
    loss_ax, metric_ax = figure.subplots(1, 2)
    for fold, history in enumerate(histories):
        (line,) = loss_ax.plot(
            history["epoch"], history["train_loss"], linewidth=1.2, label=f"fold {fold} train"
        )
        colour = line.get_color()
        loss_ax.plot(
            history["epoch"],
            history["val_loss"],
            linestyle="--",
            linewidth=1.2,
            color=colour,
            label=f"fold {fold} val",
        )
        metric_ax.plot(
            history["epoch"], history[column], marker=".", color=colour, label=f"fold {fold}"
        )
    loss_ax.set_title("loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend(ncols=2 if len(histories) > 3 else 1)
    metric_ax.set_title(f"validation {metric}")
    metric_ax.set_xlabel("epoch")
    metric_ax.set_ylabel(column)
    metric_ax.legend()
    return figure

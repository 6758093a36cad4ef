"""Predicted against true values of a regression, one colour per fold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import r2_score

from querent.plots.style import OKABE_ITO, new_figure, styled


@styled
def predicted_figure(folds: Sequence[pd.DataFrame]) -> Figure:
    """A scatter of predicted against true values of the out-of-fold cases, with the identity.

    Args:
        folds: Each fold's predictions at the level to plot (``target`` and ``prediction``
            columns); pass case-level tables for one point per case.

    Returns:
        The figure: one colour per fold (``fold k`` in the legend), the line ``predicted =
        true`` dashed, equal axes; the title gives scikit-learn's R² of all points together
        (the pooled out-of-fold R² when every case is in one fold).

    Raises:
        ValueError: No fold, a missing column, or no point at all.
    """
    if not folds:
        raise ValueError("predicted_figure needs at least one fold")
    for k, fold in enumerate(folds):
        missing = [c for c in ("target", "prediction") if c not in fold.columns]
        if missing:
            raise ValueError(f"the table of fold {k} lacks the columns {missing}")
    pooled = pd.concat([fold[["target", "prediction"]] for fold in folds], ignore_index=True)
    if pooled.empty:
        raise ValueError("predicted_figure needs at least one case")
    values = pooled.to_numpy(dtype=float)
    r2 = r2_score(pooled["target"], pooled["prediction"]) if len(pooled) > 1 else float("nan")

    figure = new_figure(5.0, 4.6)
    ax = figure.add_subplot()
    for k, fold in enumerate(folds):
        ax.scatter(
            fold["target"], fold["prediction"], s=22, alpha=0.8, edgecolors="none",
            color=OKABE_ITO[k % len(OKABE_ITO)], label=f"fold {k}",
        )  # fmt: skip
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    margin = 0.05 * (high - low) or 0.5
    limits = (low - margin, high + margin)
    ax.plot(limits, limits, color="grey", linestyle="--", linewidth=1.0, label="predicted = true")
    ax.set_xlim(limits)
    ax.set_ylim(limits)
    ax.set_aspect("equal")
    ax.set_xlabel("true value")
    ax.set_ylabel("predicted value")
    ax.set_title(f"out-of-fold cases (n = {len(pooled)}): R² = {r2:.3f}")
    ax.legend(loc="upper left")
    return figure

"""Kaplan-Meier curves by risk group, with the log-rank test and numbers at risk.

The curves are drawn from lifelines' fitted estimates on a plain Axes (lifelines' own plotting
and ``add_at_risk_counts`` go through pyplot), and the numbers at risk are text rows on an Axes
under the curves.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test
from matplotlib.figure import Figure

from querent.plots.style import OKABE_ITO, new_figure, styled

#: Group labels from the lowest to the highest risk, by number of groups.
GROUP_LABELS: dict[int, tuple[str, ...]] = {2: ("low", "high"), 3: ("low", "mid", "high")}

#: One colour per group label.
GROUP_COLOURS = {"low": OKABE_ITO[0], "mid": OKABE_ITO[4], "high": OKABE_ITO[1]}


def risk_groups(risk: np.ndarray, groups: int = 2) -> np.ndarray:
    """Label each risk by its quantile group: median split for 2 groups, tertiles for 3.

    The cut points are the quantiles of ``risk`` itself (out-of-fold risks, so no group is
    fitted on the cases it labels); a risk equal to a cut point goes to the lower group.

    Args:
        risk: Risk scores, higher meaning shorter survival.
        groups: 2 (``"low"``, ``"high"``) or 3 (``"low"``, ``"mid"``, ``"high"``).

    Returns:
        One label per risk, as a string array.

    Raises:
        ValueError: Another number of groups, or no risks, or a risk that is not finite.
    """
    if groups not in GROUP_LABELS:
        raise ValueError(f"groups must be one of {sorted(GROUP_LABELS)}, got {groups}")
    risk = np.asarray(risk, dtype=float)
    if risk.size == 0 or not np.isfinite(risk).all():
        raise ValueError("risk_groups needs one or more finite risks")
    cuts = np.quantile(risk, np.arange(1, groups) / groups)
    return np.asarray(GROUP_LABELS[groups])[np.searchsorted(cuts, risk, side="left")]


def logrank_p_value(table: pd.DataFrame, labels: np.ndarray) -> float:
    """Log-rank p-value across the groups in ``labels``; NaN with fewer than two groups."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    result = multivariate_logrank_test(table["time"], labels, table["event"])
    return float(result.p_value)


def _at_risk(time: np.ndarray, ticks: np.ndarray) -> list[int]:
    """Number of cases still under observation at each tick (time at or after it)."""
    return [int((time >= tick).sum()) for tick in ticks]


@styled
def km_figure(table: pd.DataFrame, groups: int = 2) -> Figure:
    """Kaplan-Meier curves per risk group with 95% bands, log-rank p and numbers at risk.

    Args:
        table: Out-of-fold predictions at the level to plot (``time``, ``event``, ``risk``
            columns; higher risk = shorter survival); pass a case-level table (one row per case)
            for case-level curves. Several folds' tables may be concatenated.
        groups: 2 (median split) or 3 (tertiles) of the risks in ``table``.

    Returns:
        The figure; its title reads ``log-rank p = <p:.3g>``.

    Raises:
        ValueError: A missing column, no rows, or an unsupported number of groups.
    """
    missing = [column for column in ("time", "event", "risk") if column not in table.columns]
    if missing:
        raise ValueError(f"the survival predictions lack the columns {missing}")
    table = table.dropna(subset=["time", "event", "risk"])
    labels = risk_groups(table["risk"].to_numpy(), groups)
    time = table["time"].to_numpy(dtype=float)
    event = table["event"].to_numpy().astype(bool)
    p_value = logrank_p_value(table, labels)

    figure = new_figure(6.0, 5.2)
    ax, table_ax = figure.subplots(2, 1, sharex=True, height_ratios=[4, 0.4 + 0.3 * groups])
    present = [name for name in GROUP_LABELS[groups] if (labels == name).any()]
    for name in present:
        mask = labels == name
        fitter = KaplanMeierFitter().fit(time[mask], event[mask], label=name)
        curve = fitter.survival_function_[name]
        band = fitter.confidence_interval_survival_function_
        colour = GROUP_COLOURS[name]
        label = f"{name} risk (n = {int(mask.sum())}, events = {int(event[mask].sum())})"
        ax.step(curve.index, curve.to_numpy(), where="post", color=colour, label=label)
        ax.fill_between(
            band.index,
            band.iloc[:, 0].to_numpy(),
            band.iloc[:, 1].to_numpy(),
            step="post",
            color=colour,
            alpha=0.18,
            linewidth=0,
        )
        censored = np.unique(time[mask & ~event])
        ax.plot(
            censored,
            fitter.survival_function_at_times(censored).to_numpy(),
            "|",
            color=colour,
            markersize=6,
        )
    ax.plot([], [], "|", color="grey", label="censored")
    ax.plot([], [], " ", label="shaded: 95% CI")
    p_text = "n/a (one group)" if np.isnan(p_value) else f"{p_value:.3g}"
    ax.set_title(f"Kaplan-Meier by risk group (log-rank p = {p_text})")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, float(time.max()) * 1.02)
    ax.legend(loc="upper right" if groups == 2 else "best")
    ax.tick_params(labelbottom=True)
    ax.set_xlabel("time")

    ticks = np.asarray([tick for tick in ax.get_xticks() if 0 <= tick <= ax.get_xlim()[1]])
    for row, name in enumerate(reversed(present)):
        counts = _at_risk(time[labels == name], ticks)
        for tick, count in zip(ticks, counts, strict=True):
            table_ax.text(
                tick, row, str(count), ha="center", va="center", color=GROUP_COLOURS[name]
            )
    table_ax.set_ylim(-0.6, len(present) - 0.4)
    table_ax.set_yticks(range(len(present)), list(reversed(present)))
    table_ax.tick_params(left=False, bottom=False, labelbottom=False, pad=14)
    table_ax.grid(False)
    for spine in table_ax.spines.values():
        spine.set_visible(False)
    table_ax.set_title("number at risk", fontsize=9, loc="left")
    return figure

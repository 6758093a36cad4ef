"""Metrics of a predictions table, per slide and per case, with bootstrap confidence intervals.

A predictions table (``predictions.csv``, one per fold) has one row per evaluated slide:

- classification: ``slide_id, case_id, truth, prob_<class>...``; ``truth`` is a class name and
  the ``prob_`` columns, in the model's class order, sum to 1 per row.
- survival: ``slide_id, case_id, time, event, risk`` (other columns ignored); a higher risk
  means a shorter expected survival.
- regression: ``slide_id, case_id, target, prediction``, both numbers in the target's unit.
- several classification targets: ``{target}:truth`` and ``{target}:prob_<class>`` columns per
  target (:mod:`querent.engine.target_tables`); its metrics are the means over the targets'.

Every metric comes from scikit-learn (AUC, balanced accuracy, macro F1, accuracy, R²), SciPy
(Pearson's r, Spearman's rho) or lifelines (Harrell's C-index); this module only picks their
arguments. Undefined metrics (an AUC with one class, a C-index without a comparable pair, a
correlation with constant values) are NaN rather than errors, so one small fold or one unlucky
bootstrap resample does not stop a run.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import sklearn
from lifelines.utils import concordance_index
from numpy.typing import ArrayLike
from scipy.stats import pearsonr, rankdata
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    r2_score,
    recall_score,
    roc_auc_score,
)

from querent.engine.target_tables import target_names, target_table, truth_and_scores

logger = logging.getLogger(__name__)

#: The metrics of each task, in report order; the first is the task's main metric (model
#: selection).
METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("auc", "balanced_accuracy", "f1_macro", "accuracy"),
    "survival": ("c_index",),
    "regression": ("r2", "pearson", "spearman"),
}

PROB_PREFIX = "prob_"
SURVIVAL_COLUMNS = ("time", "event", "risk")
REGRESSION_COLUMNS = ("target", "prediction")


def task_of(predictions: pd.DataFrame) -> str:
    """The task of a predictions table, from its columns.

    ``"classification"`` with ``prob_`` columns (or several targets' ``{target}:truth``),
    ``"regression"`` with a ``prediction`` column, ``"survival"`` with ``time, event, risk``.

    Raises:
        ValueError: None of these.
    """
    if class_names(predictions) or target_names(predictions):
        return "classification"
    if REGRESSION_COLUMNS[1] in predictions.columns:
        return "regression"
    if set(SURVIVAL_COLUMNS) <= set(predictions.columns):
        return "survival"
    raise ValueError(
        "a predictions table needs prob_<class> columns (classification), time, event and "
        f"risk columns (survival) or a prediction column (regression); got "
        f"{list(predictions.columns)}"
    )


def class_names(predictions: pd.DataFrame) -> list[str]:
    """Class names from the ``prob_<class>`` columns, in column (= model) order."""
    return [
        str(column)[len(PROB_PREFIX) :]
        for column in predictions.columns
        if str(column).startswith(PROB_PREFIX)
    ]


def _columns(predictions: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The target and score columns of a table, by task."""
    if target_names(predictions):
        return truth_and_scores(predictions)
    task = task_of(predictions)
    if task == "classification":
        return ["truth"], [PROB_PREFIX + name for name in class_names(predictions)]
    if task == "regression":
        return ["target"], ["prediction"]
    return ["time", "event"], ["risk"]


def case_level(predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per case: the mean of its slides' scores, sorted by ``case_id``.

    Scores are the ``prob_`` columns (classification), ``risk`` (survival) or ``prediction``
    (regression); the targets (``truth``, ``time, event`` or ``target``) are the case's.
    ``slide_id`` and any other column (such as ``hazard_*``) are dropped. A case-level table
    maps onto itself.

    Raises:
        ValueError: No ``case_id`` column, or a case whose slides disagree on the target.
    """
    if "case_id" not in predictions.columns:
        raise ValueError("a predictions table needs a case_id column")
    targets, scores = _columns(predictions)
    grouped = predictions.groupby("case_id", sort=True)
    conflicting = grouped[targets].nunique(dropna=False).gt(1).any(axis=1)
    if conflicting.any():
        cases = conflicting.index[conflicting].tolist()
        raise ValueError(f"the slides of cases {cases[:5]} disagree on {', '.join(targets)}")
    return grouped[targets].first().join(grouped[scores].mean()).reset_index()


def _class_indices(truth: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Position of every true class name in ``classes``."""
    truth = np.asarray(truth).astype(str)
    classes = [str(name) for name in classes]
    unknown = sorted(set(truth) - set(classes))
    if unknown:
        raise ValueError(f"true classes {unknown} are not among the model's classes {classes}")
    lookup = {name: index for index, name in enumerate(classes)}
    return np.array([lookup[name] for name in truth], dtype=np.int64)


def _auc(truth: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC of class indices ``truth`` against (n, c) ``probs``; NaN with one class present.

    Binary: the second class is the positive one. More classes: scikit-learn's one-vs-rest
    macro AUC through its multilabel path (``label_binarize`` + ``average="macro"``, what
    ``multi_class="ovr"`` does inside) over the classes present in ``truth``: an absent class
    has no one-vs-rest AUC, and sklearn's own ``labels=range(c)`` would make the mean NaN. The
    multilabel path also skips ``multi_class``'s check that rows sum to 1, which rounded
    probabilities read back from a CSV file can fail.
    """
    n_classes = probs.shape[1]
    present = np.flatnonzero(np.bincount(truth, minlength=n_classes))
    if len(present) < 2:
        return float("nan")
    if n_classes == 2:
        return float(roc_auc_score(truth == 1, probs[:, 1]))
    one_hot = truth[:, None] == np.arange(n_classes)  # label_binarize, without its checks
    return float(roc_auc_score(one_hot[:, present], probs[:, present], average="macro"))


def classification_metrics(
    truth: Sequence[str], probs: np.ndarray, classes: Sequence[str]
) -> dict[str, float]:
    """AUC, balanced accuracy, macro F1 and accuracy; the predicted class is the argmax.

    Args:
        truth: True class name of each sample.
        probs: (n, c) class probabilities, columns in the order of ``classes``.
        classes: The model's class names.

    Returns:
        ``{metric: value}`` in the order of ``METRICS["classification"]``; the AUC is NaN when
        fewer than two classes are present in ``truth`` (see :func:`_auc` for more classes).
        Macro F1 averages over the classes present in ``truth`` or in the predictions
        (scikit-learn's default labels).

    Raises:
        ValueError: Shapes disagree, fewer than two classes, or a true class is unknown.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if len(classes) < 2 or probs.ndim != 2 or probs.shape != (len(truth), len(classes)):
        raise ValueError(
            f"probs must be (n samples, {len(classes)} classes) with n = {len(truth)} and at "
            f"least two classes, got {probs.shape}"
        )
    truth_index = _class_indices(truth, classes)
    predicted = probs.argmax(axis=1)
    return {
        "auc": _auc(truth_index, probs),
        "balanced_accuracy": float(balanced_accuracy_score(truth_index, predicted)),
        "f1_macro": float(f1_score(truth_index, predicted, average="macro")),
        "accuracy": float(accuracy_score(truth_index, predicted)),
    }


def survival_metrics(time: ArrayLike, event: ArrayLike, risk: ArrayLike) -> dict[str, float]:
    """Harrell's C-index (lifelines) of ``risk``, higher risk meaning shorter survival.

    Args:
        time: Follow-up times.
        event: 1 (or True) where the event was observed, 0 where censored.
        risk: Predicted risks.

    Returns:
        ``{"c_index": value}``; NaN without an event or a comparable pair. Ties in risk count
        one half.
    """
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=np.float64)
    risk = np.asarray(risk, dtype=np.float64)
    if not len(time) == len(event) == len(risk):
        raise ValueError(
            f"time, event, risk differ in length: {len(time)}, {len(event)}, {len(risk)}"
        )
    c_index = float("nan")
    if event.any():
        try:
            c_index = float(concordance_index(time, -risk, event))
        except ZeroDivisionError:  # lifelines: "No admissable pairs in the dataset."
            pass
    return {"c_index": c_index}


def _regression_columns(target: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """R², Pearson's r and Spearman's rho of every column of two (n, m) arrays at once.

    R² is scikit-learn's (``multioutput="raw_values"``), the correlations SciPy's
    ``pearsonr`` along the rows; Spearman's rho is Pearson's r of the average ranks
    (``rankdata``), as ``scipy.stats.spearmanr`` computes it. A column with fewer than two rows
    or a constant target has every metric NaN; constant predictions have NaN correlations.
    """
    n, m = target.shape
    if n < 2:
        return {metric: np.full(m, np.nan) for metric in METRICS["regression"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant columns: NaN, as documented
        columns = {
            "r2": r2_score(target, predicted, multioutput="raw_values"),
            "pearson": pearsonr(target, predicted, axis=0).statistic,
            "spearman": pearsonr(
                rankdata(target, axis=0), rankdata(predicted, axis=0), axis=0
            ).statistic,
        }
    constant = np.ptp(target, axis=0) == 0
    return {metric: np.where(constant, np.nan, values) for metric, values in columns.items()}


def regression_metrics(target: ArrayLike, predicted: ArrayLike) -> dict[str, float]:
    """R² (scikit-learn), Pearson's r and Spearman's rho (SciPy) of predictions of a number.

    Args:
        target: True values.
        predicted: Predicted values, in the same unit.

    Returns:
        ``{metric: value}`` in the order of ``METRICS["regression"]``; every metric is NaN with
        fewer than two samples or a constant target, the correlations with constant
        predictions. R² below 0 means worse than predicting the mean.
    """
    target = np.asarray(target, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    if target.ndim != 1 or target.shape != predicted.shape:
        raise ValueError(
            f"target and predicted must be equally long vectors, got {target.shape} and "
            f"{predicted.shape}"
        )
    columns = _regression_columns(target[:, None], predicted[:, None])
    return {metric: float(values[0]) for metric, values in columns.items()}


def compute_metrics(predictions: pd.DataFrame) -> dict[str, float]:
    """The metrics of the table's task (``METRICS``) on its rows, slides or cases alike.

    Several targets: each metric's mean over the targets where it is defined (NaN where none).
    """
    if target_names(predictions):
        slices = [target_table(predictions, name) for name in target_names(predictions)]
        per_target = [compute_metrics(table) for table in slices if len(table)]
        means = pd.DataFrame(per_target, columns=list(METRICS["classification"])).mean()
        return {key: float(value) for key, value in means.items()}
    task = task_of(predictions)
    if task == "classification":
        classes = class_names(predictions)
        probs = predictions[[PROB_PREFIX + name for name in classes]].to_numpy(np.float64)
        return classification_metrics(predictions["truth"].astype(str), probs, classes)
    if task == "regression":
        return regression_metrics(predictions["target"], predictions["prediction"])
    return survival_metrics(predictions["time"], predictions["event"], predictions["risk"])


def fold_metrics(predictions: pd.DataFrame) -> dict:
    """The ``metrics.json`` of a fold from its slide-level predictions.

    Returns:
        ``{"task", "level": {"case": {metric: value}, "slide": {metric: value}}, "n_cases",
        "n_slides"}``; several targets add ``"targets": {target: its own such dict}`` (the
        levels' metrics are then the means over targets).
    """
    cases = case_level(predictions)
    metrics = {
        "task": task_of(predictions),
        "level": {"case": compute_metrics(cases), "slide": compute_metrics(predictions)},
        "n_cases": len(cases),
        "n_slides": len(predictions),
    }
    slices = {name: target_table(predictions, name) for name in target_names(predictions)}
    if slices:  # a target without a known label here is left out
        metrics["targets"] = {
            name: fold_metrics(part) for name, part in slices.items() if len(part)
        }
    return metrics


def resample_metrics(case_predictions: pd.DataFrame, indices: np.ndarray) -> pd.DataFrame:
    """The metrics of many resamples of a table at once.

    Equal to :func:`compute_metrics` on ``case_predictions.iloc[indices[b]]`` for every ``b``
    (a test says so), but faster: regression metrics come from one call per metric over the
    (n, resamples) columns; macro F1 and balanced accuracy come from one
    ``f1_score`` / ``recall_score`` call over the one-vs-rest columns of every resample
    (``average=None``, absent classes NaN), averaged per resample over the classes that
    scikit-learn's ``average="macro"`` and ``balanced_accuracy_score`` average over.

    Args:
        case_predictions: A predictions table (normally case level).
        indices: (n_resamples, n) row positions of each resample.

    Returns:
        One row per resample, one column per metric of the task.
    """
    indices = np.asarray(indices, dtype=np.int64)
    task = task_of(case_predictions)
    with (
        warnings.catch_warnings(),
        sklearn.config_context(assume_finite=True, skip_parameter_validation=True),
    ):
        warnings.simplefilter("ignore")  # undefined metrics are NaN, skipped by the caller
        if task == "survival":
            time, event, risk = (case_predictions[c].to_numpy(np.float64) for c in SURVIVAL_COLUMNS)
            rows = [survival_metrics(time[i], event[i], risk[i]) for i in indices]
            return pd.DataFrame(rows, columns=list(METRICS[task]))
        if task == "regression":
            target, predicted = (
                case_predictions[c].to_numpy(np.float64)[indices.T] for c in REGRESSION_COLUMNS
            )
            return pd.DataFrame(_regression_columns(target, predicted))
        classes = class_names(case_predictions)
        probs = case_predictions[[PROB_PREFIX + name for name in classes]].to_numpy(np.float64)
        truth = _class_indices(case_predictions["truth"].astype(str), classes)
        predicted = probs.argmax(axis=1)
        n_resamples, n = indices.shape
        n_classes = len(classes)

        def one_vs_rest(labels: np.ndarray) -> np.ndarray:  # (n,) -> (n, b * c), per resample
            hits = labels[indices][:, :, None] == np.arange(n_classes)
            return hits.transpose(1, 0, 2).reshape(n, n_resamples * n_classes)

        true_columns, predicted_columns = one_vs_rest(truth), one_vs_rest(predicted)
        per_class = {
            name: score(true_columns, predicted_columns, average=None, zero_division=np.nan)
            for name, score in (("f1_macro", f1_score), ("balanced_accuracy", recall_score))
        }
        table = pd.DataFrame(
            {
                "auc": [_auc(truth[i], probs[i]) for i in indices],
                **{
                    name: np.nanmean(values.reshape(n_resamples, n_classes), axis=1)
                    for name, values in per_class.items()
                },
                "accuracy": [accuracy_score(truth[i], predicted[i]) for i in indices],
            }
        )
    return table[list(METRICS[task])]


def bootstrap_ci(
    case_predictions: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals of every metric, resampling cases.

    Each of ``n_boot`` resamples draws ``n`` rows of the case-level table with replacement
    (``numpy.random.default_rng(seed)``, so a seed gives one answer); resamples in which a
    metric is undefined (NaN) are left out of that metric's interval.

    Args:
        case_predictions: Case-level predictions (:func:`case_level`).
        n_boot: Number of resamples.
        seed: Seed of the resampling.
        alpha: 1 - confidence level; 0.05 gives 95% intervals.

    Returns:
        ``{metric: (low, high)}`` at the ``alpha / 2`` and ``1 - alpha / 2`` quantiles; (NaN,
        NaN) where no resample defines the metric.
    """
    if n_boot < 1 or not 0.0 < alpha < 1.0:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1, got {n_boot} and {alpha}")
    if len(case_predictions) == 0:
        raise ValueError("cannot bootstrap an empty predictions table")
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(case_predictions), size=(n_boot, len(case_predictions)))
    samples = resample_metrics(case_predictions, indices)
    intervals = {}
    for metric in samples.columns:
        values = samples[metric].dropna().to_numpy()
        if len(values) < n_boot:
            logger.debug("%s undefined in %d of %d resamples", metric, n_boot - len(values), n_boot)
        if len(values) == 0:
            intervals[metric] = (float("nan"), float("nan"))
            continue
        low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
        intervals[metric] = (float(low), float(high))
    return intervals

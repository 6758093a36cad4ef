"""Losses for slide classification, survival and regression.

Axes: ``b`` slides in a batch, ``c`` classes, ``j`` discrete time bins.

Regression targets reach :func:`regression_loss` standardised (the training slides' mean and
standard deviation, see :class:`~querent.engine.tasks.RegressionTask`), so Huber's ``delta`` of 1
is one standard deviation whatever the target's unit.

Survival targets are ``times`` (>= 0) and ``events`` (1 or True where death / progression was
observed, 0 or False where the patient was censored at ``times``).

Discrete-time survival (Zadeh & Schmid, 2020, as in MCAT and PORPOISE): follow-up is cut into
bins; the model's ``j`` logits are the hazards ``h_j = P(T in bin j | T not before bin j)``
through a sigmoid, and survival to the end of bin ``j`` is ``S_j = prod_{i <= j} (1 - h_i)``.
A patient with an event in bin ``y`` contributes ``-log S_{y-1} - log h_y``; one censored in
bin ``y`` contributes ``-log S_y``. Logs of hazards are taken with ``logsigmoid``, so large
logits give large finite losses instead of ``inf``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike


def balanced_class_weights(labels: ArrayLike, n_classes: int) -> torch.Tensor:
    """Class weights ``b / (n_classes * count_c)`` that give every class the same total weight.

    Args:
        labels: Training labels in ``[0, n_classes)``.
        n_classes: Number of classes.

    Returns:
        (c,) float32 weights; 1 everywhere for a perfectly balanced set.

    Raises:
        ValueError: A label is out of range or a class has no training example.
    """
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must be a non-empty set of class indices in [0, {n_classes})")
    counts = torch.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"classes {missing} have no training examples; cannot balance them")
    return (len(labels) / (n_classes * counts)).float()


def cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, *, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy, optionally class-weighted.

    With weights the mean is weighted too: ``sum_b w[y_b] * ce_b / sum_b w[y_b]``, so the loss
    keeps its scale whatever the weights' scale.

    Args:
        logits: (b, c).
        labels: (b,) class indices.
        class_weights: (c,) weight per class, e.g. from :func:`balanced_class_weights`.

    Returns:
        Scalar loss.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be (b, c) and labels (b,), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if class_weights is not None:
        if class_weights.shape != logits.shape[1:]:
            raise ValueError(
                f"class_weights must be ({logits.shape[1]},), got {tuple(class_weights.shape)}"
            )
        class_weights = class_weights.to(logits)
    return F.cross_entropy(logits, labels, weight=class_weights)


def quantile_bin_edges(times: ArrayLike, events: ArrayLike, n_bins: int) -> torch.Tensor:
    """Time bin edges at the quantiles of the observed event times.

    The inner edges are the ``1/n_bins, ..., (n_bins-1)/n_bins`` quantiles (linear
    interpolation) of the times of uncensored patients, so each bin holds about as many
    events. The outer edges are 0 and ``inf`` rather than the training set's extreme times, so
    any follow-up time, including those of validation and test patients, falls in a bin. Bins
    are half-open, ``[edges[j], edges[j + 1])``.

    Args:
        times: Follow-up times, >= 0.
        events: 1 (or True) where the event was observed.
        n_bins: Number of bins.

    Returns:
        (n_bins + 1,) float64 edges, strictly increasing.

    Raises:
        ValueError: No events, negative times, or too few distinct event times for distinct
            edges.
    """
    times = torch.as_tensor(times, dtype=torch.float64).flatten()
    events = torch.as_tensor(events).flatten().bool()
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if times.shape != events.shape:
        raise ValueError(f"times and events differ in length: {len(times)} and {len(events)}")
    if (times < 0).any():
        raise ValueError("survival times must be >= 0")
    if not events.any():
        raise ValueError("no uncensored patients: bin edges come from observed event times")
    quantiles = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)[1:-1]
    inner = torch.quantile(times[events], quantiles)
    edges = torch.cat([inner.new_zeros(1), inner, inner.new_full((1,), torch.inf)])
    if (edges.diff() <= 0).any():
        raise ValueError(
            f"the event times give repeated bin edges {edges.tolist()}; use fewer than {n_bins} "
            "bins"
        )
    return edges


def time_to_bin(times: ArrayLike, edges: torch.Tensor) -> torch.Tensor:
    """Bin of every time: ``j`` such that ``edges[j] <= t < edges[j + 1]``.

    Args:
        times: Follow-up times.
        edges: (n_bins + 1,) from :func:`quantile_bin_edges`.

    Returns:
        (b,) int64 bin indices.
    """
    times = torch.as_tensor(times, dtype=edges.dtype).flatten()
    if (times < edges[0]).any() or (times >= edges[-1]).any():
        raise ValueError(f"times must lie in [{edges[0].item()}, {edges[-1].item()})")
    return torch.bucketize(times, edges[1:-1], right=True)


def discrete_time_nll(
    logits: torch.Tensor, bins: torch.Tensor, events: torch.Tensor, *, alpha: float = 0.0
) -> torch.Tensor:
    """Negative log-likelihood of discrete-time survival, averaged over the batch.

    As MCAT's ``NLLSurvLoss``, ``alpha`` up-weights uncensored patients: the per-patient loss
    is ``(1 - alpha) * (censored + uncensored term) + alpha * uncensored term``.

    Args:
        logits: (b, j) hazard logits.
        bins: (b,) time bin of each patient (:func:`time_to_bin`).
        events: (b,) 1 (or True) where the event was observed.
        alpha: Extra weight of the uncensored term, in [0, 1].

    Returns:
        Scalar loss.
    """
    if logits.ndim != 2 or bins.shape != logits.shape[:1] or events.shape != bins.shape:
        raise ValueError(
            f"logits must be (b, n_bins) and bins, events (b,), got {tuple(logits.shape)}, "
            f"{tuple(bins.shape)}, {tuple(events.shape)}"
        )
    if (bins < 0).any() or (bins >= logits.shape[1]).any():
        raise ValueError(f"bins must lie in [0, {logits.shape[1]})")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    events = events.to(logits.dtype)
    bins = bins.long()[:, None]
    log_survival = F.logsigmoid(-logits).cumsum(dim=1)  # log S_j
    log_survival_before = F.pad(log_survival, (1, 0))[:, :-1]  # log S_{j-1}, with S_{-1} = 1
    log_hazard = F.logsigmoid(logits)
    uncensored = -events * (
        log_survival_before.gather(1, bins) + log_hazard.gather(1, bins)
    ).squeeze(1)
    censored = -(1 - events) * log_survival.gather(1, bins).squeeze(1)
    return ((1 - alpha) * (censored + uncensored) + alpha * uncensored).mean()


def risk_from_discrete(logits: torch.Tensor) -> torch.Tensor:
    """Risk score for the C-index: minus the sum of survival over the bins (higher = riskier).

    Args:
        logits: (b, j) hazard logits.

    Returns:
        (b,) risks.
    """
    return -F.logsigmoid(-logits).cumsum(dim=1).exp().sum(dim=1)


def cox_partial_nll(risk: torch.Tensor, times: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood with Breslow's handling of ties.

    Every patient with an event contributes ``log sum_{k: t_k >= t_i} exp(r_k) - r_i``; tied
    times share one risk set that includes all of them. The sum is divided by the number of
    events. The risk sets are the batch, so batches should be large enough to hold several
    events.

    Args:
        risk: (b,) log hazard ratios (model outputs).
        times: (b,) follow-up times.
        events: (b,) 1 (or True) where the event was observed.

    Returns:
        Scalar loss.

    Raises:
        ValueError: The batch has no events (the partial likelihood is then empty).
    """
    if risk.ndim != 1 or times.shape != risk.shape or events.shape != risk.shape:
        raise ValueError(
            f"risk, times and events must all be (b,), got {tuple(risk.shape)}, "
            f"{tuple(times.shape)}, {tuple(events.shape)}"
        )
    events = events.bool()
    if not events.any():
        raise ValueError(
            "the batch has no events, so the Cox partial likelihood is undefined; use larger "
            "batches or the discrete-time loss"
        )
    order = torch.argsort(times)
    sorted_times, sorted_risk = times[order], risk[order]
    # log sum of exp(risk) over positions >= i in time order
    log_tail = sorted_risk.flip(0).logcumsumexp(0).flip(0)
    # the risk set of a tied time starts at the first patient with that time
    first_at_time = torch.searchsorted(sorted_times, sorted_times)
    log_risk_set = log_tail[first_at_time]
    observed = events[order]
    return (log_risk_set - sorted_risk)[observed].mean()


#: Losses of a continuous target (``training.regression_loss``).
REGRESSION_LOSSES = ("mse", "huber")


def regression_loss(
    predicted: torch.Tensor, target: torch.Tensor, *, kind: str = "mse", delta: float = 1.0
) -> torch.Tensor:
    """Mean squared error, or Huber's loss (squared within ``delta``, linear beyond it).

    Huber's loss grows linearly with large errors, so a few outlying targets pull the fit less
    than under the squared error.

    Args:
        predicted: (b,) predictions.
        target: (b,) true values, on the scale of ``predicted``.
        kind: ``mse`` or ``huber``.
        delta: Where Huber's loss turns from squared to linear.

    Returns:
        Scalar loss, the mean over the batch.
    """
    if predicted.ndim != 1 or target.shape != predicted.shape:
        raise ValueError(
            f"predicted and target must both be (b,), got {tuple(predicted.shape)} and "
            f"{tuple(target.shape)}"
        )
    if kind not in REGRESSION_LOSSES:
        raise ValueError(f"kind must be one of {REGRESSION_LOSSES}, got {kind!r}")
    target = target.to(predicted)
    if kind == "huber":
        return F.huber_loss(predicted, target, delta=delta)
    return F.mse_loss(predicted, target)

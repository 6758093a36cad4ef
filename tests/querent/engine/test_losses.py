import math

import numpy as np
import pytest
import torch

from querent.engine.losses import (
    balanced_class_weights,
    cox_partial_nll,
    cross_entropy,
    discrete_time_nll,
    quantile_bin_edges,
    risk_from_discrete,
    time_to_bin,
)


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


# --- classification -------------------------------------------------------------------------


def test_balanced_class_weights():
    weights = balanced_class_weights([0, 0, 0, 1, 2, 2], n_classes=3)
    torch.testing.assert_close(weights, torch.tensor([6 / 9, 6 / 3, 6 / 6]))
    torch.testing.assert_close(balanced_class_weights([1, 0, 1, 0], 2), torch.ones(2))


@pytest.mark.parametrize(("labels", "n_classes"), [([0, 0, 2], 3), ([0, 3], 3), ([], 2)])
def test_balanced_class_weights_reject_missing_or_bad_labels(labels, n_classes):
    with pytest.raises(ValueError):
        balanced_class_weights(labels, n_classes)


def test_class_weights_reweight_cross_entropy():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.5], [0.0, 2.0]])
    labels = torch.tensor([0, 1, 1, 0])
    per_slide = [
        math.log(sum(math.exp(v) for v in row)) - row[y]
        for row, y in zip(logits.tolist(), labels.tolist(), strict=True)
    ]
    plain = cross_entropy(logits, labels)
    assert plain.item() == pytest.approx(sum(per_slide) / 4)
    assert cross_entropy(logits, labels, class_weights=torch.ones(2)).item() == pytest.approx(
        plain.item()
    )
    w = [1.0, 3.0]
    weighted = cross_entropy(logits, labels, class_weights=torch.tensor(w))
    expected = sum(w[y] * loss for y, loss in zip(labels.tolist(), per_slide, strict=True)) / sum(
        w[y] for y in labels.tolist()
    )
    assert weighted.item() == pytest.approx(expected)
    # class 1 slides are fitted better here, so weighting them up lowers the loss
    assert weighted < plain


def test_cross_entropy_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        cross_entropy(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        cross_entropy(
            torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), class_weights=torch.ones(3)
        )


# --- discrete-time survival -----------------------------------------------------------------


def _hand_nll(logits, bin_, event):
    hazards = [_sigmoid(v) for v in logits]
    survival_before = math.prod(1 - h for h in hazards[:bin_])
    if event:
        return -math.log(survival_before) - math.log(hazards[bin_])
    return -math.log(survival_before * (1 - hazards[bin_]))


LOGITS = [[0.2, -1.0, 0.5, 1.3], [1.0, 0.3, -0.4, -2.0], [-0.7, 0.1, 2.2, 0.0]]


@pytest.mark.parametrize(("bin_", "event"), [(0, 1), (0, 0), (2, 1), (2, 0), (3, 1), (3, 0)])
def test_discrete_nll_single_patient_by_hand(bin_, event):
    loss = discrete_time_nll(
        torch.tensor(LOGITS[:1], dtype=torch.float64), torch.tensor([bin_]), torch.tensor([event])
    )
    assert loss.item() == pytest.approx(_hand_nll(LOGITS[0], bin_, event), rel=1e-12)


def test_discrete_nll_batch_and_alpha_by_hand():
    bins, events, alpha = [1, 3, 0], [1, 0, 1], 0.4
    terms = [_hand_nll(row, b, e) for row, b, e in zip(LOGITS, bins, events, strict=True)]
    uncensored = [t * e for t, e in zip(terms, events, strict=True)]
    expected = sum((1 - alpha) * t + alpha * u for t, u in zip(terms, uncensored, strict=True)) / 3
    args = torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(bins), torch.tensor(events)
    assert discrete_time_nll(*args).item() == pytest.approx(sum(terms) / 3, rel=1e-12)
    assert discrete_time_nll(*args, alpha=alpha).item() == pytest.approx(expected, rel=1e-12)
    # alpha = 1 ignores the censored patient entirely
    only_events = sum(uncensored) / 3
    assert discrete_time_nll(*args, alpha=1.0).item() == pytest.approx(only_events, rel=1e-12)


def test_discrete_nll_is_finite_for_saturated_hazards():
    logits = torch.tensor([[-100.0, 100.0], [-100.0, 100.0]], requires_grad=True)
    loss = discrete_time_nll(logits, torch.tensor([1, 1]), torch.tensor([True, False]))
    # the event is certain (loss ~0); censoring after a certain event costs ~100, not inf
    assert loss.item() == pytest.approx(50.0, rel=1e-4)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    ("bins", "events", "alpha"),
    [([0, 4], [1, 1], 0.0), ([0, -1], [1, 1], 0.0), ([0, 1], [1, 1], 1.5), ([0], [1, 0], 0.0)],
)
def test_discrete_nll_rejects_bad_inputs(bins, events, alpha):
    with pytest.raises(ValueError):
        discrete_time_nll(torch.zeros(2, 4), torch.tensor(bins), torch.tensor(events), alpha=alpha)


def test_risk_is_minus_summed_survival_and_grows_with_hazard():
    logits = torch.tensor(LOGITS, dtype=torch.float64)
    expected = [
        -sum(math.prod(1 - _sigmoid(v) for v in row[: j + 1]) for j in range(len(row)))
        for row in LOGITS
    ]
    torch.testing.assert_close(risk_from_discrete(logits), torch.tensor(expected).double())
    assert (risk_from_discrete(logits + 0.5) > risk_from_discrete(logits)).all()


# --- time bins ------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_bins", "seed"), [(1, 0), (4, 1), (7, 2)])
def test_quantile_bins_cover_all_times_and_split_events_evenly(n_bins, seed):
    rng = np.random.default_rng(seed)
    times = rng.exponential(30.0, size=200)
    events = rng.random(200) < 0.6
    edges = quantile_bin_edges(times, events, n_bins)
    assert len(edges) == n_bins + 1
    assert edges[0] == 0 and edges[-1] == math.inf
    assert (edges.diff() > 0).all()
    inner = np.quantile(times[events], np.arange(1, n_bins) / n_bins)
    np.testing.assert_allclose(edges[1:-1].numpy(), inner)
    bins = time_to_bin(times, edges).numpy()
    low, high = edges.numpy()[bins], edges.numpy()[bins + 1]
    assert ((low <= times) & (times < high)).all()
    counts = np.bincount(bins[events], minlength=n_bins)
    assert np.abs(counts - events.sum() / n_bins).max() <= 1


def test_time_to_bin_edges_are_left_closed():
    edges = torch.tensor([0.0, 2.0, 5.0, math.inf], dtype=torch.float64)
    bins = time_to_bin([0.0, 1.9, 2.0, 4.99, 5.0, 1e9], edges)
    assert bins.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        time_to_bin([-1.0], edges)


@pytest.mark.parametrize(
    ("times", "events", "n_bins"),
    [
        ([1.0, 2.0, 3.0], [0, 0, 0], 2),  # no events
        ([-1.0, 2.0, 3.0], [1, 1, 1], 2),  # negative time
        ([4.0, 4.0, 4.0, 9.0], [1, 1, 1, 0], 3),  # repeated edges
        ([1.0, 2.0], [1, 1], 0),
        ([1.0, 2.0], [1], 2),
    ],
)
def test_quantile_bins_reject_bad_inputs(times, events, n_bins):
    with pytest.raises(ValueError):
        quantile_bin_edges(times, events, n_bins)


# --- Cox ------------------------------------------------------------------------------------


def _naive_cox(risk, times, events):
    total = 0.0
    for i in range(len(risk)):
        if events[i]:
            at_risk = sum(math.exp(risk[k]) for k in range(len(risk)) if times[k] >= times[i])
            total += math.log(at_risk) - risk[i]
    return total / sum(events)


@pytest.mark.parametrize("seed", range(5))
def test_cox_nll_equals_naive_double_loop_with_ties(seed):
    rng = np.random.default_rng(seed)
    b = 25
    risk = rng.normal(size=b)
    times = rng.integers(0, 6, size=b).astype(float)  # many ties
    events = rng.random(b) < 0.5
    events[0] = True
    loss = cox_partial_nll(
        torch.tensor(risk), torch.tensor(times), torch.tensor(events, dtype=torch.bool)
    )
    assert loss.item() == pytest.approx(_naive_cox(risk, times, events), rel=1e-12)
    shifted = cox_partial_nll(torch.tensor(risk + 3.0), torch.tensor(times), torch.tensor(events))
    assert shifted.item() == pytest.approx(loss.item(), rel=1e-10)


def test_cox_nll_without_events_raises():
    with pytest.raises(ValueError, match="no events"):
        cox_partial_nll(torch.randn(4), torch.arange(4.0), torch.zeros(4, dtype=torch.bool))

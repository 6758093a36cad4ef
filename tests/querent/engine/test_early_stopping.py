"""Early stopping on small validation sets: ties and tiny gains do not reset the patience."""

import math

import torch

from querent.engine.checkpoint import CheckpointSaver


def _saver(tmp_path, min_delta=0.001):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    return model, CheckpointSaver(model, optimizer, scheduler, tmp_path, {}, min_delta=min_delta)


def _epochs(model, saver, scores):
    stale = []
    for epoch, score in enumerate(scores):
        with torch.no_grad():
            model.bias.fill_(float(epoch))  # which epoch's weights were kept
        saver.save_checkpoint(epoch, score, {"epoch": epoch})
        stale.append(saver.stale)
    return stale


def test_a_saturated_metric_stops_while_the_loss_still_falls(tmp_path):
    """The demo's fault: AUC 1.0 on 2 validation cases from epoch 0, the loss falling on."""
    model, saver = _saver(tmp_path)
    stale = _epochs(model, saver, [(1.0, -0.9), (1.0, -0.8), (1.0, -0.7), (1.0, -0.6)])
    assert stale == [0, 1, 2, 3]  # patience 3 stops after epoch 3
    assert saver.best_state["bias"].item() == 3.0  # the tie goes to the lowest loss


def test_only_a_gain_above_min_delta_resets_the_patience(tmp_path):
    model, saver = _saver(tmp_path, min_delta=0.01)
    stale = _epochs(model, saver, [(0.70, -1.0), (0.705, -1.0), (0.72, -1.0), (0.70, -0.1)])
    assert stale == [0, 1, 0, 1]
    assert saver.best_state["bias"].item() == 2.0


def test_an_undefined_metric_stops_on_the_loss(tmp_path):
    """A one-class validation set has no AUC: the loss decides, with the same min_delta."""
    model, saver = _saver(tmp_path)
    inf = -math.inf
    stale = _epochs(model, saver, [(inf, -0.5), (inf, -0.4), (inf, -0.3995), (inf, -0.39949)])
    assert stale == [0, 0, 1, 2]


def test_the_patience_survives_a_resume(tmp_path):
    model, saver = _saver(tmp_path)
    _epochs(model, saver, [(1.0, -0.9), (1.0, -0.8)])
    model, again = _saver(tmp_path)
    assert again.resume() == 2
    assert again.stale == 1 and again.reference == (1.0, -0.9)
    again.save_checkpoint(2, (1.0, -0.1), {"epoch": 2})
    assert again.stale == 2

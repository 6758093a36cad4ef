"""Every registered model can fit a tiny bag set, for classification and for survival."""

import pytest
import torch

from querent.engine.losses import cross_entropy, discrete_time_nll
from querent.models import create_model, list_models

pytestmark = pytest.mark.slow
IN_DIM, N_BAGS, N_BINS = 16, 6, 4
SMALL = {
    "querent": {"dim": 32, "heads": 2, "region_size": 2, "top_k": 2, "scorer": "learned"},
    "full_attention": {"dim": 32, "heads": 2},
    "local_window": {"dim": 32, "heads": 2, "region_size": 2},
    "transmil": {"dim": 32, "heads": 4},
    "camil": {"nystrom_att_dim": 32, "n_heads": 2},
    "torchmil_transmil": {"att_dim": 32},
}
#: SmABMIL has no hidden layer (attention over the raw features, a linear head): it fits the
#: random labels too, but more slowly.
EPOCHS = {"smabmil": 300}


def _bags():
    """Six bags of 20-60 patches on random lattice cells; labels unrelated to the features."""
    g = torch.Generator().manual_seed(0)
    bags = []
    for i in range(N_BAGS):
        n = 20 + 8 * i
        cells = torch.randperm(400, generator=g)[:n]
        cells = torch.stack([cells % 20, cells // 20], dim=1)
        bags.append((torch.randn(n, IN_DIM, generator=g), cells))
    return bags


def _task_loss(task):
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    bins, events = torch.tensor([0, 3, 1, 2, 3, 1]), torch.tensor([1, 0, 1, 1, 1, 0])
    if task == "classification":
        return 3, lambda logits, i: cross_entropy(logits[None], labels[i : i + 1])
    return N_BINS, lambda logits, i: discrete_time_nll(
        logits[None], bins[i : i + 1], events[i : i + 1]
    )


@pytest.mark.parametrize("task", ["classification", "survival"])
@pytest.mark.parametrize("name", list_models())
def test_model_overfits_a_tiny_bag_set(name, task):
    torch.manual_seed(0)
    n_outputs, loss_of = _task_loss(task)
    model = create_model(name, in_dim=IN_DIM, n_outputs=n_outputs, **SMALL.get(name, {}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    bags = _bags()
    for _ in range(EPOCHS.get(name, 100)):  # one bag per step as in the paper's training
        for i, (features, cells) in enumerate(bags):
            optimizer.zero_grad()
            loss_of(model(features, cells).logits, i).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    model.eval()
    with torch.no_grad():
        losses = [float(loss_of(model(f, c).logits, i)) for i, (f, c) in enumerate(bags)]
    assert max(losses) < 0.05, losses

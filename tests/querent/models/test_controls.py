"""The locality controls: what a patch's lattice neighbourhood alone gives."""

import torch

from querent.models import create_model
from querent.models.controls import neighbour_mean


def test_neighbour_mean_averages_the_present_8_neighbours_only():
    # a 3 x 3 block (features = 10 * row + column) and a lone patch far away
    cells = torch.tensor([[x, y] for y in range(3) for x in range(3)] + [[7, -4]])
    features = (10.0 * cells[:, 1] + cells[:, 0])[:, None].double()
    context = neighbour_mean(features, cells)[:, 0]
    assert context[4] == (features[:9, 0].sum() - features[4, 0]) / 8  # the centre: all 8
    assert context[0] == (1 + 10 + 11) / 3  # a corner: 3 neighbours
    assert context[9] == 0  # no neighbour at all
    shuffled = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        neighbour_mean(features[shuffled], cells[shuffled]), context[shuffled, None]
    )


def test_the_control_reads_the_neighbourhood():
    torch.manual_seed(0)
    model = create_model("neighbour_abmil", in_dim=4, n_outputs=2, dim=8, attention_dim=4).eval()
    features = torch.randn(20, 4)
    cells = torch.stack([torch.arange(20) % 5, torch.arange(20) // 5], dim=1)
    with torch.no_grad():
        near = model(features, cells).logits
        apart = model(features, cells * 3).logits  # same patches, no neighbours any more
    assert model.in_dim == 4 and not torch.allclose(near, apart)

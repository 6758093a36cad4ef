"""The locality controls: what a patch's lattice neighbourhood alone gives."""

import pytest
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


def test_the_local_window_sees_its_own_and_adjacent_regions_only():
    # one row of 5 regions of 4 x 4 cells: region 0's patches see regions 0 and 1 only
    torch.manual_seed(0)
    model = create_model("local_window", in_dim=4, n_outputs=2, dim=8, heads=2).eval()
    cells = torch.stack([torch.arange(80) % 20, torch.arange(80) // 20], dim=1)
    features = torch.randn(80, 4)
    changed = {}
    for region in (1, 2, 4):
        edited = features.clone()
        edited[(cells[:, 0] // 4) == region] += 1.0
        changed[region] = edited
    block = model.blocks[0].attention
    with torch.no_grad():
        layout = model.layout(cells, None)
        outputs = {
            name: block(model.embed(x), layout)[0][cells[:, 0] < 4]
            for name, x in {"base": features, **changed}.items()
        }
        _, selected = block(model.embed(features), layout)
    assert not torch.allclose(outputs["base"], outputs[1])  # adjacent: seen
    torch.testing.assert_close(outputs["base"], outputs[2])  # two regions away: unseen
    torch.testing.assert_close(outputs["base"], outputs[4])
    picked = {int(r) for r in selected[0, cells[:, 0] < 4].flatten() if r >= 0}
    region_of = layout.region_of_patch[cells[:, 0] < 4]
    neighbours = {int(r) for r in layout.neighbours[region_of].flatten() if r >= 0}
    assert picked == neighbours and len(picked) == 2


def test_no_scored_regions_needs_the_local_window():
    with pytest.raises(ValueError, match="top_k.*local"):
        create_model("querent", in_dim=4, n_outputs=2, dim=8, heads=2, top_k=0, local=False)

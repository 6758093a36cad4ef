"""Selection measures and the random-pick ablation."""

import pytest
import torch

from querent.data.grid import build_grid
from querent.engine.selection import pick_statistics, random_picks
from querent.models import create_model


def _lattice(side: int) -> torch.Tensor:
    return torch.stack([torch.arange(side * side) % side, torch.arange(side * side) // side], 1)


def test_measures_of_picks_that_stay_home_and_picks_that_flock():
    cells = _lattice(8)  # 4 regions of 4 x 4 cells
    own = (cells[:, 1] // 4) * 2 + cells[:, 0] // 4
    home = pick_statistics(own[None, :, None], own, cells)
    assert home["own"] == 1 and home["distance"] == 0 and home["top8"] == 1
    assert home["own_random"] == 0.25 and home["distance_random"] == pytest.approx(
        (0 + 4 + 4 + 32**0.5) / 4
    )
    assert home["overlap"] == pytest.approx(0.25, abs=0.05)  # same region: 1, else 0
    flock = pick_statistics(torch.zeros(1, 64, 1, dtype=torch.long), own, cells)
    assert flock["own"] == 0.25 and flock["overlap"] == 1
    none = torch.full((1, 64, 2), -1)
    none[..., 0] = own
    assert pick_statistics(none, own, cells)["own"] == 1  # -1 marks no pick


def _querent_bag(side=32, region_size=4, seed=0):
    """A global Querent (no local regions: every pick is scored) and a lattice bag."""
    torch.manual_seed(seed)
    model = create_model(
        "querent", in_dim=8, n_outputs=2, dim=16, heads=2, region_size=region_size, top_k=2,
        local=False,
    ).eval()  # fmt: skip
    cells = _lattice(side)
    return model, torch.randn(len(cells), 8), cells


def test_random_picks_replace_the_scorer_only_within_the_block():
    model, features, cells = _querent_bag()
    with torch.no_grad():
        learned = model(features, cells).selected
        with random_picks(model) as same:
            assert same is model
            first, second = (model(features, cells).selected for _ in range(2))
        again = model(features, cells).selected
    assert not torch.equal(first, learned) and not torch.equal(first, second)
    assert torch.equal(again, learned)
    assert first.shape == learned.shape  # the same number of regions per query
    with pytest.raises(ValueError, match="ABMIL has no query-aware layer"):
        with random_picks(create_model("abmil", in_dim=8, n_outputs=2)):
            pass


def test_random_picks_score_as_random_on_every_measure():
    model, features, cells = _querent_bag(side=40)  # 100 regions, 2 picks each
    grid = build_grid(cells.numpy(), 1, 4)
    with torch.no_grad(), random_picks(model):
        out = model(features, cells, grid=grid)
    stats = pick_statistics(out.selected, out.region_of_patch, cells)
    assert stats["own"] == pytest.approx(stats["own_random"], abs=0.02)
    assert stats["distance"] == pytest.approx(stats["distance_random"], rel=0.1)
    assert stats["overlap"] == pytest.approx(stats["overlap_random"], abs=0.02)

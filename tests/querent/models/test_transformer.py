"""Querent against its dense upper reference, at the level of whole models."""

import numpy as np
import pytest
import torch

from querent.models import create_model


def _ragged_bag(seed, n_cells, extent, in_dim):
    rng = np.random.default_rng(seed)
    cells = torch.from_numpy(np.unique(rng.integers(0, extent, size=(n_cells, 2)), axis=0))
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(cells), in_dim, generator=g, dtype=torch.float64), cells


def _pair(seed, **settings):
    """A Querent model (the paper's: global, no distance bias, unless asked) and a
    full_attention model carrying the same weights."""
    settings = {"local": False, "distance_bias": False} | settings
    torch.manual_seed(seed)
    shared = {"in_dim": 24, "n_outputs": 3, "dim": 32, "heads": 4, "depth": 2}
    shared["positional"] = settings.pop("positional", "none")
    querent = create_model("querent", **shared, **settings).double().eval()
    full = create_model("full_attention", **shared).double().eval()
    missing, unexpected = full.load_state_dict(querent.state_dict(), strict=False)
    assert not missing and all(".scorer." in name for name in unexpected)
    return querent, full


@pytest.mark.parametrize("selection", ["patch", "region"])
@pytest.mark.parametrize("scorer", ["quest", "learned", "mean", "random"])
@pytest.mark.parametrize(
    ("seed", "n_cells", "extent", "region_size", "positional"),
    [(0, 300, 25, 4, "none"), (1, 80, 60, 2, "absolute"), (2, 500, 30, 5, "relative")],
)
@pytest.mark.parametrize("local", [False, True])
def test_all_regions_equals_full_attention_model(
    scorer, selection, seed, n_cells, extent, region_size, positional, local
):
    querent, full = _pair(
        seed,
        region_size=region_size,
        top_k=None,
        local=local,
        scorer=scorer,
        selection=selection,
        positional=positional,
        chunk_size=37,
    )
    features, cells = _ragged_bag(seed, n_cells, extent, 24)
    with torch.no_grad():
        sparse, dense = querent(features, cells), full(features, cells)
    torch.testing.assert_close(sparse.logits, dense.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sparse.attention, dense.attention, rtol=1e-5, atol=1e-5)


def test_selected_regions_are_regions_of_the_slide():
    querent, _ = _pair(0, region_size=4, top_k=3)
    features, cells = _ragged_bag(3, 300, 25, 24)
    out = querent(features, cells)
    n_regions = int(out.region_of_patch.max()) + 1
    assert out.selected.shape == (4, len(cells), 3)
    assert (out.selected >= 0).all() and (out.selected < n_regions).all()
    # the region index follows the lattice: cells of one region share it
    region_cells = cells // 4
    for region in range(n_regions):
        assert len(region_cells[out.region_of_patch == region].unique(dim=0)) == 1


def test_top_k_changes_the_output_and_positional_encoding_sees_the_lattice():
    features, cells = _ragged_bag(4, 300, 25, 24)
    querent, full = _pair(0, region_size=4, top_k=2)
    with torch.no_grad():
        assert not torch.allclose(querent(features, cells).logits, full(features, cells).logits)
    positional, _ = _pair(0, region_size=4, top_k=2, positional="absolute")
    with torch.no_grad():
        moved = positional(features, cells + torch.tensor([7, 3])).logits
        assert not torch.allclose(positional(features, cells).logits, moved)

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from querent.data.grid import build_grid, read_grid, write_grid


def _random_tissue(rng, n_cells=400, extent=60):
    cells = np.unique(rng.integers(0, extent, size=(n_cells, 2)), axis=0)
    return rng.permutation(cells)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000), region_size=st.integers(1, 6), step=st.sampled_from([1, 224, 256])
)
def test_grid_invariants_on_any_tissue_shape(seed, region_size, step):
    rng = np.random.default_rng(seed)
    cells = _random_tissue(rng, n_cells=int(rng.integers(1, 300)))
    coords = cells * step
    grid = build_grid(coords, step, region_size)
    n = len(coords)
    # every patch is in exactly one region, and that region contains its cell
    assert sorted(grid.members.tolist()) == list(range(n))
    np.testing.assert_array_equal(grid.region_cells[grid.region_of_patch], cells // region_size)
    # membership lists agree with region_of_patch; no region is empty
    for region in range(grid.n_regions):
        members = grid.region_members(region)
        assert len(members) > 0
        assert (grid.region_of_patch[members] == region).all()
        assert (np.diff(members) > 0).all()
    # padded slots hold exactly the members, at their cell inside the region
    assert grid.mask.sum() == n
    region, slot = np.nonzero(grid.mask)
    patch = grid.slots[region, slot]
    local = cells[patch] % region_size
    np.testing.assert_array_equal(local[:, 1] * region_size + local[:, 0], slot)
    np.testing.assert_array_equal(grid.region_of_patch[patch], region)


def test_regions_are_row_major_and_skip_empty_ones():
    cells = np.array([[0, 0], [9, 0], [1, 1], [0, 9]])  # regions of 4: (0,0), (2,0), (0,2)
    grid = build_grid(cells * 256, 256, 4)
    assert grid.region_cells.tolist() == [[0, 0], [2, 0], [0, 2]]
    assert grid.region_of_patch.tolist() == [0, 1, 0, 2]
    assert grid.slots.shape == (3, 16)
    assert grid.slots[0, 0] == 0 and grid.slots[0, 5] == 2


def test_off_lattice_and_duplicate_coords_are_refused():
    with pytest.raises(ValueError, match="not on the lattice"):
        build_grid(np.array([[0, 0], [100, 0]]), 256, 4)
    with pytest.raises(ValueError, match="duplicates"):
        build_grid(np.array([[0, 0], [0, 0]]), 256, 4)


def test_empty_slide_gives_an_empty_grid():
    grid = build_grid(np.empty((0, 2), np.int64), 256, 4)
    assert grid.n_regions == 0 and grid.slots.shape == (0, 16)


def test_grid_round_trips_through_hdf5(tmp_path):
    rng = np.random.default_rng(0)
    coords = _random_tissue(rng) * 256
    grid = build_grid(coords, 256, 4)
    write_grid(tmp_path / "g.h5", grid, name="slide", step_level0=256)
    back = read_grid(tmp_path / "g.h5")
    for field in ("region_of_patch", "region_cells", "offsets", "members", "slots"):
        np.testing.assert_array_equal(getattr(back, field), getattr(grid, field))
    assert back.region_size == 4

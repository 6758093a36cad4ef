import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extractors.errors import FileFormatError
from querent.data.grid import build_grid
from querent.data.grid_files import grid_of_file, read_grid, write_grid, write_slide_grid


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


def test_negative_cells_never_merge_distant_regions():
    # Keys row * width + col with width = max col + 1 put (-2, 2) and (11, 1) in one region.
    grid = build_grid(np.array([[-2, 2], [11, 1]]), 1, 2)
    assert grid.n_regions == 2
    assert grid.region_cells.tolist() == [[5, 0], [-1, 1]]


def test_a_centred_lattice_groups_like_the_shifted_one():
    cells = _random_tissue(np.random.default_rng(3))
    centred = cells - cells.mean(axis=0).round().astype(np.int64)
    shift = 4 * (centred.min(axis=0) // 4)  # a whole number of regions
    a, b = build_grid(centred, 1, 4), build_grid(centred - shift, 1, 4)
    np.testing.assert_array_equal(a.slots, b.slots)
    np.testing.assert_array_equal(a.region_cells - shift // 4, b.region_cells)


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


def _write_coords(path, coords, **attrs):
    """A coords (or features) file as our tools and TRIDENT write them."""
    with h5py.File(path, "w") as h5:
        h5.create_dataset("coords", data=np.asarray(coords, np.int64)).attrs.update(attrs)
        h5.create_dataset("features", data=np.zeros((len(coords), 8), np.float32))


def test_grid_file_of_a_features_file_equals_build_grid(tmp_path):
    coords = _random_tissue(np.random.default_rng(1)) * 224
    _write_coords(tmp_path / "f.h5", coords, name="s1", step_level0=224, patch_size_level0=224)
    summary = write_slide_grid(tmp_path / "f.h5", tmp_path / "g" / "s1.h5", 4)
    grid, expected = read_grid(tmp_path / "g" / "s1.h5"), build_grid(coords, 224, 4)
    np.testing.assert_array_equal(grid.slots, expected.slots)
    np.testing.assert_array_equal(grid.region_of_patch, expected.region_of_patch)
    assert summary.n_patches == len(coords) and summary.n_regions == expected.n_regions
    assert summary.mean_fill == pytest.approx(expected.mask.mean())
    with h5py.File(tmp_path / "g" / "s1.h5") as h5:
        assert h5.attrs["slide"] == "s1" and h5.attrs["step_level0"] == 224


def test_grid_file_step_falls_back_to_the_patch_size_without_overlap(tmp_path):
    _write_coords(tmp_path / "trident.h5", [[0, 0], [512, 0]], patch_size_level0=512, overlap=0)
    grid, attrs = grid_of_file(tmp_path / "trident.h5", 2)
    assert attrs["step_level0"] == 512 and attrs["slide"] == "trident"
    assert grid.region_of_patch.tolist() == [0, 0]
    _write_coords(tmp_path / "overlap.h5", [[0, 0]], patch_size_level0=512, overlap=64)
    with pytest.raises(FileFormatError, match="overlap.h5.*lattice is unknown"):
        grid_of_file(tmp_path / "overlap.h5", 2)


def test_grid_file_step_is_inferred_from_clam_coords_without_attributes(tmp_path, caplog):
    _write_coords(tmp_path / "clam.h5", [[512, 256], [768, 256], [512, 768]])
    with caplog.at_level("INFO"):
        _, attrs = grid_of_file(tmp_path / "clam.h5", 2)
    assert attrs["step_level0"] == 256 and "inferred" in caplog.text


def test_grid_file_errors_name_the_file(tmp_path):
    _write_coords(tmp_path / "off.h5", [[0, 0], [100, 0]], step_level0=256)
    with pytest.raises(FileFormatError, match="off.h5: coordinate"):
        grid_of_file(tmp_path / "off.h5", 4)
    with h5py.File(tmp_path / "nocoords.h5", "w") as h5:
        h5.create_dataset("features", data=np.zeros((1, 2)))
    with pytest.raises(FileFormatError, match="nocoords.h5"):
        grid_of_file(tmp_path / "nocoords.h5", 4)
    with pytest.raises(FileFormatError, match="missing.h5"):
        grid_of_file(tmp_path / "missing.h5", 4)
    assert not list(tmp_path.glob("*.tmp"))


def test_grid_file_of_a_slide_without_patches(tmp_path):
    _write_coords(tmp_path / "empty.h5", np.empty((0, 2)), name="empty", step_level0=256)
    summary = write_slide_grid(tmp_path / "empty.h5", tmp_path / "g.h5", 4)
    assert (summary.n_patches, summary.n_regions, summary.mean_fill) == (0, 0, 0.0)
    assert read_grid(tmp_path / "g.h5").slots.shape == (0, 16)


def test_region_neighbours_lists_each_region_and_its_adjacent_ones():
    from querent.data.grid import region_neighbours

    rng = np.random.default_rng(3)
    cells = np.unique(rng.integers(-20, 20, size=(300, 2)), axis=0)
    grid = build_grid(cells, 1, 3)
    neighbours = region_neighbours(grid.region_cells)
    where = {tuple(c): i for i, c in enumerate(grid.region_cells.tolist())}
    assert neighbours.shape == (grid.n_regions, 9)
    for region, (x, y) in enumerate(grid.region_cells.tolist()):
        assert neighbours[region, 0] == region
        expected = {
            where[(x + dx, y + dy)]
            for dx in (-1, 0, 1)
            for dy in (-1, 0, 1)
            if (x + dx, y + dy) in where
        }
        found = set(neighbours[region][neighbours[region] >= 0].tolist())
        assert found == expected and len(found) == (neighbours[region] >= 0).sum()

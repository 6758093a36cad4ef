import h5py
import numpy as np
import pytest
import torch

from extractors.errors import CohortError
from querent.data.bags import (
    BagDataset,
    EpochOrder,
    bag_loader,
    check_feature_files,
    crop_rows,
    lattice_cells_of,
    read_bag_arrays,
)
from querent.data.grid import build_grid
from querent.data.synthetic import _write_bag


def _files(synthetic_cohort):
    _, folder = synthetic_cohort
    return {path.stem: path for path in sorted(folder.glob("*.h5"))}


def test_bags_carry_features_cells_and_the_models_grid(synthetic_cohort):
    files = _files(synthetic_cohort)
    slide = sorted(files)[0]
    bag = BagDataset(files, [slide], region_size=2)[0]
    with h5py.File(files[slide]) as h5:
        features, coords = h5["features"][:], h5["coords"][:]
    np.testing.assert_array_equal(bag.features.numpy(), features)
    np.testing.assert_array_equal(bag.cells.numpy(), coords // 256)
    np.testing.assert_array_equal(bag.grid.slots, build_grid(coords // 256, 1, 2).slots)
    assert bag.cells.dtype == torch.int64 and bag.rows.tolist() == list(range(len(features)))


def test_patch_subsets_depend_on_seed_and_epoch_only(synthetic_cohort):
    files = _files(synthetic_cohort)
    slides = sorted(files)[:4]
    dataset = BagDataset(files, slides, max_patches=20, seed=3)

    def rows(workers, epoch):
        order = EpochOrder(len(slides))
        order.set_epoch(epoch)
        return [bag.rows.tolist() for bag in bag_loader(dataset, order, workers=workers)]

    assert rows(0, 1) == rows(2, 1)  # workers change nothing
    assert rows(0, 1) != rows(0, 2)  # each epoch draws anew
    assert all(len(r) == 20 and r == sorted(r) for r in rows(0, 1))


def test_epoch_order_shuffles_per_epoch_and_covers_every_bag():
    order = EpochOrder(10, seed=1, shuffle=True)
    first = [i for i, _ in order]
    order.set_epoch(1)
    second = list(order)
    assert sorted(first) == sorted(i for i, _ in second) == list(range(10))
    assert first != [i for i, _ in second] and {epoch for _, epoch in second} == {1}


def test_clam_feature_files_without_attributes_read(tmp_path):
    # CLAM's grid starts at each tissue piece's corner and its feature files carry no attributes
    coords = np.array([[1000, 700], [1256, 700], [1000, 956]])
    with h5py.File(tmp_path / "clam.h5", "w") as h5:
        h5["features"] = np.ones((3, 4), np.float32)
        h5["coords"] = coords
    features, cells = read_bag_arrays(tmp_path / "clam.h5")
    assert features.shape == (3, 4)
    assert cells.tolist() == [[0, 0], [1, 0], [0, 1]]
    assert lattice_cells_of(np.array([[512, 256]]), 256, "x").tolist() == [[2, 1]]


def test_check_feature_files_lists_empty_slides(tmp_path, synthetic_cohort):
    files = _files(synthetic_cohort)
    with h5py.File(tmp_path / "empty.h5", "w") as h5:
        h5.create_dataset("features", data=np.zeros((0, 16), np.float32)).attrs["encoder"] = (
            "synthetic"
        )
        h5["coords"] = np.zeros((0, 2), np.int64)
    with pytest.raises(CohortError, match="without patches: empty"):
        check_feature_files({**files, "empty": tmp_path / "empty.h5"})
    assert check_feature_files(files) == (16, "synthetic")


def test_augmentation_moves_the_lattice_rigidly_and_reproducibly(synthetic_cohort):
    files = _files(synthetic_cohort)
    slides = sorted(files)[:3]
    plain = BagDataset(files, slides, region_size=2)
    moved = BagDataset(files, slides, region_size=2, augment=True, seed=5)
    seen = set()
    for index in range(len(slides)):
        for epoch in range(4):
            before, after = plain[index].cells.numpy(), moved[index, epoch].cells.numpy()
            # distances between all patches are kept: neighbours stay neighbours
            np.testing.assert_array_equal(
                np.abs(before[:, None] - before[None]).sum(-1),
                np.abs(after[:, None] - after[None]).sum(-1),
            )
            np.testing.assert_array_equal(after, moved[index, epoch].cells.numpy())
            assert moved[index, epoch].grid.region_of_patch.shape == (len(after),)
            seen.add(after[:2].tobytes())
    assert len(seen) > 6  # different moves across slides and epochs


def test_augment_cells_reaches_all_eight_orientations():
    from querent.data.bags import augment_cells

    cells = np.array([[0, 0], [2, 0], [0, 1]])
    rng = np.random.default_rng(0)
    shapes = set()
    for _ in range(200):
        moved = augment_cells(cells, rng)
        shapes.add(tuple((moved - moved[0]).ravel()))
    assert len(shapes) == 8


def test_a_crop_takes_whole_regions_nearest_a_random_patch():
    rng = np.random.default_rng(0)
    side = 40
    cells = np.argwhere(rng.random((side, side)) < 0.7)[:, ::-1].astype(np.int64)
    rows = crop_rows(cells, 300, np.random.default_rng(1), 4)
    assert 250 < len(rows) <= 300 and np.all(np.diff(rows) > 0)
    blocks = [tuple(b) for b in cells // 4]
    taken = {blocks[r] for r in rows}
    in_taken = np.array([b in taken for b in blocks])
    assert in_taken.sum() == len(rows)  # every taken region is whole
    spread = np.ptp(cells[rows], axis=0)
    assert spread.max() < 0.75 * side  # a compact piece, not patches from all over
    assert len(crop_rows(cells, 5, np.random.default_rng(1), 4)) == 5  # one region, cut


def test_bag_dataset_crops_or_subsamples_as_asked(tmp_path):
    rng = np.random.default_rng(0)
    cells = np.argwhere(rng.random((30, 30)) < 0.8)[:, ::-1].astype(np.int64)
    path = tmp_path / "s.h5"
    _write_bag(path, rng.normal(size=(len(cells), 4)).astype(np.float32), cells, "synthetic")
    for subset in ("random", "crop"):
        data = BagDataset({"s": path}, ["s"], region_size=4, max_patches=200, subset=subset)
        bag = data[0, 3]
        assert len(bag.features) <= 200
        kept = bag.cells.numpy()
        spread = np.ptp(kept, axis=0).max()
        assert (spread < 25) == (subset == "crop")

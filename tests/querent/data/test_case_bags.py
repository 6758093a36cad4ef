"""Case bags (cohort.bag: case): a case's slides in one bag, kept apart on one lattice."""

import zlib

import numpy as np
import pytest
import yaml

from extractors.errors import SettingsError
from querent.data.bags import BagDataset, augment_cells
from querent.data.case_bags import (
    attention_entries,
    bag_mode,
    case_bags,
    case_slides,
    slide_files,
)
from querent.data.cohort import CohortSettings, read_cohort
from querent.data.grid import region_neighbours
from querent.data.synthetic import _write_bag
from querent.engine.experiment import match_features
from querent.schemas import CONFIG_SCHEMA
from querent.schemas.validation import check_config


def _cases(synthetic_cohort):
    sheet, folder = synthetic_cohort
    cohort, files = match_features(read_cohort(sheet, CohortSettings()), folder, "error")
    return cohort, files, *case_bags(cohort, files)


def test_a_case_bag_holds_its_slides_in_id_order(synthetic_cohort):
    cohort, files, bags, bag_files = _cases(synthetic_cohort)
    assert len(cohort.table) == 28 and len(bags.table) == 24 == cohort.table["case_id"].nunique()
    assert bags.table["slide_id"].tolist() == bags.table["case_id"].tolist() == sorted(bag_files)
    assert bag_mode(bag_files) == "case" and bag_mode(files) == "slide"
    assert slide_files(bag_files) == files
    pairs = [case for case, paths in bag_files.items() if len(paths) == 2]
    assert len(pairs) == 4
    # what a case bag is made of joins the resume signature; slide bags add nothing
    assert case_slides(files, sorted(files)) is None
    assert case_slides(bag_files, pairs) == {c: [p.stem for p in bag_files[c]] for c in pairs}
    dataset = BagDataset(bag_files, pairs, region_size=2)
    slide_set = BagDataset(files, sorted(files), region_size=2)
    sizes = {s: len(slide_set[i].features) for i, s in enumerate(slide_set.slide_ids)}
    for i, case in enumerate(pairs):
        bag = dataset[i]
        slides = tuple(path.stem for path in bag_files[case])
        assert bag.slide_id == case and bag.slides == slides and slides == tuple(sorted(slides))
        assert len(bag.features) == sum(sizes[s] for s in slides)
        counts = np.bincount(bag.slide_of_patch.numpy()).tolist()
        assert counts == [sizes[s] for s in slides]
        for j, slide in enumerate(slides):  # rows count within each slide's own file
            rows = bag.rows.numpy()[bag.slide_of_patch.numpy() == j]
            assert rows.tolist() == list(range(sizes[slide]))
            own = slide_set[slide_set.slide_ids.index(slide)].features
            np.testing.assert_array_equal(bag.features[bag.slide_of_patch == j], own)
    # the targets of a case are its slides' (the bag cohort reads cases as slides)
    first_slides = [bag_files[case][0].stem for case in pairs]
    assert bags.targets(pairs).tolist() == cohort.targets(first_slides).tolist()


@pytest.fixture(scope="module")
def overlapping_case(tmp_path_factory):
    """Three slides on the very same cells (the worst case for placing them side by side)."""
    folder = tmp_path_factory.mktemp("case")
    ys, xs = np.mgrid[0:7, 0:9]
    cells = np.stack([xs.ravel(), ys.ravel()], axis=1) + 5
    paths = []
    for i in range(3):
        paths.append(folder / f"s{i}.h5")
        _write_bag(paths[-1], np.full((len(cells), 4), i, np.float32), cells, "synthetic")
    return {"case": tuple(paths)}


@pytest.mark.parametrize("augment", [False, True])
def test_no_region_or_neighbourhood_spans_two_slides(overlapping_case, augment):
    for region_size in range(1, 9):
        dataset = BagDataset(
            overlapping_case, ["case"], region_size=region_size, augment=augment, seed=region_size
        )
        for epoch in range(3):
            bag = dataset[(0, epoch)]
            slide = bag.slide_of_patch.numpy()
            assert len(slide) == 3 * 63
            regions = bag.grid.region_of_patch
            region_slide = np.full(bag.grid.n_regions, -1)
            region_slide[regions] = slide
            assert (region_slide[regions] == slide).all()  # no region holds two slides
            around = region_neighbours(bag.grid.region_cells)
            near = np.where(around >= 0, region_slide[around.clip(min=0)], region_slide[:, None])
            assert (near == region_slide[:, None]).all()  # nor touches another slide's region
            cells = bag.cells.numpy()
            boxes = [(cells[slide == i, 0].min(), cells[slide == i, 0].max()) for i in range(3)]
            longest = 9  # each slide's longest side, in cells (turned or not)
            for (_, right), (left, _) in zip(boxes, boxes[1:], strict=False):
                assert left - right - 1 >= longest + 2 * region_size


def test_a_single_slide_bag_is_read_and_augmented_as_before(overlapping_case):
    path = overlapping_case["case"][0]
    bag = BagDataset({"s0": path}, ["s0"], augment=True, seed=4)[(0, 2)]
    whole = BagDataset({"s0": path}, ["s0"])[0]
    rng = np.random.default_rng([4, 2, zlib.crc32(b"s0")])
    expected = augment_cells(whole.cells.numpy(), rng)
    np.testing.assert_array_equal(bag.cells.numpy(), expected)
    assert bag.slides == ("s0",) and not bag.slide_of_patch.any()


@pytest.mark.parametrize("subset", ["random", "crop"])
def test_max_patches_cuts_the_whole_case_bag(overlapping_case, subset):
    dataset = BagDataset(
        overlapping_case, ["case"], region_size=2, max_patches=40, subset=subset, seed=1
    )
    bag = dataset[(0, 0)]
    assert len(bag.features) == len(bag.rows) == len(bag.slide_of_patch) == 40
    # each patch keeps its slide's features (slide i's are all i) and its row in that file
    slide = bag.slide_of_patch.numpy()
    np.testing.assert_array_equal(bag.features[:, 0].numpy(), slide)
    assert all(len(set(bag.rows.numpy()[slide == i])) == (slide == i).sum() for i in range(3))
    # random patches come from the whole case; a crop takes whole regions near one patch
    assert len(np.unique(slide)) == (3 if subset == "random" else 1)


def test_attention_entries_split_a_case_bag_per_slide(tmp_path):
    files = (tmp_path / "a.h5", tmp_path / "b.h5")
    slide_of_patch = np.array([0, 0, 0, 1, 1])
    regions = np.array([0, 0, 2, 1, 3])  # bag-level regions: a has 0 and 2, b has 1 and 3
    selected = np.array([[[0, 1], [2, -1], [1, 3], [3, 0], [1, 2]]])  # (h=1, n=5, k=2)
    arrays = {
        "attention": np.arange(5.0),
        "region_of_patch": regions,
        "selected": selected,
    }
    entries = attention_entries("case", files, arrays, slide_of_patch, 4)
    assert list(entries) == ["a", "b"]
    a, b = entries["a"], entries["b"]
    assert a["attention"].tolist() == [0, 1, 2] and b["attention"].tolist() == [3, 4]
    assert a["region_of_patch"].tolist() == [0, 0, 1] and b["region_of_patch"].tolist() == [0, 1]
    # picks are renumbered within the slide; the other slide's regions become -1
    assert a["selected"].tolist() == [[[0, -1], [1, -1], [-1, -1]]]
    assert b["selected"].tolist() == [[[1, -1], [0, -1]]]
    assert a["bag"] == "case" and a["features"] == str(files[0]) and a["region_size"] == 4
    single = attention_entries("s", tmp_path / "s.h5", arrays, np.zeros(5, int), 4)
    assert list(single) == ["s"] and "bag" not in single["s"]
    assert single["s"]["region_of_patch"] is regions


def test_a_bad_bag_setting_is_refused_by_key_with_its_choices():
    with pytest.raises(SettingsError, match="cohort.bag must be slide or case, got 'patient'"):
        CohortSettings(bag="patient")
    config = {"cohort": {"bag": "patient"}}
    problems, plannable = check_config(config, yaml.safe_load(CONFIG_SCHEMA.read_text()))
    assert problems == ["cohort.bag: 'patient' is not one of ['slide', 'case']"]
    assert (
        plannable and config["cohort"]["bag"] == "slide"
    )  # the default stands in, planning goes on

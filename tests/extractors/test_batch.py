import dataclasses
import os
import shutil

import h5py
import numpy as np
import pytest

from extractors.batch import (
    BatchSlide,
    extract_batch,
    publish_features,
    recipe_path,
    slide_recipe,
)
from extractors.encoders import create_encoder
from extractors.errors import FileFormatError, SlideError
from extractors.extract import ExtractionOptions, extract_slide
from extractors.io import write_coords
from extractors.wsi import tiling, tissue
from extractors.wsi.reader import Slide
from tests.helpers import shared_slide

PATCHES = 6
OPTIONS = ExtractionOptions(num_workers=0)


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    """Two real slides and coords files of their first few tissue patches."""
    out = tmp_path_factory.mktemp("tiled")
    slides = {}
    for name in ("cmu-1-small-region.svs", "derived_cmu_small_region_3level.svs"):
        path = shared_slide(name)
        with Slide(path) as slide:
            polygons = tissue.segment(slide, tissue.tissue_params()).polygons
            params = tiling.TilingParams(min_tissue_fraction=0.9)
            tiling.tile_slide(slide, polygons, params, out / "all.h5", out / "qc.jpg")
            keep_rows(out / "all.h5", out / f"{slide.slide_id}.h5", slice(0, PATCHES))
            slides[slide.slide_id] = (path, out / f"{slide.slide_id}.h5")
    return slides


def keep_rows(coords_path, out, rows):
    with h5py.File(coords_path) as h5:
        coords, fractions, attrs = (
            h5["coords"][:],
            h5["tissue_fraction"][:],
            dict(h5["coords"].attrs),
        )
    write_coords(out, coords[rows], fractions[rows], attrs)


@pytest.fixture
def batch(tiled, tmp_path):
    """The two good slides and a corrupt one (garbage bytes, the coords of a good slide)."""
    items = []
    for slide_id, (path, coords) in tiled.items():
        shutil.copy(coords, tmp_path / f"{slide_id}.h5")
        items.append((slide_id, path, tmp_path / f"{slide_id}.h5"))
    broken = tmp_path / "broken.svs"
    broken.write_bytes(np.random.default_rng(0).bytes(50_000))
    shutil.copy(items[0][2], tmp_path / "broken.h5")
    items.append(("broken", broken, tmp_path / "broken.h5"))
    return [
        BatchSlide(slide_id, path, coords, tmp_path / "staged" / f"{slide_id}.h5", {})
        for slide_id, path, coords in items
    ]


def run(batch, lite0, tmp_path):
    rows = extract_batch(batch, lite0, tmp_path / "batch.tsv", options=OPTIONS, log="b.log")
    return {row["slide_id"]: row for row in rows}


def mtimes(batch):
    return {item.slide_id: item.staged.stat().st_mtime_ns for item in batch[:2]}


def test_batch_keeps_good_slides_and_records_the_bad_one(batch, lite0, tmp_path):
    rows = run(batch, lite0, tmp_path)
    assert (tmp_path / "batch.tsv").is_file()
    assert [row["status"] for row in rows.values()] == ["ok", "ok", "failed"]
    assert "broken" in rows["broken"]["reason"] and "\n" not in rows["broken"]["reason"]
    assert not batch[2].staged.exists()
    for item in batch[:2]:
        assert rows[item.slide_id]["patches"] == PATCHES
        direct = tmp_path / f"direct-{item.slide_id}.h5"
        extract_slide(item.slide, item.coords, lite0, direct, options=OPTIONS)
        with h5py.File(item.staged) as staged, h5py.File(direct) as expected:
            assert np.array_equal(staged["features"][:], expected["features"][:])
            assert np.array_equal(staged["coords"][:], expected["coords"][:])
        final = tmp_path / "final" / f"{item.slide_id}.h5"
        publish_features(tmp_path / "batch.tsv", item.slide_id, final)
        assert os.path.samefile(final, item.staged)
        publish_features(tmp_path / "batch.tsv", item.slide_id, final)  # again: still fine
        assert os.path.samefile(final, item.staged)
    with pytest.raises(SlideError, match=r"'broken'.*b\.log.*on_missing: skip") as err:
        publish_features(tmp_path / "batch.tsv", "broken", tmp_path / "final" / "broken.h5")
    assert rows["broken"]["reason"] in str(err.value)
    assert not (tmp_path / "final" / "broken.h5").exists()
    with pytest.raises(FileFormatError, match=r"batch\.tsv: no row for slide 'other'"):
        publish_features(tmp_path / "batch.tsv", "other", tmp_path / "final" / "other.h5")


def test_publish_copies_where_it_cannot_link(batch, lite0, tmp_path, monkeypatch):
    run(batch[:1], lite0, tmp_path)

    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    final = tmp_path / "final.h5"
    publish_features(tmp_path / "batch.tsv", batch[0].slide_id, final)
    assert not os.path.samefile(final, batch[0].staged)
    assert final.read_bytes() == batch[0].staged.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("final")] == ["final.h5"]


def test_rerun_encodes_only_slides_whose_inputs_changed(batch, lite0, tmp_path):
    run(batch, lite0, tmp_path)
    before = mtimes(batch)
    rows = run(batch, lite0, tmp_path)
    assert [row["reason"] for row in rows.values()][:2] == ["reused", "reused"]
    assert rows["broken"]["status"] == "failed"
    assert mtimes(batch) == before
    changed, same = batch[0], batch[1]
    keep_rows(changed.coords, changed.coords, slice(1, None))
    rows = run(batch, lite0, tmp_path)
    assert rows[changed.slide_id]["reason"] == "encoded"
    assert rows[changed.slide_id]["patches"] == PATCHES - 1
    assert rows[same.slide_id]["reason"] == "reused"
    after = mtimes(batch)
    assert after[changed.slide_id] != before[changed.slide_id]
    assert after[same.slide_id] == before[same.slide_id]


def test_features_without_their_recipe_are_encoded_again(batch, lite0, tmp_path):
    run(batch[:2], lite0, tmp_path)
    before = mtimes(batch)
    recipe_path(batch[0].staged).unlink()  # killed between the features and the recipe
    rows = run(batch[:2], lite0, tmp_path)
    assert [row["reason"] for row in rows.values()] == ["encoded", "reused"]
    after = mtimes(batch)
    assert after[batch[0].slide_id] != before[batch[0].slide_id]
    assert after[batch[1].slide_id] == before[batch[1].slide_id]


def test_recipe_follows_what_changes_the_features(batch, lite0):
    item = batch[0]
    base = slide_recipe(item, lite0, OPTIONS)
    no_effect = ExtractionOptions(batch_size=7, num_workers=2, block_cells=1, device="cpu")
    assert slide_recipe(item, lite0, no_effect) == base
    changes = [
        (item, ExtractionOptions(skip_errors=True)),
        (item, ExtractionOptions(allow_mpp_mismatch=True)),
        (dataclasses.replace(item, slide_kwargs={"mpp_override": 0.25}), OPTIONS),
        (dataclasses.replace(item, slide=batch[1].slide), OPTIONS),
        (dataclasses.replace(item, coords=batch[1].coords), OPTIONS),
    ]
    for changed, options in changes:
        assert slide_recipe(changed, lite0, options) != base
    stat = item.slide.stat()
    copy = item.staged.parent / "copy.svs"
    copy.parent.mkdir()
    shutil.copy2(item.slide, copy)
    moved = dataclasses.replace(item, slide=copy)
    assert slide_recipe(moved, lite0, OPTIONS) != base
    touched = slide_recipe(moved, lite0, OPTIONS)
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert slide_recipe(moved, lite0, OPTIONS) != touched
    other_weights = create_encoder("efficientnet_lite0", pretrained=False)
    assert slide_recipe(item, other_weights, OPTIONS) != base

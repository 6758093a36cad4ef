import cv2
import h5py
import numpy as np
import pytest

from extractors.io import read_coords
from extractors.wsi import tiling, tissue
from extractors.wsi.reader import Slide

TRIDENT_ATTRS = {
    "patch_size",
    "patch_size_level0",
    "level0_magnification",
    "target_magnification",
    "overlap",
    "name",
    "level0_width",
    "level0_height",
}
CLAM_ATTRS = {"patch_level", "downsample", "level_dim"}
OUR_ATTRS = {"level0_mpp", "target_mpp", "mpp_source", "params_hash", "step_level0"}


def _tile_file(slide_path, tmp_path, **params):
    with Slide(slide_path) as slide:
        polygons = tissue.segment(slide, tissue.tissue_params()).polygons
        tiling.tile_slide(
            slide, polygons, tiling.TilingParams(**params), tmp_path / "c.h5", tmp_path / "c_qc.jpg"
        )
    return read_coords(tmp_path / "c.h5")


def test_cmu_patches_lie_on_the_lattice(cmu_slide, tmp_path):
    coords, attrs = _tile_file(cmu_slide, tmp_path, target_mpp=0.5, patch_size=256)
    assert attrs["patch_size_level0"] == 256 and attrs["step_level0"] == 256
    assert coords.dtype == np.int64 and coords.shape[1] == 2
    assert 20 < len(coords) < 80  # ~0.5 mm² of tissue in 0.016 mm² patches
    assert (coords % attrs["step_level0"] == 0).all()
    assert (coords + 256 <= [attrs["level0_width"], attrs["level0_height"]]).all()
    assert len(np.unique(coords, axis=0)) == len(coords)
    with h5py.File(tmp_path / "c.h5") as h5:
        assert (h5["tissue_fraction"][:] >= 0.25).all()
    assert cv2.imread(str(tmp_path / "c_qc.jpg")) is not None


def test_coords_attrs_serve_trident_and_clam(cmu_slide, tmp_path):
    _, attrs = _tile_file(cmu_slide, tmp_path)
    assert TRIDENT_ATTRS | CLAM_ATTRS | OUR_ATTRS <= set(attrs)
    assert attrs["name"] == "cmu-1-small-region"
    assert attrs["target_magnification"] == 20 and attrs["level0_magnification"] == 20
    assert tuple(attrs["level_dim"]) == (2220, 2967)


def test_coarser_target_reads_level1(cmu_3level_slide, tmp_path):
    coords, attrs = _tile_file(cmu_3level_slide, tmp_path, target_mpp=1.0)
    assert attrs["patch_level"] == 1
    assert attrs["downsample"][0] == pytest.approx(2.0, rel=1e-3)
    assert attrs["patch_size_level0"] == 512 and attrs["read_size"] == 256
    assert len(coords) and (coords % 512 == 0).all()


def test_overlap_shortens_the_step(cmu_slide, tmp_path):
    coords, attrs = _tile_file(cmu_slide, tmp_path, patch_size=256, overlap=64)
    assert attrs["step_level0"] == 192
    assert (coords % 192 == 0).all()


def test_tissue_free_slide_gives_valid_empty_file(blank_slide, tmp_path):
    coords, attrs = _tile_file(blank_slide, tmp_path)
    assert coords.shape == (0, 2)
    assert TRIDENT_ATTRS <= set(attrs)


def test_fractions_match_a_full_raster():
    rng = np.random.default_rng(0)
    lattice = tiling.Lattice(
        patch_size_level0=64, step_level0=48, read_level=0, read_downsample=1.0, read_size=64
    )
    size = (1000, 700)
    polygons = []
    for centre in ([300, 300], [700, 420]):
        angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
        radii = rng.uniform(120, 220, 12)
        ring = np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None] + centre
        polygons.append(tissue.TissuePolygon(np.clip(ring, 0, [999, 699])))
    coords, fractions = tiling.tile(polygons, lattice, size, min_tissue_fraction=0.0)
    full = np.zeros(size[::-1], np.uint8)
    rings = [np.round((p.exterior - 0.5) * 16).astype(np.int32) for p in polygons]
    cv2.fillPoly(full, rings, 1, shift=4)
    expected = np.array([full[y : y + 64, x : x + 64].mean() for x, y in coords])
    # 16 x 16 samples per patch: a boundary sample counts whole or not at all.
    np.testing.assert_allclose(fractions, expected, atol=0.07)
    assert np.abs(fractions - expected).mean() < 0.02
    n_cells = ((size[0] - 64) // 48 + 1) * ((size[1] - 64) // 48 + 1)
    grid = [(x, y) for y in range(0, size[1] - 63, 48) for x in range(0, size[0] - 63, 48)]
    missed = [xy for xy in grid if full[xy[1] : xy[1] + 64, xy[0] : xy[0] + 64].mean() > 0.05]
    assert len(grid) == n_cells
    assert {tuple(c) for c in coords} >= set(missed)


def test_higher_threshold_keeps_a_subset(cmu_slide):
    with Slide(cmu_slide) as slide:
        polygons = tissue.segment(slide, tissue.tissue_params()).polygons
        lattice = tiling.make_lattice(slide, tiling.TilingParams())
        loose, _ = tiling.tile(polygons, lattice, slide.dimensions, 0.1)
        strict, _ = tiling.tile(polygons, lattice, slide.dimensions, 0.9)
    assert len(strict) < len(loose)
    assert {tuple(c) for c in strict} <= {tuple(c) for c in loose}


def test_failed_write_leaves_no_file(cmu_slide, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", broken)
    with Slide(cmu_slide) as slide, pytest.raises(OSError):
        tiling.tile_slide(
            slide, [], tiling.TilingParams(), tmp_path / "c.h5", tmp_path / "c_qc.jpg"
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [{"overlap": 256}, {"patch_size": 0}, {"min_tissue_fraction": 1.5}])
def test_bad_tiling_params(bad):
    with pytest.raises(ValueError):
        tiling.TilingParams(**bad)

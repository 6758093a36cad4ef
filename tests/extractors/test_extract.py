import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from extractors.errors import FileFormatError, SettingsError, SlideError
from extractors.extract import ExtractionOptions, extract_slide
from extractors.wsi import tiling, tissue
from extractors.wsi.reader import Slide


@pytest.fixture(scope="module")
def cmu_coords(tmp_path_factory):
    from tests.helpers import shared_slide

    path = shared_slide("cmu-1-small-region.svs")
    out = tmp_path_factory.mktemp("coords")
    with Slide(path) as slide:
        polygons = tissue.segment(slide, tissue.tissue_params()).polygons
        tiling.tile_slide(slide, polygons, tiling.TilingParams(), out / "c.h5", out / "c_qc.jpg")
    return path, out / "c.h5"


def _read(path):
    with h5py.File(path) as h5:
        return (
            h5["features"][:],
            h5["coords"][:],
            dict(h5["features"].attrs),
            dict(h5["coords"].attrs),
        )


def test_cmu_features_align_with_coords(lite0, cmu_coords, tmp_path):
    slide, coords_path = cmu_coords
    n = extract_slide(slide, coords_path, lite0, tmp_path / "f.h5")
    features, coords, feature_attrs, coords_attrs = _read(tmp_path / "f.h5")
    with h5py.File(coords_path) as h5:
        expected_coords = h5["coords"][:]
        expected_attrs = dict(h5["coords"].attrs)
    assert n == len(expected_coords) > 0
    assert features.shape == (n, 1280) and features.dtype == np.float32
    assert np.isfinite(features).all()
    np.testing.assert_array_equal(coords, expected_coords)
    assert set(expected_attrs) <= set(coords_attrs)  # TRIDENT + CLAM attrs carried over
    assert feature_attrs["encoder"] == "efficientnet_lite0"
    assert feature_attrs["embed_dim"] == 1280 and feature_attrs["precision"] == "fp32"
    assert feature_attrs["weights_source"] == "package:efficientnet_lite0"


def test_features_are_deterministic_whatever_the_workers(lite0, cmu_coords, tmp_path):
    slide, coords_path = cmu_coords
    extract_slide(
        slide, coords_path, lite0, tmp_path / "a.h5", options=ExtractionOptions(num_workers=0)
    )
    extract_slide(
        slide,
        coords_path,
        lite0,
        tmp_path / "b.h5",
        options=ExtractionOptions(num_workers=2, batch_size=7),
    )
    a, b = _read(tmp_path / "a.h5")[0], _read(tmp_path / "b.h5")[0]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_block_reads_equal_single_patch_reads(lite0, cmu_coords, tmp_path):
    slide, coords_path = cmu_coords
    extract_slide(
        slide,
        coords_path,
        lite0,
        tmp_path / "blocks.h5",
        options=ExtractionOptions(num_workers=0, block_cells=4),
    )
    extract_slide(
        slide,
        coords_path,
        lite0,
        tmp_path / "single.h5",
        options=ExtractionOptions(num_workers=0, block_cells=1),
    )
    np.testing.assert_allclose(
        _read(tmp_path / "blocks.h5")[0], _read(tmp_path / "single.h5")[0], rtol=1e-4, atol=1e-4
    )


def test_features_match_encoding_patches_by_hand(lite0, cmu_coords, tmp_path):
    from extractors.patches import prepare_patch

    slide_path, coords_path = cmu_coords
    extract_slide(
        slide_path, coords_path, lite0, tmp_path / "f.h5", options=ExtractionOptions(num_workers=0)
    )
    features, coords, _, _ = _read(tmp_path / "f.h5")
    with Slide(slide_path) as slide:
        patches = [
            prepare_patch(slide.read_region((int(x), int(y)), 0, (256, 256)), 224, 224)
            for x, y in coords[:4]
        ]
    with torch.inference_mode():
        expected = lite0(torch.from_numpy(np.stack(patches))).numpy()
    np.testing.assert_allclose(features[:4], expected, rtol=1e-4, atol=1e-4)


def test_coords_of_another_slide_are_refused(lite0, cmu_coords, cmu_3level_slide, tmp_path):
    _, coords_path = cmu_coords
    with pytest.raises(FileFormatError, match="was made for slide 'cmu-1-small-region'"):
        extract_slide(cmu_3level_slide, coords_path, lite0, tmp_path / "f.h5")
    assert not (tmp_path / "f.h5").exists()


def test_resolution_mismatch_is_refused_unless_allowed(lite0, cmu_3level_slide, tmp_path):
    with Slide(cmu_3level_slide) as slide:
        polygons = tissue.segment(slide, tissue.tissue_params()).polygons
        tiling.tile_slide(
            slide,
            polygons,
            tiling.TilingParams(target_mpp=1.0),
            tmp_path / "c.h5",
            tmp_path / "c_qc.jpg",
        )
    with pytest.raises(SettingsError, match="allow_mpp_mismatch"):
        extract_slide(cmu_3level_slide, tmp_path / "c.h5", lite0, tmp_path / "f.h5")
    allowed = ExtractionOptions(allow_mpp_mismatch=True, num_workers=0)
    n = extract_slide(
        cmu_3level_slide, tmp_path / "c.h5", lite0, tmp_path / "f.h5", options=allowed
    )
    assert _read(tmp_path / "f.h5")[0].shape == (n, 1280)


def test_tissue_free_slide_gives_a_valid_empty_file(lite0, blank_slide, tmp_path):
    with Slide(blank_slide) as slide:
        tiling.tile_slide(
            slide, [], tiling.TilingParams(), tmp_path / "c.h5", tmp_path / "c_qc.jpg"
        )
    assert extract_slide(blank_slide, tmp_path / "c.h5", lite0, tmp_path / "f.h5") == 0
    features, coords, attrs, _ = _read(tmp_path / "f.h5")
    assert features.shape == (0, 1280) and coords.shape == (0, 2)


class _FlakySlide(Slide):
    """Fails every read of one region (a corrupt tile)."""

    def read_region(self, location, level, size):
        if location == self.bad_location:
            raise SlideError(
                f"{self.name}: cannot decode the region at level-0 (x, y) = {location}"
            )
        return super().read_region(location, level, size)


def test_corrupt_region_fails_or_is_skipped_and_recorded(lite0, cmu_coords, tmp_path, monkeypatch):
    slide_path, coords_path = cmu_coords
    with h5py.File(coords_path) as h5:
        coords = h5["coords"][:]
    bad = (int(coords[0][0]), int(coords[0][1]))
    _FlakySlide.bad_location = bad
    monkeypatch.setattr("extractors.patches.Slide", _FlakySlide)
    single = ExtractionOptions(num_workers=0, block_cells=1)
    with pytest.raises(SlideError, match=rf"\(x, y\) = \({bad[0]}, {bad[1]}\).*on_decode_error"):
        extract_slide(slide_path, coords_path, lite0, tmp_path / "f.h5", options=single)
    assert not list(tmp_path.iterdir())
    skipping = ExtractionOptions(num_workers=0, block_cells=1, skip_errors=True)
    n = extract_slide(slide_path, coords_path, lite0, tmp_path / "f.h5", options=skipping)
    assert n == len(coords) - 1
    with h5py.File(tmp_path / "f.h5") as h5:
        assert h5["features"].attrs["n_skipped"] == 1
        assert tuple(h5["skipped_coords"][0]) == bad
        assert bad not in {tuple(c) for c in h5["coords"][:]}


def test_killed_extraction_leaves_no_complete_looking_file(
    lite0, cmu_coords, tmp_path, monkeypatch
):
    slide, coords_path = cmu_coords
    calls = []

    def dies_on_second_batch(images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return torch.zeros(len(images), 1280)

    monkeypatch.setattr(lite0, "forward", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        extract_slide(
            slide,
            coords_path,
            lite0,
            tmp_path / "f.h5",
            options=ExtractionOptions(num_workers=0, batch_size=8),
        )
    assert list(tmp_path.iterdir()) == []


def test_forked_readers_do_not_hang_after_opencv_was_used(cmu_coords, tmp_path):
    # A forked reader that touches OpenCV's thread settings hangs once the parent has used
    # OpenCV's pool; run in a subprocess so a hang fails the test instead of the run.
    slide, coords_path = cmu_coords
    out = tmp_path / "f.h5"
    script = f"""
import cv2, numpy as np
cv2.resize(np.zeros((4000, 4000, 3), np.uint8), (1000, 1000), interpolation=cv2.INTER_AREA)
from extractors.encoders import create_encoder
from extractors.extract import ExtractionOptions, extract_slide
encoder = create_encoder("efficientnet_lite0", pretrained=False)
options = ExtractionOptions(num_workers=2)
extract_slide({str(slide)!r}, {str(coords_path)!r}, encoder, {str(out)!r}, options=options)
"""
    subprocess.run([sys.executable, "-c", script], timeout=180, check=True, capture_output=True)
    assert out.exists()

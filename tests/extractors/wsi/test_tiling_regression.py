"""Segmentation + tiling of the real slides against the outputs of the code before it was sped up.

The reference (tests/data/tiling_reference/, made by make_reference.py there at the commit named
in its manifest.json) holds, per case, the kept patch coordinates and the tissue polygons
rasterised on the segmentation grid. Coordinates must be equal, masks nearly so.
"""

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from extractors.wsi import tiling, tissue
from extractors.wsi.reader import Slide

REFERENCE = Path(__file__).resolve().parents[2] / "data" / "tiling_reference"
MIN_IOU = 0.995


def _reference_module():
    spec = importlib.util.spec_from_file_location(
        "make_tiling_reference", REFERENCE / "make_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_reference = _reference_module()
MANIFEST = json.loads((REFERENCE / "manifest.json").read_text())


@pytest.fixture(scope="module")
def outputs():
    """Today's outputs per case, computed once (skips when ../shared/slides is absent)."""
    computed = {}

    def get(case):
        if not (make_reference.SLIDES / make_reference.CASES[case][0]).is_file():
            pytest.skip(f"real slides not available: {make_reference.SLIDES} is absent")
        if case not in computed:
            computed[case] = make_reference.outputs(case)
        return computed[case]

    return get


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


@pytest.mark.parametrize("case", sorted(make_reference.CASES))
def test_coords_equal_the_reference(case, outputs):
    expected = np.load(REFERENCE / f"{case}.coords.npy")
    got = outputs(case)["coords"]
    assert len(got) == MANIFEST[case]["patches"]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("case", sorted(make_reference.CASES))
def test_tissue_mask_matches_the_reference(case, outputs):
    expected = cv2.imread(str(REFERENCE / f"{case}.mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    out = outputs(case)
    got = out["mask"] > 0
    assert got.shape == expected.shape
    assert _iou(got, expected) >= MIN_IOU
    assert out["tissue_pieces"] == MANIFEST[case]["tissue_pieces"]
    assert out["tissue_area_um2"] == pytest.approx(MANIFEST[case]["tissue_area_um2"], rel=0.005)


def test_written_files_carry_the_reference_coords(cmu_slide, tmp_path):
    """The files a run writes (not only the in-memory arrays) hold the same patches."""
    from extractors.io import read_coords

    with Slide(cmu_slide) as slide:
        result = tissue.segment_slide(
            slide, tissue.tissue_params(), tmp_path / "t.geojson", tmp_path / "t_tissue_qc.jpg"
        )
        tiling.tile_slide(
            slide,
            tissue.read_geojson(tmp_path / "t.geojson"),
            tiling.TilingParams(),
            tmp_path / "t.h5",
            tmp_path / "t_qc.jpg",
            result.thumbnail,
        )
    coords, _ = read_coords(tmp_path / "t.h5")
    np.testing.assert_array_equal(coords, np.load(REFERENCE / "cmu.coords.npy"))
    for name in ("t_tissue_qc.jpg", "t_qc.jpg"):
        picture = cv2.imread(str(tmp_path / name))
        assert max(picture.shape[:2]) == tissue.QC_MAX_SIDE

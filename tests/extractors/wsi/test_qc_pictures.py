import cv2
import numpy as np
import pytest

from extractors.wsi import tiling, tissue
from extractors.wsi.reader import Slide


def test_the_report_preview_is_the_qc_picture_at_report_size(cmu_slide, tmp_path):
    with Slide(cmu_slide) as slide:
        polygons = tissue.segment(slide, tissue.tissue_params()).polygons
        tiling.tile_slide(
            slide, polygons, tiling.TilingParams(), tmp_path / "c.h5", tmp_path / "c_qc.jpg",
            preview_path=tmp_path / "c_qc_preview.jpg",
        )  # fmt: skip
    full = cv2.imread(str(tmp_path / "c_qc.jpg"))
    preview = cv2.imread(str(tmp_path / "c_qc_preview.jpg"))
    for name in ("c_qc.jpg", "c_qc_preview.jpg"):
        assert (tmp_path / name).read_bytes()[:2] == b"\xff\xd8"  # JPEGs
    assert max(full.shape[:2]) == tissue.QC_MAX_SIDE  # the full picture keeps its size
    assert max(preview.shape[:2]) == tissue.PREVIEW_MAX_SIDE
    assert abs(full.shape[1] / full.shape[0] - preview.shape[1] / preview.shape[0]) < 0.01
    sizes = [(tmp_path / name).stat().st_size for name in ("c_qc_preview.jpg", "c_qc.jpg")]
    assert sizes[0] < sizes[1] / 3  # a quarter of the pixels
    # the same picture, shrunk, within the JPEG error of tissue texture
    expected = cv2.resize(full, preview.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(preview.astype(int) - expected.astype(int)).mean() < 8


def test_a_small_picture_is_previewed_as_it_is(tmp_path):
    picture = np.zeros((300, 200, 3), np.uint8)
    picture[100:200, 50:150] = (255, 160, 0)
    tissue.write_preview(tmp_path / "p.jpg", picture)
    preview = cv2.cvtColor(cv2.imread(str(tmp_path / "p.jpg")), cv2.COLOR_BGR2RGB)
    assert preview.shape == picture.shape
    assert np.abs(preview.astype(int) - picture.astype(int)).mean() < 4


@pytest.mark.parametrize("width, band", [(200, 0), (2048, 1)])  # 1 and 3 px thick lines
def test_patch_outlines_are_drawn_on_a_copy_at_the_patch_edges(width, band):
    thumbnail = np.full((width // 2, width, 3), 200, np.uint8)  # level 0 is 10x as large
    before = thumbnail.copy()
    x, y, side = width // 4, width // 8, width // 10  # the patch in thumbnail pixels
    level0 = (width * 10, width * 5)
    picture = tissue.draw_qc(thumbnail, level0, [], np.array([[x * 10, y * 10]]), side * 10)
    np.testing.assert_array_equal(thumbnail, before)  # the input is left as it was
    outlined = (picture != 200).any(axis=2)
    rows, cols = np.nonzero(outlined)
    assert (rows.min(), rows.max()) == (y - band, y + side + band)
    assert (cols.min(), cols.max()) == (x - band, x + side + band)
    assert outlined[y, x : x + side + 1].all() and outlined[y : y + side + 1, x + side].all()
    assert not outlined[y + band + 1 : y + side - band, x + band + 1 : x + side - band].any()
    tint = 0.8 * np.array(tissue.PATCH_COLOUR) + 0.2 * 200
    np.testing.assert_allclose(picture[y, x + side // 2], tint, atol=1)

import cv2
import numpy as np

from extractors.wsi import tiling, tissue
from extractors.wsi.reader import Slide


def test_the_report_preview_is_the_qc_picture_at_report_size(cmu_slide, tmp_path):
    with Slide(cmu_slide) as slide:
        polygons = tissue.segment(slide, tissue.tissue_params()).polygons
        tiling.tile_slide(
            slide, polygons, tiling.TilingParams(), tmp_path / "c.h5", tmp_path / "c_qc.png",
            preview_path=tmp_path / "c_qc_preview.jpg",
        )  # fmt: skip
    full = cv2.imread(str(tmp_path / "c_qc.png"))
    preview = cv2.imread(str(tmp_path / "c_qc_preview.jpg"))
    assert (tmp_path / "c_qc_preview.jpg").read_bytes()[:2] == b"\xff\xd8"  # a JPEG
    assert max(full.shape[:2]) == tissue.QC_MAX_SIDE  # the full picture keeps its size
    assert max(preview.shape[:2]) == tissue.PREVIEW_MAX_SIDE
    assert abs(full.shape[1] / full.shape[0] - preview.shape[1] / preview.shape[0]) < 0.01
    sizes = [(tmp_path / name).stat().st_size for name in ("c_qc_preview.jpg", "c_qc.png")]
    assert sizes[0] < sizes[1] / 8
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

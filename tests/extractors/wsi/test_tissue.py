import json

import cv2
import numpy as np
import pytest

from extractors.demo import write_synthetic_slide
from extractors.wsi import tissue
from extractors.wsi.reader import Slide
from querent.plots.thumbnails import read_thumbnail


def _slide_from_map(path, label_map, *, mpp=0.5, cell=32, ink_map=None):
    """A real SVS painted from ``label_map``, one map cell per ``cell`` level-0 pixels."""
    height, width = label_map.shape
    write_synthetic_slide(
        path, label_map, level0_size=(width * cell, height * cell), mpp=mpp, ink_map=ink_map
    )
    return Slide(path)


def _raster(polygons, level0_size, shape):
    """Polygons rasterised onto a grid of ``shape`` spanning the slide."""
    canvas = np.zeros(shape, np.uint8)
    scale = np.array([shape[1] / level0_size[0], shape[0] / level0_size[1]])
    rings = [np.round(r * scale - 0.5).astype(np.int32) for p in polygons for r in p.rings()]
    if rings:
        cv2.fillPoly(canvas, rings, 1)
    return canvas.astype(bool)


def _two_pieces(shape=(96, 128)):
    label_map = np.zeros(shape, np.uint8)
    cv2.ellipse(label_map, (40, 48), (28, 36), 0, 0, 360, 1, -1)
    cv2.ellipse(label_map, (96, 40), (20, 16), 30, 0, 360, 2, -1)
    return label_map


def test_cmu_tissue_is_one_piece_inside_the_slide(cmu_slide):
    with Slide(cmu_slide) as slide:
        result = tissue.segment(slide, tissue.tissue_params())
    assert len(result.polygons) == 1
    assert 0.4e6 < result.tissue_area_um2 < 0.8e6  # the skin section covers ~1/3 of 1.64 mm²
    exterior = result.polygons[0].exterior
    assert exterior.min() >= 0
    assert (exterior.max(axis=0) <= np.array(result.level0_size)).all()


def test_segmentation_matches_painted_tissue(tmp_path):
    label_map = _two_pieces()
    with _slide_from_map(tmp_path / "two.svs", label_map) as slide:
        result = tissue.segment(slide, tissue.tissue_params())
    assert len(result.polygons) == 2
    found = _raster(result.polygons, result.level0_size, label_map.shape)
    truth = label_map > 0
    iou = (found & truth).sum() / (found | truth).sum()
    assert iou > 0.9


def test_areas_are_physical_whatever_the_scanner(tmp_path):
    label_map = _two_pieces()
    with _slide_from_map(tmp_path / "x20.svs", label_map, mpp=0.5) as slide:
        at_20x = tissue.segment(slide, tissue.tissue_params()).tissue_area_um2
    # The same tissue scanned at 40x: twice the pixels per side, a quarter of the µm² per pixel.
    with _slide_from_map(tmp_path / "x40.svs", label_map, mpp=0.25, cell=64) as slide:
        at_40x = tissue.segment(slide, tissue.tissue_params()).tissue_area_um2
    assert at_40x == pytest.approx(at_20x, rel=0.05)


def test_small_pieces_follow_the_area_threshold(tmp_path):
    label_map = _two_pieces()
    cv2.circle(label_map, (120, 88), 3, 1, -1)  # ~7 x 7 cells of 16 µm: ~0.01 mm²
    with _slide_from_map(tmp_path / "speck.svs", label_map) as slide:
        resection = tissue.segment(slide, tissue.tissue_params("resection"))
        biopsy = tissue.segment(slide, tissue.tissue_params("biopsy"))
    assert len(resection.polygons) == 2
    assert len(biopsy.polygons) == 3


def test_holes_are_cut_out_or_kept_as_tissue(tmp_path):
    label_map = np.zeros((96, 128), np.uint8)
    cv2.rectangle(label_map, (16, 16), (112, 80), 1, -1)
    cv2.circle(label_map, (64, 48), 14, 0, -1)  # a ~0.16 mm² hole
    with _slide_from_map(tmp_path / "hole.svs", label_map) as slide:
        cut = tissue.segment(slide, tissue.tissue_params(keep_holes=False))
        kept = tissue.segment(slide, tissue.tissue_params(keep_holes=True))
    assert [len(p.holes) for p in cut.polygons] == [1]
    assert [len(p.holes) for p in kept.polygons] == [0]
    hole_um2 = np.pi * (14 * 16) ** 2
    assert kept.tissue_area_um2 - cut.tissue_area_um2 == pytest.approx(hole_um2, rel=0.15)


def test_pen_filter_removes_ink(tmp_path):
    label_map = _two_pieces()
    ink = np.zeros(label_map.shape, bool)
    ink[78:84, 76:124] = True  # a stroke on the glass, away from tissue
    with _slide_from_map(tmp_path / "ink.svs", label_map, ink_map=ink) as slide:
        with_ink = tissue.segment(slide, tissue.tissue_params())
        cleaned = tissue.segment(slide, tissue.tissue_params(remove_pen=True))
    assert len(with_ink.polygons) == 3  # the stroke looks like tissue
    assert len(cleaned.polygons) == 2
    truth = label_map > 0
    found = _raster(cleaned.polygons, cleaned.level0_size, label_map.shape)
    assert (found & truth).sum() / (found | truth).sum() > 0.85


def test_tissue_free_slide_gives_empty_valid_outputs(tmp_path, blank_slide):
    with Slide(blank_slide) as slide:
        result = tissue.segment_slide(
            slide, tissue.tissue_params(), tmp_path / "b.geojson", tmp_path / "b_qc.jpg"
        )
    assert result.polygons == []
    data = json.loads((tmp_path / "b.geojson").read_text())
    assert data["type"] == "FeatureCollection" and data["features"] == []
    assert cv2.imread(str(tmp_path / "b_qc.jpg")) is not None


def test_geojson_is_qupath_style_and_round_trips(tmp_path):
    outer = np.array([[0, 0], [100, 0], [100, 80], [0, 80]], float)
    hole = np.array([[20, 20], [40, 20], [40, 40], [20, 40]], float)
    polygons = [tissue.TissuePolygon(outer, [hole])]
    path = tmp_path / "t.geojson"
    tissue.write_geojson(path, polygons, slide_id="t")
    feature = json.loads(path.read_text())["features"][0]
    assert feature["properties"]["objectType"] == "annotation"
    assert feature["properties"]["classification"]["name"] == "Tissue"
    rings = feature["geometry"]["coordinates"]
    assert all(ring[0] == ring[-1] for ring in rings)
    back = tissue.read_geojson(path)
    np.testing.assert_allclose(back[0].exterior, outer)
    np.testing.assert_allclose(back[0].holes[0], hole)
    assert not list(tmp_path.glob("*.tmp"))


def test_read_geojson_accepts_qupath_multipolygons(tmp_path):
    square = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    shifted = [[x + 20, y] for x, y in square]
    data = [
        {
            "type": "Feature",
            "geometry": {"type": "MultiPolygon", "coordinates": [[square], [shifted]]},
        },
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]}},
    ]
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(data))
    assert len(tissue.read_geojson(path)) == 2


def test_unknown_preset_or_setting_lists_valid_ones():
    with pytest.raises(ValueError, match="resection"):
        tissue.tissue_params("frozen")
    with pytest.raises(ValueError, match="min_tissue_area_um2"):
        tissue.tissue_params(min_area=3)


def test_the_segmentation_thumbnail_is_saved_with_its_scale(tmp_path, cmu_3level_slide):
    with Slide(cmu_3level_slide) as slide:
        result = tissue.segment_slide(
            slide, tissue.tissue_params(), tmp_path / "t.geojson", tmp_path / "t_qc.jpg",
            tmp_path / "thumbs" / "t.jpg",
        )  # fmt: skip
        level0 = slide.dimensions
    image, downsample = read_thumbnail(tmp_path / "thumbs" / "t.jpg")
    scale = json.loads((tmp_path / "thumbs" / "t.json").read_text())
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert max(image.shape[:2]) <= tissue.QC_MAX_SIDE
    assert downsample == pytest.approx(scale["downsample"][0], rel=1e-3)
    assert scale["downsample"][0] * image.shape[1] == pytest.approx(level0[0])
    assert scale["downsample"][1] * image.shape[0] == pytest.approx(level0[1])
    assert scale["level0_mpp"] == pytest.approx(0.499)
    # the saved picture is the segmented one, resized: same colours within JPEG error
    expected = cv2.resize(result.thumbnail, image.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(image.astype(int) - expected.astype(int)).mean() < 4


@pytest.mark.parametrize("ksize", [1, 3, 5, 9, 17, 33])
def test_the_box_count_mask_is_the_median_blur_mask(ksize):
    # a window's median exceeds the threshold exactly when more than half of the window does
    rng = np.random.default_rng(ksize)
    for shape in [(7, 5), (120, 90), (64, 257)]:
        smooth = cv2.GaussianBlur(rng.integers(0, 60, shape, dtype=np.uint8), (0, 0), 3)
        noisy = rng.integers(0, 256, shape, dtype=np.uint8)
        for image in (smooth, noisy):
            for threshold in (0, 15, 30, 200):
                expected = (cv2.medianBlur(image, ksize) > threshold).astype(np.uint8) * 255
                got = tissue._median_above(image, ksize, threshold)
                np.testing.assert_array_equal(got, expected)


def test_the_segmentation_thumbnail_is_qc_sized(tmp_path):
    label_map = _two_pieces((96, 256))
    with _slide_from_map(tmp_path / "wide.svs", label_map, mpp=1.0, cell=96) as slide:
        result = tissue.segment(slide, tissue.tissue_params())
    # read at 8 µm/px (3072 px wide), shrunk once to the QC picture's size
    assert result.thumbnail.shape[:2] == (round(96 * tissue.QC_MAX_SIDE / 256), 2048)
    assert len(result.polygons) == 2

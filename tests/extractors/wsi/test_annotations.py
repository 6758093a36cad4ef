"""Regions drawn in QuPath (slides.annotations): read, checked at plan time, applied to tiling."""

import json
import shutil

import cv2
import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon, shape

from extractors.errors import FileFormatError
from extractors.wsi import annotation_files, tiling, tissue
from extractors.wsi.annotations import (
    EXCLUDED_COLOUR,
    KEPT_COLOUR,
    Annotations,
    AnnotationSettings,
    read_annotations,
)
from extractors.wsi.reader import Slide
from querent.pipeline.plan import Findings, plan_workflow
from tests.helpers import default_config

# A hand-made QuPath export of CMU-1-Small-Region (2220 x 2967 level-0 pixels): a tumour box on
# the tissue, a necrosis box with a hole inside it, a stroma box over the tissue's top, a margin
# box on the empty glass left of the tissue, and objects every reading must ignore.
TUMOR = [[600, 800], [1800, 800], [1800, 2400], [600, 2400], [600, 800]]
NECROSIS = [[900, 1200], [1500, 1200], [1500, 1900], [900, 1900], [900, 1200]]
NECROSIS_HOLE = [[1050, 1400], [1350, 1400], [1350, 1700], [1050, 1700], [1050, 1400]]
STROMA = [[700, 150], [1700, 150], [1700, 700], [700, 700], [700, 150]]
MARGIN = [[40, 1300], [560, 1300], [560, 2000], [40, 2000], [40, 1300]]


def _feature(geometry, name=None, object_type="annotation"):
    properties = {"objectType": object_type, "isLocked": False}
    if name is not None:
        properties["classification"] = {"name": name, "color": [200, 0, 0]}
    return {"type": "Feature", "id": "0f1e", "geometry": geometry, "properties": properties}


def _polygon(*rings):
    return {"type": "Polygon", "coordinates": list(rings)}


EXPORT = {
    "type": "FeatureCollection",
    "features": [
        _feature(_polygon(TUMOR), "Tumor"),
        _feature(_polygon(NECROSIS, NECROSIS_HOLE), "Necrosis"),
        _feature(_polygon(STROMA), "Stroma"),
        _feature(_polygon(MARGIN), "Margin"),
        _feature({"type": "Point", "coordinates": [1200, 1200]}, "Tumor"),
        _feature(
            _polygon([[0, 0], [2220, 0], [2220, 600], [0, 600], [0, 0]]), "Tumor", "detection"
        ),
    ],
}
EXCLUDED = frozenset({"Necrosis"})
RESTRICT = AnnotationSettings("restrict", frozenset({"Tumor"}), EXCLUDED)
PATCH = tiling.TilingParams(patch_size=64)  # 64 level-0 px at 0.499 µm/px: a 34 x 46 lattice


def _geometry(*rings):
    return shape(_polygon(*rings))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    path = tmp_path_factory.mktemp("annotations") / "cmu.geojson"
    path.write_text(json.dumps(EXPORT))
    return path


@pytest.fixture(scope="module")
def automatic(cmu_slide_path):
    """The automatic tissue mask of the slide, as one shapely geometry, and the segmentation."""
    with Slide(cmu_slide_path) as slide:
        result = tissue.segment(slide, tissue.tissue_params())
    parts = [shapely.make_valid(Polygon(p.exterior, p.holes)) for p in result.polygons]
    return shapely.union_all(parts), result


@pytest.fixture(scope="module")
def cmu_slide_path():
    from tests.helpers import shared_slide

    return shared_slide("cmu-1-small-region.svs")


def _segment_and_tile(slide_path, annotations, folder):
    """What the workflow runs: segment_slide with annotations, then tiling from its GeoJSON."""
    with Slide(slide_path) as slide:
        tissue.segment_slide(
            slide, tissue.tissue_params(), folder / "t.geojson", folder / "t_qc.jpg",
            annotations=annotations,
        )  # fmt: skip
        polygons = tissue.read_geojson(folder / "t.geojson")
        coords, lattice = tiling.tile_slide(
            slide, polygons, PATCH, folder / "c.h5", folder / "c_qc.jpg"
        )
        return coords, lattice.patch_size_level0, slide.dimensions


def _exact_fractions(region, size, level0_size):
    """Every lattice cell's top-left corner and the exact fraction of it inside ``region``."""
    xs = np.arange(0, level0_size[0] - size + 1, size)
    ys = np.arange(0, level0_size[1] - size + 1, size)
    corners = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    cells = shapely.box(corners[:, 0], corners[:, 1], corners[:, 0] + size, corners[:, 1] + size)
    return corners, shapely.area(shapely.intersection(cells, region)) / size**2


def _assert_tiles_exactly(coords, size, level0_size, region, min_fraction):
    """Kept patches are those with min_fraction of their area in region (raster tolerance)."""
    corners, exact = _exact_fractions(region, size, level0_size)
    kept = {tuple(c) for c in coords.tolist()}
    tolerance = 2 / tiling.SAMPLES_PER_PATCH  # the raster's error along a patch's edges
    for corner, fraction in zip(corners.tolist(), exact, strict=True):
        if fraction >= min_fraction + tolerance:
            assert tuple(corner) in kept, (corner, fraction)
        if tuple(corner) in kept:
            assert fraction >= min_fraction - tolerance, (corner, fraction)


def test_restrict_tiles_the_tissue_in_kept_annotations_minus_excluded_ones(
    export, automatic, cmu_slide_path, tmp_path
):
    tissue_mask, _ = automatic
    tumor, stroma = _geometry(TUMOR), _geometry(STROMA)
    necrosis, hole = _geometry(NECROSIS, NECROSIS_HOLE), _geometry(NECROSIS_HOLE)
    assert tissue_mask.intersection(stroma).area > 0  # stroma lies on tissue, yet is not kept
    annotations = Annotations.load(export, RESTRICT)
    coords, size, level0_size = _segment_and_tile(cmu_slide_path, annotations, tmp_path)
    region = tissue_mask.intersection(tumor).difference(necrosis)
    _assert_tiles_exactly(coords, size, level0_size, region, PATCH.min_tissue_fraction)
    patches = shapely.box(*coords.T, *(coords + size).T)
    assert shapely.within(patches, hole).any()  # the hole of the exclusion is tiled
    assert not shapely.within(patches, necrosis).any()
    assert not shapely.intersects(patches, stroma).any()
    automatic_coords, _ = tiling.tile(
        automatic[1].polygons, tiling.Lattice(size, size, 0, 1.0, size), level0_size, 0.25
    )
    assert len(coords) < len(automatic_coords)
    written = json.loads((tmp_path / "t.geojson").read_text())["querent"]
    assert written["annotations"]["annotation_mode"] == "restrict"
    assert written["tissue_area_um2"] < automatic[1].tissue_area_um2


def test_replace_tiles_the_annotations_where_the_tissue_mask_is_empty(
    export, automatic, cmu_slide_path, tmp_path
):
    tissue_mask, _ = automatic
    margin = _geometry(MARGIN)
    assert tissue_mask.intersection(margin).area < 0.05 * margin.area  # empty glass
    settings = AnnotationSettings("replace", frozenset({"Margin"}), EXCLUDED)
    coords, size, level0_size = _segment_and_tile(
        cmu_slide_path, Annotations.load(export, settings), tmp_path
    )
    _assert_tiles_exactly(coords, size, level0_size, margin, PATCH.min_tissue_fraction)
    assert len(coords) >= (margin.area / size**2) * 0.8


def test_the_qc_picture_outlines_kept_and_excluded_annotations(export, automatic):
    _, result = automatic
    annotations = Annotations.load(export, RESTRICT)
    plain = tissue.draw_qc(result.thumbnail, result.level0_size, result.polygons)
    drawn = tissue.draw_qc(
        result.thumbnail, result.level0_size, result.polygons, outlines=annotations.outlines()
    )
    changed = (plain != drawn).any(axis=2)
    scale = drawn.shape[1] / result.level0_size[0]
    expected = np.zeros(changed.shape, np.uint8)
    for ring in (TUMOR, NECROSIS, NECROSIS_HOLE):
        points = np.round(np.array(ring) * scale).astype(np.int32)
        cv2.polylines(expected, [points], True, 1, 5)
    assert changed.any() and not (changed & (expected == 0)).any()  # only on the outlines
    tumor_top = np.round(np.array([1200, 800]) * scale).astype(int)
    necrosis_top = np.round(np.array([1200, 1200]) * scale).astype(int)
    assert tuple(drawn[tumor_top[1], tumor_top[0]]) == KEPT_COLOUR
    assert tuple(drawn[necrosis_top[1], necrosis_top[0]]) == EXCLUDED_COLOUR


def test_qupath_exports_of_every_version_are_read(tmp_path):
    bowtie = [[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]  # self-crossing: made valid
    features = [
        _feature(_polygon(TUMOR), "Tumor"),
        {"type": "Feature", "geometry": _polygon(STROMA), "properties": {"classification": "S"}},
        {  # QuPath 0.2: object_type; a derived class as a list of names
            "type": "Feature",
            "geometry": {"type": "MultiPolygon", "coordinates": [[MARGIN], [bowtie]]},
            "properties": {"object_type": "annotation", "classification": {"names": ["T", "P"]}},
        },
        {"type": "Feature", "geometry": _polygon(NECROSIS)},  # unclassified, no properties
        _feature(_polygon(TUMOR), "Tumor", "cell"),
        _feature({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}, "Tumor"),
    ]
    path = tmp_path / "s.geojson"
    for data in (features, {"type": "FeatureCollection", "features": features}):
        path.write_text(json.dumps(data))
        annotations, other = read_annotations(path)
        assert [a.name for a in annotations] == ["Tumor", "S", "T: P", ""]
        assert other == 2
        assert annotations[2].geometry.is_valid
        assert annotations[2].geometry.area == pytest.approx(_geometry(MARGIN).area + 50)


def _write(folder, name, data):
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(data if isinstance(data, str) else json.dumps(data))


POINTS_ONLY = {"type": "FeatureCollection", "features": EXPORT["features"][4:]}
NECROSIS_ONLY = {"type": "FeatureCollection", "features": EXPORT["features"][1:2]}
BROKEN = [_feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}, "Tumor")]


@pytest.mark.parametrize(
    ("name", "data", "settings", "says"),
    [
        ("cmu.geojson", '{"type": "FeatureCollection", "features": [', RESTRICT, "not valid JSON"),
        ("cmu.geojson", {"objects": []}, RESTRICT, "not QuPath GeoJSON"),
        ("cmu.geojson", BROKEN, RESTRICT, "object 0 has a broken geometry"),
        ("cmu.geojson", POINTS_ONLY, RESTRICT, "no polygon annotation in it (2 other objects"),
        ("cmu.geojson", EXPORT, AnnotationSettings("restrict", frozenset({"Lymph"}), frozenset()),
         "none of its classes ('Margin', 'Necrosis', 'Stroma', 'Tumor') is in"),
        ("cmu.geojson", NECROSIS_ONLY, AnnotationSettings("replace", frozenset(), EXCLUDED),
         "replace, but every annotation in it is excluded"),
        ("cmu_1.geojson", EXPORT, RESTRICT,
         "name no slide of the input (cmu_1.geojson: did you mean cmu.geojson?)"),
    ],
)  # fmt: skip
def test_each_bad_annotation_file_is_a_problem_naming_file_key_and_fix(
    tmp_path, name, data, settings, says
):
    _write(tmp_path / "annotations", name, data)
    files, problems, _ = annotation_files.plan_annotations(
        tmp_path / "annotations", settings, {"cmu", "other"}
    )
    problem = next(p for p in problems if says in p)
    assert name in problem and "slides.annotation" in problem and "Fix:" in problem
    if name == "cmu.geojson":  # the job refuses the file with the same words
        with pytest.raises(FileFormatError, match="Fix:") as error:
            Annotations.load(tmp_path / "annotations" / name, settings)
        assert says in str(error.value)


def test_classes_that_match_no_annotation_and_a_missing_folder_are_problems(tmp_path, export):
    settings = AnnotationSettings("restrict", frozenset({"tumor"}), frozenset({"Pen"}))
    _, problems, _ = annotation_files.plan_annotations(export.parent, settings, {"cmu"})
    assert any(
        "slides.annotation_include names classes that no file" in p
        and "'tumor': did you mean 'Tumor'?" in p
        for p in problems
    )
    assert any("slides.annotation_exclude" in p and "'Pen'" in p for p in problems)
    _, problems, _ = annotation_files.plan_annotations(tmp_path / "nowhere", RESTRICT, {"cmu"})
    assert "slides.annotations" in problems[0] and "is not a folder. Fix:" in problems[0]


def test_annotations_off_the_slide_are_refused_by_the_job(tmp_path):
    far = [[5000, 5000], [6000, 5000], [6000, 6000], [5000, 5000]]
    _write(tmp_path, "s.geojson", [_feature(_polygon(far), "Tumor")])
    annotations = Annotations.load(tmp_path / "s.geojson", RESTRICT)
    with pytest.raises(FileFormatError, match="no annotation lies on the slide"):
        annotations.region([], (2220, 2967))


def test_an_edited_file_is_read_again_and_an_unchanged_one_is_not(tmp_path, monkeypatch):
    folder, cache = tmp_path / "annotations", tmp_path / "annotations.json"
    _write(folder, "cmu.geojson", EXPORT)
    assert annotation_files.plan_annotations(folder, RESTRICT, {"cmu"}, cache)[1] == []
    monkeypatch.setattr(annotation_files, "read_annotations", lambda path: 1 / 0)
    assert annotation_files.plan_annotations(folder, RESTRICT, {"cmu"}, cache)[1] == []
    monkeypatch.undo()
    _write(folder, "cmu.geojson", POINTS_ONLY)
    (problem,) = annotation_files.plan_annotations(folder, RESTRICT, {"cmu"}, cache)[1]
    assert "no polygon annotation" in problem


def test_the_plan_gives_a_file_and_settings_to_the_annotated_slide_alone(
    tmp_path, monkeypatch, cmu_slide_path
):
    monkeypatch.chdir(tmp_path)
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("cmu", "other"):
        shutil.copy(cmu_slide_path, slides / f"{name}.svs")
    _write(tmp_path / "annotations", "cmu.geojson", EXPORT)
    section = {
        "dir": str(slides),
        "annotations": str(tmp_path / "annotations"),
        "annotation_include": ["Tumor"],
        "annotation_exclude": ["Necrosis"],
    }
    config = default_config(demo={"enabled": "auto"}, slides=section)
    plan, findings = _plan(config, tmp_path)
    assert findings.problems == []
    assert plan.annotation_input("cmu") == [str(tmp_path / "annotations" / "cmu.geojson")]
    assert plan.annotation_input("other") == [] and plan.annotation_params(config, "other") is None
    assert AnnotationSettings.from_config(plan.annotation_params(config, "cmu")) == RESTRICT
    _write(tmp_path / "annotations", "ghost.geojson", EXPORT)
    _, findings = _plan(config, tmp_path)
    (problem,) = findings.problems
    assert "slides.annotations: ghost.geojson in" in problem and "name no slide" in problem


def _plan(config, tmp_path):
    from querent.pipeline.plan import CohortInputs

    findings = Findings()
    plan = plan_workflow(
        config,
        demo_slides="resources/demo/slides/{slide}.svs",
        where=CohortInputs("resources/demo/cohort.csv", "results/features/{encoder}", {}),
        mpp_cache=tmp_path / "slide_mpp.json",
        findings=findings,
    )
    return plan, findings

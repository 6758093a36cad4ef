import json

import numpy as np
import pytest

from extractors.errors import FileFormatError, SettingsError
from querent.plots.qupath import read_overlay, tile_features, write_overlay

SIZE = 448


def tiles():
    coords = np.array([[0, 0], [448, 0], [896, 448], [123456, 7890]], dtype=np.int64)
    attention = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    rank = np.array([0.0, 1 / 3, 2 / 3, 1.0])
    return coords, {"attention": attention, "attention_rank": rank}


def test_round_trip(tmp_path):
    coords, measurements = tiles()
    names = [f"patch {i}" for i in range(len(coords))]
    path = write_overlay(
        tmp_path / "overlays" / "slide.geojson",
        tile_features(coords, SIZE, measurements, names=names),
    )
    assert not list(path.parent.glob("*.tmp"))
    back = read_overlay(path)
    assert back["type"] == "FeatureCollection" and len(back["features"]) == len(coords)
    for i, feature in enumerate(back["features"]):
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        props = feature["properties"]
        assert props["objectType"] == "tile" and props["name"] == names[i]
        (ring,) = feature["geometry"]["coordinates"]
        ring = np.asarray(ring)
        assert ring.shape == (5, 2) and (ring[0] == ring[-1]).all()
        assert ring.min(0).tolist() == coords[i].tolist()
        assert (ring.max(0) - ring.min(0)).tolist() == [SIZE, SIZE]
        for key, values in measurements.items():
            assert props["measurements"][key] == pytest.approx(float(values[i]), rel=1e-12)
            assert isinstance(props["measurements"][key], float)


def test_polygons_valid_with_one_winding():
    shapely = pytest.importorskip("shapely")
    from shapely.geometry import shape

    coords, measurements = tiles()
    collection = tile_features(coords, SIZE, measurements)
    orientation = set()
    for feature in collection["features"]:
        polygon = shape(feature["geometry"])
        assert polygon.is_valid and polygon.area == SIZE * SIZE
        orientation.add(shapely.is_ccw(polygon.exterior))
    assert orientation == {True}


def test_nan_measurement_is_skipped_and_json_strict(tmp_path):
    coords, _ = tiles()
    score = np.array([0.5, np.nan, np.inf, 1.0])
    collection = tile_features(coords, SIZE, {"score": score, "other": np.arange(4.0)})
    kept = [f["properties"]["measurements"] for f in collection["features"]]
    assert kept[0] == {"score": 0.5, "other": 0.0}
    assert kept[1] == {"other": 1.0} and kept[2] == {"other": 2.0}
    path = write_overlay(tmp_path / "s.geojson", collection)
    json.loads(path.read_text())  # strict JSON: no NaN / Infinity literals
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()


def test_bad_inputs(tmp_path):
    coords, _ = tiles()
    with pytest.raises(FileFormatError, match="'score' has 3 values for 4 patches"):
        tile_features(coords, SIZE, {"score": np.ones(3)})
    with pytest.raises(SettingsError, match="objectType"):
        tile_features(coords, SIZE, {}, object_type="annotation")
    (tmp_path / "bad.geojson").write_text('{"type": "Feature"}')
    with pytest.raises(FileFormatError, match="FeatureCollection"):
        read_overlay(tmp_path / "bad.geojson")
    with pytest.raises(FileFormatError, match="not a readable"):
        read_overlay(tmp_path / "missing.geojson")

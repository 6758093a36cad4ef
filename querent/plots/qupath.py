"""Per-patch scores as QuPath tiles: GeoJSON that QuPath's File > Import objects reads.

A ``FeatureCollection`` with one ``Feature`` per patch: a square ``Polygon`` in level-0 pixels
(one closed ring of 5 points, the same winding for every tile) and ``properties`` holding
``objectType`` ("tile"), an optional ``name`` and ``measurements`` (a flat name -> number dict;
QuPath colours tiles by a chosen measurement). JSON has no NaN, so a non-finite value is left
out of that tile's measurements.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from extractors.errors import FileFormatError, SettingsError
from extractors.io import atomic_path

OBJECT_TYPES = ("tile", "detection")


def tile_features(
    coords: np.ndarray,
    patch_size_level0: int,
    measurements: Mapping[str, np.ndarray],
    *,
    names: Sequence[str] | None = None,
    object_type: str = "tile",
) -> dict:
    """One QuPath tile per patch, carrying that patch's measurements.

    Args:
        coords: ``(n, 2)`` level-0 top-left (x, y) of each patch.
        patch_size_level0: Side of a patch in level-0 pixels.
        measurements: Name -> ``(n,)`` values (e.g. ``{"attention": a, "attention_rank": q}``).
        names: Optional ``(n,)`` tile names.
        object_type: ``"tile"`` or ``"detection"``.

    Returns:
        A GeoJSON ``FeatureCollection`` dict. Rings run (x, y), (x+s, y), (x+s, y+s), (x, y+s),
        (x, y): counter-clockwise in GeoJSON's y-up sense, as RFC 7946 asks of exterior rings.
    """
    if object_type not in OBJECT_TYPES:
        raise SettingsError(f"unknown objectType {object_type!r}; choose one of {OBJECT_TYPES}")
    if patch_size_level0 <= 0:
        raise SettingsError(f"patch_size_level0 must be > 0, got {patch_size_level0}")
    xy = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    n = xy.shape[0]
    columns: dict[str, list[float]] = {}
    finite: dict[str, list[bool]] = {}
    for key, values in measurements.items():
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.shape[0] != n:
            raise FileFormatError(
                f"measurement {key!r} has {values.shape[0]} values for {n} patches: pair it "
                "with the coords of the same slide"
            )
        columns[key] = values.tolist()
        finite[key] = np.isfinite(values).tolist()
    if names is not None and len(names) != n:
        raise FileFormatError(f"{len(names)} names for {n} patches")
    size = int(patch_size_level0)
    features = []
    for i, (x, y) in enumerate(xy.tolist()):
        ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
        properties: dict = {"objectType": object_type}
        if names is not None:
            properties["name"] = str(names[i])
        properties["measurements"] = {
            key: column[i] for key, column in columns.items() if finite[key][i]
        }
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": properties,
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_overlay(path: str | Path, collection: dict) -> Path:
    """Write a FeatureCollection as JSON, atomically (``*.tmp``, then rename).

    Returns:
        The path written.
    """
    path = Path(path)
    text = json.dumps(collection, allow_nan=False, separators=(",", ":"))
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def read_overlay(path: str | Path) -> dict:
    """Read a FeatureCollection written by :func:`write_overlay` (or by QuPath).

    Raises:
        FileFormatError: The file is missing, not JSON, or not a FeatureCollection.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise FileFormatError(f"{path}: not a readable GeoJSON file ({err})") from err
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        raise FileFormatError(f"{path}: not a GeoJSON FeatureCollection; write it again")
    return data

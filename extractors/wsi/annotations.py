"""Regions drawn in QuPath: a slide's GeoJSON export, checked and applied to its tissue.

``slides.annotations`` is a folder of ``{slide_id}.geojson`` files (QuPath's File > Export
objects as GeoJSON: polygons in level-0 pixels, each with a classification). An area annotation
is *excluded* when its class is in ``slides.annotation_exclude``, *kept* when its class is in
``slides.annotation_include`` (or, with that list empty, whenever it is not excluded), and
ignored otherwise; detections, cells, points and lines are always ignored. The slide's region:

- ``restrict``: tissue mask ∩ kept annotations − excluded ones (a file with excluded
  annotations only: tissue mask − excluded ones);
- ``replace``: kept annotations − excluded ones, whatever the tissue mask found.

Segmentation writes that region as the slide's tissue polygons, so tiling (which keeps a patch
when ``tiling.min_tissue_fraction`` of it lies in them), the QC pictures and every later stage
follow it unchanged. A slide without a file keeps its automatic tissue mask. The folder is
checked before a run by :mod:`extractors.wsi.annotation_files`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import Polygon, shape
from shapely.geometry.base import BaseGeometry

from extractors.errors import FileFormatError, SettingsError
from extractors.wsi.reader import Slide
from extractors.wsi.tissue import Segmentation, TissuePolygon, tissue_area_px

logger = logging.getLogger(__name__)

MODES = ("restrict", "replace")
#: Outline colours (RGB) of kept and excluded annotations in the tissue QC picture.
KEPT_COLOUR = (230, 0, 230)
EXCLUDED_COLOUR = (230, 0, 0)
#: How an annotation without a classification is named in messages.
UNCLASSIFIED = "(unclassified)"
FIX_EXPORT = "export the slide's annotations again from QuPath (File > Export objects as GeoJSON)"
_FIX_REMOVE = "or remove the file, so that the slide keeps its automatic tissue mask"


@dataclass(frozen=True)
class AnnotationSettings:
    """How annotations apply: ``slides.annotation_mode``, ``_include`` and ``_exclude``."""

    mode: str
    include: frozenset[str]
    exclude: frozenset[str]

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SettingsError(f"slides.annotation_mode must be one of {MODES}, not {self.mode!r}")
        both = sorted(self.include & self.exclude)
        if both:
            raise SettingsError(
                f"slides.annotation_include and slides.annotation_exclude both name {both}. "
                "Fix: keep each class in one of the two lists."
            )

    @classmethod
    def from_config(cls, slides: Mapping) -> AnnotationSettings:
        """The settings from the config's ``slides`` section (or a job's copy of its keys)."""
        return cls(
            slides["annotation_mode"],
            frozenset(slides["annotation_include"]),
            frozenset(slides["annotation_exclude"]),
        )

    def params(self) -> dict:
        """The config keys of these settings: a segmentation job's parameters."""
        return {
            "annotation_mode": self.mode,
            "annotation_include": sorted(self.include),
            "annotation_exclude": sorted(self.exclude),
        }

    def role(self, name: str) -> str | None:
        """``"exclude"``, ``"include"`` or None (ignored) for an annotation of class ``name``."""
        if name in self.exclude:
            return "exclude"
        if not self.include or name in self.include:
            return "include"
        return None


@dataclass(frozen=True)
class Annotation:
    """One area annotation: its classification ("" for none) and valid polygonal geometry."""

    name: str
    geometry: BaseGeometry


def _features(data: object, path: Path) -> list:
    """The Features of a FeatureCollection, a list of Features, one Feature or a geometry."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        kind = data.get("type")
        if kind == "FeatureCollection" and isinstance(data.get("features"), list):
            return data["features"]
        if kind == "Feature":
            return [data]
        if kind in ("Polygon", "MultiPolygon"):
            return [{"type": "Feature", "geometry": data}]
    raise FileFormatError(
        f"{path}: not QuPath GeoJSON (a FeatureCollection or a list of Features), in "
        f"slides.annotations. Fix: {FIX_EXPORT}, {_FIX_REMOVE}."
    )


def _classification(properties: Mapping) -> str:
    """The class name QuPath wrote: ``{"name": ...}``, ``{"names": [...]}`` or a string."""
    value = properties.get("classification")
    if isinstance(value, dict):
        names = value.get("names")
        value = ": ".join(map(str, names)) if isinstance(names, list) else value.get("name")
    return "" if value is None else str(value)


def _polygonal(geometry: BaseGeometry) -> BaseGeometry:
    """The polygons of a geometry, made valid; empty when it has no area."""
    parts = [
        part
        for part in shapely.get_parts(shapely.make_valid(geometry))
        if isinstance(part, Polygon | shapely.MultiPolygon) and part.area > 0
    ]
    return shapely.union_all(parts) if parts else Polygon()


def read_annotations(path: str | Path) -> tuple[list[Annotation], int]:
    """A QuPath GeoJSON export's area annotations, and how many other objects it holds.

    Objects whose ``objectType`` (``object_type`` in QuPath 0.2) is not ``annotation``
    (detections, cells, tiles), points and lines are the other objects.

    Raises:
        FileFormatError: The file cannot be read or is not GeoJSON; the message names the file,
            the config key and the fix.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise FileFormatError(f"{path}: cannot be read ({err}), in slides.annotations.") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FileFormatError(
            f"{path}: not valid JSON ({err}), in slides.annotations. Fix: {FIX_EXPORT}, "
            f"{_FIX_REMOVE}."
        ) from err
    annotations, other = [], 0
    for index, feature in enumerate(_features(data, path)):
        feature = feature if isinstance(feature, dict) else {}
        properties = feature.get("properties") or {}
        kind = properties.get("objectType", properties.get("object_type", "annotation"))
        if kind != "annotation" or not feature.get("geometry"):
            other += 1
            continue
        try:
            geometry = _polygonal(shape(feature["geometry"]))
        except (shapely.errors.ShapelyError, ValueError, TypeError, KeyError, IndexError) as err:
            raise FileFormatError(
                f"{path}: object {index} has a broken geometry ({err}), in slides.annotations. "
                f"Fix: {FIX_EXPORT}, {_FIX_REMOVE}."
            ) from err
        if geometry.is_empty:
            other += 1
        else:
            annotations.append(Annotation(_classification(properties), geometry))
    return annotations, other


def class_list(names: Iterable[str]) -> str:
    """Class names for a message, sorted, quoted; the empty name shown as unclassified."""
    return ", ".join(repr(name) if name else UNCLASSIFIED for name in sorted(names))


def file_problems(
    path: Path, classes: Mapping[str, int], other: int, settings: AnnotationSettings
) -> list[str]:
    """What stops one annotation file from giving its slide a region, each with its fix.

    Args:
        path: The file.
        classes: Number of area annotations of each class ("" for unclassified).
        other: Number of other objects (points, lines, detections).
        settings: How annotations apply.
    """
    if not classes:
        return [
            f"{path}: no polygon annotation in it ({other} other objects: points, lines or "
            "detections), in slides.annotations. Fix: draw area annotations (rectangle, "
            f"ellipse, polygon, brush) and export them, {_FIX_REMOVE}."
        ]
    roles = {settings.role(name) for name in classes}
    if roles == {None}:
        return [
            f"{path}: none of its classes ({class_list(classes)}) is in "
            f"slides.annotation_include [{class_list(settings.include)}] or "
            "slides.annotation_exclude. Fix: add the class to keep to slides.annotation_include, "
            "or classify the annotations in QuPath."
        ]
    if settings.mode == "replace" and "include" not in roles:
        return [
            f"{path}: slides.annotation_mode is replace, but every annotation in it is "
            f"excluded ({class_list(classes)}), so the slide would have no region. Fix: draw "
            "the region to keep, or set slides.annotation_mode: restrict (tissue minus the "
            "excluded ones)."
        ]
    return []


def to_geometry(polygons: Iterable[TissuePolygon]) -> BaseGeometry:
    """Tissue polygons as one valid shapely geometry (level-0 pixels)."""
    parts = [_polygonal(Polygon(p.exterior, p.holes)) for p in polygons if len(p.exterior) >= 3]
    return shapely.union_all(parts) if parts else Polygon()


def to_polygons(geometry: BaseGeometry) -> list[TissuePolygon]:
    """The polygons of a geometry as tissue polygons (rings unclosed, as segmentation's)."""
    return [
        TissuePolygon(
            np.asarray(part.exterior.coords, np.float64)[:-1],
            [np.asarray(ring.coords, np.float64)[:-1] for ring in part.interiors],
        )
        for part in shapely.get_parts(geometry)
        if isinstance(part, Polygon) and part.area > 0
    ]


@dataclass(frozen=True)
class Annotations:
    """One slide's annotations, sorted by what they do, and how they apply.

    Attributes:
        path: The GeoJSON file.
        settings: How annotations apply.
        kept: The annotations that make the region.
        excluded: The annotations cut out of it.
    """

    path: Path
    settings: AnnotationSettings
    kept: list[Annotation]
    excluded: list[Annotation]

    @classmethod
    def load(cls, path: str | Path, settings: AnnotationSettings) -> Annotations:
        """Read and sort a slide's annotations.

        Raises:
            FileFormatError: What :func:`read_annotations` and :func:`file_problems` refuse.
        """
        annotations, other = read_annotations(path)
        problems = file_problems(Path(path), Counter(a.name for a in annotations), other, settings)
        if problems:
            raise FileFormatError("\n".join(problems))
        roles = [settings.role(a.name) for a in annotations]
        return cls(
            Path(path),
            settings,
            [a for a, role in zip(annotations, roles, strict=True) if role == "include"],
            [a for a, role in zip(annotations, roles, strict=True) if role == "exclude"],
        )

    def region(
        self, tissue: Iterable[TissuePolygon], level0_size: tuple[int, int]
    ) -> list[TissuePolygon]:
        """The slide's region: its tissue restricted, or replaced, by the annotations.

        Raises:
            FileFormatError: No annotation lies on the slide (another image's export, or not in
                level-0 pixels).
        """
        slide = shapely.box(0, 0, *level0_size)
        kept = shapely.union_all([a.geometry for a in self.kept])
        excluded = shapely.union_all([a.geometry for a in self.excluded])
        if not slide.intersects(shapely.union(kept, excluded)):
            raise FileFormatError(
                f"{self.path}: no annotation lies on the slide ({level0_size[0]} x "
                f"{level0_size[1]} level-0 pixels), in slides.annotations. Fix: export the "
                "annotations of this slide's image from QuPath (coordinates in full-resolution "
                "pixels)."
            )
        if self.settings.mode == "replace":
            region = kept
        else:
            region = to_geometry(tissue)
            if self.kept:
                region = region.intersection(kept)
        return to_polygons(_polygonal(region.difference(excluded).intersection(slide)))

    def apply(self, result: Segmentation, slide: Slide) -> Segmentation:
        """A slide's segmentation with its region (:meth:`region`) as the tissue."""
        polygons = self.region(result.polygons, result.level0_size)
        area_um2 = tissue_area_px(polygons) * slide.mpp**2
        logger.info(
            "%s: %s (%s): %d pieces, %.3f mm² (tissue mask: %.3f mm²)",
            slide.slide_id,
            self.path,
            self.settings.mode,
            len(polygons),
            area_um2 / 1e6,
            result.tissue_area_um2 / 1e6,
        )
        if not polygons:
            logger.warning("%s: the annotated region is empty; 0 patches", slide.slide_id)
        return dataclasses.replace(result, polygons=polygons, tissue_area_um2=area_um2)

    def outlines(self) -> list[tuple[TissuePolygon, tuple[int, int, int]]]:
        """Each annotation's polygons with the colour the QC picture draws them in."""
        return [
            (polygon, colour)
            for annotations, colour in ((self.kept, KEPT_COLOUR), (self.excluded, EXCLUDED_COLOUR))
            for annotation in annotations
            for polygon in to_polygons(annotation.geometry)
        ]

    def provenance(self) -> dict:
        """What the tissue GeoJSON records of these annotations."""
        return {"file": str(self.path), **self.settings.params()}

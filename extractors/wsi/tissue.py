"""Tissue segmentation on a bounded-size thumbnail, QuPath GeoJSON and QC pictures.

CLAM-style: HSV saturation, median blur, threshold (fixed or Otsu), morphological close,
contours with holes, filtered by area. Every size is physical (µm, µm²), so one preset works
for every scanner. Polygons are in level-0 pixels. With the fixed threshold the median blur is
never computed: a box count gives the same mask (:func:`_median_above`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from extractors.errors import FileFormatError, SettingsError
from extractors.io import atomic_path
from extractors.wsi.reader import Slide

if TYPE_CHECKING:
    from extractors.wsi.annotations import Annotations

logger = logging.getLogger(__name__)

#: The QC picture's longest side in pixels (the thumbnail is read fine enough for it).
QC_MAX_SIDE = 2048
#: Longest side of a QC picture's report preview: a JPEG of ~100-200 kB instead of the
#: 0.4-0.7 MB full picture, so an HTML report (which embeds every picture) stays small.
PREVIEW_MAX_SIDE = 1024
TISSUE_CLASS = {"name": "Tissue", "color": [0, 200, 0]}
#: Outline colour of kept patches in the tiling QC picture (RGB, drawn at 80% opacity).
PATCH_COLOUR = (255, 160, 0)


@dataclass(frozen=True)
class TissueParams:
    """Segmentation settings; sizes are physical so they do not depend on the scanner."""

    seg_mpp: float = field(
        default=8.0, metadata={"help": "resolution (µm/px) of the thumbnail that is segmented"}
    )
    threshold: str = field(
        default="fixed",
        metadata={
            "help": "saturation threshold: 'fixed' (min_saturation) or 'otsu' (never below "
            "min_saturation)",
            "choices": ("otsu", "fixed"),
        },
    )
    min_saturation: int = field(
        default=15, metadata={"help": "saturation (0-255) below which a pixel is background"}
    )
    median_blur_um: float = field(
        default=64.0, metadata={"help": "median blur window on the saturation channel (µm)"}
    )
    close_um: float = field(
        default=32.0, metadata={"help": "morphological closing kernel that bridges gaps (µm)"}
    )
    min_tissue_area_um2: float = field(
        default=40_000.0, metadata={"help": "tissue pieces smaller than this are dropped (µm²)"}
    )
    min_hole_area_um2: float = field(
        default=20_000.0, metadata={"help": "holes smaller than this are filled (µm²)"}
    )
    max_holes: int = field(default=8, metadata={"help": "largest holes kept per tissue piece"})
    keep_holes: bool = field(
        default=False,
        metadata={"help": "treat holes as tissue (true) or cut them out of the tissue (false)"},
    )
    remove_pen: bool = field(
        default=False, metadata={"help": "remove blue, green and black pen ink before contouring"}
    )


#: Named starting points; config and CLI options override single fields.
PRESETS: dict[str, TissueParams] = {
    "resection": TissueParams(),
    "biopsy": TissueParams(
        median_blur_um=32.0,
        close_um=16.0,
        min_tissue_area_um2=5_000.0,
        min_hole_area_um2=2_000.0,
    ),
}


def tissue_params(preset: str = "resection", **overrides: object) -> TissueParams:
    """Build segmentation settings from a preset name and field overrides.

    Raises:
        ValueError: Unknown preset or field (the message lists the valid ones).
    """
    if preset not in PRESETS:
        raise SettingsError(f"unknown tissue preset {preset!r}; choose one of {sorted(PRESETS)}")
    known = {f.name for f in dataclasses.fields(TissueParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise SettingsError(f"unknown tissue settings {unknown}; valid ones: {sorted(known)}")
    return dataclasses.replace(PRESETS[preset], **overrides)


@dataclass
class TissuePolygon:
    """One tissue piece in level-0 pixels: an exterior ring and zero or more hole rings."""

    exterior: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)

    def rings(self) -> list[np.ndarray]:
        """Exterior followed by holes, each an (M, 2) float array of (x, y)."""
        return [self.exterior, *self.holes]


@dataclass
class Segmentation:
    """What segmentation found, plus the thumbnail it was drawn from at QC size.

    Attributes:
        polygons: Tissue pieces in level-0 pixels.
        thumbnail: The whole slide, RGB, at most :data:`QC_MAX_SIDE` pixels a side: the picture
            QC pictures and the saved thumbnail are drawn on.
        level0_size: Slide (width, height) at level 0.
        tissue_area_um2: Tissue area (holes cut out).
    """

    polygons: list[TissuePolygon]
    thumbnail: np.ndarray
    level0_size: tuple[int, int]
    tissue_area_um2: float


def _odd(n: float) -> int:
    return max(1, int(round(n)) // 2 * 2 + 1)


def _pen_mask(hsv: np.ndarray) -> np.ndarray:
    """Pixels of blue, green or black marker ink (OpenCV hue is 0-180)."""
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    coloured_ink = (hue >= 35) & (hue <= 125) & (sat > 60)
    black_ink = val < 50
    return coloured_ink | black_ink


def _median_above(channel: np.ndarray, ksize: int, threshold: int) -> np.ndarray:
    """``cv2.medianBlur(channel, ksize) > threshold`` as 0/255, without computing a median.

    A window's median exceeds the threshold exactly when more than half of the window does, so
    a box count of the pixels above it (edges replicated, as ``medianBlur`` does) gives the same
    mask, bit for bit, at a fraction of the cost of a large median.
    """
    above = cv2.threshold(channel, threshold, 1, cv2.THRESH_BINARY)[1]
    depth = cv2.CV_8U if ksize * ksize <= 255 else cv2.CV_16U
    counts = cv2.boxFilter(
        above, depth, (ksize, ksize), normalize=False, borderType=cv2.BORDER_REPLICATE
    )
    return cv2.compare(counts, ksize * ksize // 2, cv2.CMP_GT)


def tissue_mask(thumbnail: np.ndarray, params: TissueParams) -> np.ndarray:
    """Binary tissue mask (uint8 0/255) of an RGB thumbnail taken at ``params.seg_mpp``.

    A pixel is tissue where the median of the saturation around it exceeds the threshold.
    """
    hsv = cv2.cvtColor(thumbnail, cv2.COLOR_RGB2HSV)
    saturation = np.ascontiguousarray(hsv[..., 1])
    ksize = _odd(params.median_blur_um / params.seg_mpp)
    if params.threshold == "otsu":
        blurred = cv2.medianBlur(saturation, ksize)
        otsu, _ = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        threshold = max(params.min_saturation, int(otsu))
        mask = cv2.compare(blurred, threshold, cv2.CMP_GT)
    else:
        mask = _median_above(saturation, ksize, params.min_saturation)
    if params.remove_pen:
        mask[_pen_mask(hsv)] = 0
    kernel_px = _odd(params.close_um / params.seg_mpp)
    if kernel_px > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_px, kernel_px))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    return mask


def mask_to_polygons(
    mask: np.ndarray, params: TissueParams, to_level0: tuple[float, float]
) -> list[TissuePolygon]:
    """Contours of a mask as level-0 polygons, filtered by physical area.

    Args:
        mask: uint8 mask at ``params.seg_mpp``.
        params: Area thresholds and hole handling.
        to_level0: (sx, sy) factors from mask pixels to level-0 pixels.
    """
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    um2_per_px = params.seg_mpp**2
    scale = np.asarray(to_level0, dtype=np.float64)

    def level0(contour: np.ndarray) -> np.ndarray:
        return (contour[:, 0, :].astype(np.float64) + 0.5) * scale

    polygons = []
    for index, (_next, _prev, first_child, parent) in enumerate(hierarchy[0]):
        if parent != -1:
            continue
        holes = []
        child = first_child
        while child != -1:
            area = cv2.contourArea(contours[child]) * um2_per_px
            if area >= params.min_hole_area_um2:
                holes.append((area, contours[child]))
            child = hierarchy[0][child][0]
        holes = sorted(holes, key=lambda item: -item[0])[: params.max_holes]
        area = cv2.contourArea(contours[index]) * um2_per_px
        if not params.keep_holes:
            area -= sum(hole_area for hole_area, _ in holes)
        if area < params.min_tissue_area_um2 or len(contours[index]) < 3:
            continue
        kept_holes = [] if params.keep_holes else [level0(c) for _, c in holes if len(c) >= 3]
        polygons.append(TissuePolygon(level0(contours[index]), kept_holes))
    return polygons


def polygon_area(ring: np.ndarray) -> float:
    """Shoelace area of a ring, in squared units of its coordinates."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def tissue_area_px(polygons: Sequence[TissuePolygon]) -> float:
    """Area of tissue polygons in level-0 pixels, holes cut out."""
    return sum(polygon_area(p.exterior) - sum(polygon_area(h) for h in p.holes) for p in polygons)


def qc_mpp(slide: Slide) -> float:
    """MPP of a QC picture of the whole slide (:data:`QC_MAX_SIDE` pixels on its long side)."""
    return max(slide.mpp, max(slide.dimensions) * slide.mpp / QC_MAX_SIDE)


def thumbnail_mpp(slide: Slide, params: TissueParams) -> float:
    """MPP at which to read the thumbnail: fine enough for segmentation and the QC picture."""
    return max(slide.mpp, min(params.seg_mpp, qc_mpp(slide)))


def read_for_segmentation(
    slide: Slide, params: TissueParams
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(thumbnail, the image segmented at ``params.seg_mpp``, level-0 pixels per its pixel)."""
    thumbnail = slide.read_at_mpp(thumbnail_mpp(slide, params))
    width, height = slide.dimensions
    seg_size = (
        max(1, round(width * slide.mpp / params.seg_mpp)),
        max(1, round(height * slide.mpp / params.seg_mpp)),
    )
    seg_image = thumbnail
    if (thumbnail.shape[1], thumbnail.shape[0]) != seg_size:
        seg_image = cv2.resize(thumbnail, seg_size, interpolation=cv2.INTER_AREA)
    return thumbnail, seg_image, (width / seg_size[0], height / seg_size[1])


def segment(slide: Slide, params: TissueParams) -> Segmentation:
    """Segment the tissue of a slide.

    Reads one bounded thumbnail (never level 0 whole for a pyramidal slide), segments it at
    ``params.seg_mpp`` and returns level-0 polygons, with the thumbnail shrunk once to QC size
    (:func:`fit_qc_size`) for every picture drawn from it.
    """
    thumbnail, seg_image, scale = read_for_segmentation(slide, params)
    width, height = slide.dimensions
    polygons = mask_to_polygons(tissue_mask(seg_image, params), params, scale)
    area_um2 = tissue_area_px(polygons) * slide.mpp**2
    logger.info(
        "%s: %d tissue pieces, %.3f mm² of tissue", slide.slide_id, len(polygons), area_um2 / 1e6
    )
    if not polygons:
        logger.warning("%s: no tissue found; it will yield 0 patches", slide.slide_id)
    return Segmentation(polygons, fit_qc_size(thumbnail), (width, height), area_um2)


def _closed(ring: np.ndarray) -> list[list[float]]:
    points = [[round(x, 2), round(y, 2)] for x, y in ring.tolist()]  # Python floats: fast
    return points + [points[0]]


def write_geojson(path: str | Path, polygons: list[TissuePolygon], **properties: object) -> None:
    """Write polygons as a QuPath-compatible GeoJSON FeatureCollection (atomic).

    Args:
        path: Output ``.geojson`` file.
        polygons: Level-0 tissue polygons; one Feature (annotation of class Tissue) each.
        **properties: Provenance stored in the collection's ``querent`` member.
    """
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [_closed(r) for r in p.rings()]},
            "properties": {"objectType": "annotation", "classification": TISSUE_CLASS},
        }
        for p in polygons
    ]
    collection = {"type": "FeatureCollection", "features": features, "querent": properties}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(collection, default=str))


def read_geojson(path: str | Path) -> list[TissuePolygon]:
    """Read tissue polygons from GeoJSON (ours, or annotations exported from QuPath).

    Polygon and MultiPolygon geometries are used, whatever their class; other geometry types
    (points, lines) are ignored.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FileFormatError(f"{path}: not a readable GeoJSON file ({err})") from err
    if isinstance(data, list):
        features = data
    elif data.get("type") == "FeatureCollection":
        features = data["features"]
    else:
        features = [data]
    polygons = []
    for feature in features:
        geometry = feature.get("geometry") or {}
        if geometry.get("type") == "Polygon":
            parts = [geometry["coordinates"]]
        elif geometry.get("type") == "MultiPolygon":
            parts = geometry["coordinates"]
        else:
            continue
        for rings in parts:
            arrays = [np.asarray(ring, dtype=np.float64)[:-1] for ring in rings]
            polygons.append(TissuePolygon(arrays[0], arrays[1:]))
    return polygons


def fit_qc_size(thumbnail: np.ndarray, max_side: int = QC_MAX_SIDE) -> np.ndarray:
    """The thumbnail shrunk to at most ``max_side`` pixels a side (as is if smaller).

    Shrinking by less than half is bilinear (every source pixel still weighs in, and it costs a
    seventh of an area average at non-integer factors); by half or more it averages areas.
    """
    factor = min(1.0, max_side / max(thumbnail.shape[:2]))
    if factor == 1.0:
        return thumbnail
    size = (round(thumbnail.shape[1] * factor), round(thumbnail.shape[0] * factor))
    interpolation = cv2.INTER_LINEAR if factor > 0.5 else cv2.INTER_AREA
    return cv2.resize(thumbnail, size, interpolation=interpolation)


def draw_qc(
    thumbnail: np.ndarray,
    level0_size: tuple[int, int],
    polygons: list[TissuePolygon],
    coords: np.ndarray | None = None,
    patch_size_level0: int | None = None,
    outlines: Sequence[tuple[TissuePolygon, tuple[int, int, int]]] = (),
) -> np.ndarray:
    """Draw tissue outlines (green), holes (blue) and patches (orange) on a thumbnail.

    Args:
        thumbnail: The whole slide, RGB.
        level0_size: Slide (width, height) at level 0.
        polygons: Tissue polygons in level-0 pixels.
        coords: Level-0 top-left corners of patches to outline, or None.
        patch_size_level0: Their side in level-0 pixels.
        outlines: More polygons with their RGB colour, drawn last (a slide's annotations).

    Returns:
        RGB uint8 picture with at most :data:`QC_MAX_SIDE` pixels per side.
    """
    picture = np.array(fit_qc_size(thumbnail), order="C")  # a copy: never draw on the input
    scale = np.array([picture.shape[1] / level0_size[0], picture.shape[0] / level0_size[1]])
    thickness = max(1, round(max(picture.shape[:2]) / 700))
    if coords is not None and len(coords):
        corners = np.round(coords * scale).astype(np.int32)
        extent = np.round(patch_size_level0 * scale).astype(np.int32)
        offsets = np.array([[0, 0], [extent[0], 0], extent, [0, extent[1]]], np.int32)
        # One-pixel outlines widened by a square: ~5x faster than thick polylines (their
        # corners come out square rather than round).
        outline = np.zeros(picture.shape[:2], np.uint8)
        cv2.polylines(outline, list(corners[:, None, :] + offsets), True, 255, 1)
        if thickness > 1:
            outline = cv2.dilate(outline, np.ones((thickness, thickness), np.uint8))
        colour = cv2.merge([np.full(outline.shape, c, np.uint8) for c in PATCH_COLOUR])
        tinted = cv2.addWeighted(colour, 0.8, picture, 0.2, 0)
        cv2.copyTo(tinted, outline, picture)
    for polygon in polygons:
        rings = [np.round(r * scale).astype(np.int32) for r in polygon.rings()]
        cv2.polylines(picture, rings[:1], True, (0, 200, 0), thickness)
        cv2.polylines(picture, rings[1:], True, (0, 80, 255), thickness)
    for polygon, colour in outlines:
        rings = [np.round(r * scale).astype(np.int32) for r in polygon.rings()]
        cv2.polylines(picture, rings, True, colour, thickness)
    return picture


def write_jpeg(path: str | Path, rgb: np.ndarray, quality: int = 90) -> None:
    """Write an RGB picture as JPEG (atomic).

    QC pictures are JPEG, as CLAM's masks and TRIDENT's contour pictures: for a photo-like
    thumbnail a PNG takes ~8x longer to encode (~45 ms at 2048 px) and is ~5x larger.
    """
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"{path}: JPEG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded.tobytes())


def write_preview(path: str | Path, picture: np.ndarray) -> None:
    """Write the report preview of a QC picture: JPEG, :data:`PREVIEW_MAX_SIDE` a side at most."""
    write_jpeg(path, fit_qc_size(picture, PREVIEW_MAX_SIDE), quality=85)


def write_thumbnail(
    path: str | Path, thumbnail: np.ndarray, level0_size: tuple[int, int], mpp: float
) -> None:
    """Save a whole-slide thumbnail (JPEG, at most :data:`QC_MAX_SIDE` a side) and its scale.

    Writes ``path`` and ``path`` with ``.json``: ``downsample`` (level-0 pixels per thumbnail
    pixel, x and y), ``level0_width``, ``level0_height`` and ``level0_mpp``, so heatmaps paint
    level-0 patch geometry on it without opening the slide
    (:func:`querent.plots.thumbnails.read_thumbnail` reads both).
    """
    thumbnail = fit_qc_size(thumbnail)
    scale = {
        "downsample": [level0_size[0] / thumbnail.shape[1], level0_size[1] / thumbnail.shape[0]],
        "level0_width": level0_size[0],
        "level0_height": level0_size[1],
        "level0_mpp": mpp,
    }
    with atomic_path(Path(path).with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(scale, indent=2) + "\n")
    write_jpeg(path, thumbnail)


def segment_slide(
    slide: Slide,
    params: TissueParams,
    geojson_path: str | Path,
    qc_path: str | Path,
    thumbnail_path: str | Path | None = None,
    annotations: Annotations | None = None,
) -> Segmentation:
    """Segment a slide; write its tissue GeoJSON, QC picture and (optionally) thumbnail.

    With ``annotations`` the tissue written is the region they make of the tissue found
    (:meth:`~extractors.wsi.annotations.Annotations.apply`), and the QC picture outlines them
    in their own colours.
    """
    result = segment(slide, params)
    outlines, provenance = [], {}
    if annotations is not None:
        result = annotations.apply(result, slide)
        outlines, provenance = annotations.outlines(), {"annotations": annotations.provenance()}
    if thumbnail_path is not None:
        write_thumbnail(thumbnail_path, result.thumbnail, result.level0_size, slide.mpp)
    write_geojson(
        geojson_path,
        result.polygons,
        slide_id=slide.slide_id,
        level0_mpp=slide.mpp,
        mpp_source=slide.mpp_source,
        tissue_area_um2=result.tissue_area_um2,
        params=dataclasses.asdict(params),
        **provenance,
    )
    picture = draw_qc(result.thumbnail, result.level0_size, result.polygons, outlines=outlines)
    write_jpeg(qc_path, picture)
    return result

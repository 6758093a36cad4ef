"""Tile tissue into patches on one global lattice and write CLAM/TRIDENT-compatible coords.

The lattice is anchored at level-0 (0, 0) with step ``patch_size_level0 - overlap_level0``, so
every coordinate is a multiple of the step and region indices are integer division. Tissue
fractions are computed per tissue polygon inside its bounding box only, so the cost grows with
tissue area, not with the slide's level-0 pixels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from extractors import io
from extractors.errors import SettingsError
from extractors.wsi.reader import Slide
from extractors.wsi.tissue import TissuePolygon, draw_qc, qc_mpp, write_jpeg, write_preview

logger = logging.getLogger(__name__)

#: Raster samples per patch side when measuring a patch's tissue fraction.
SAMPLES_PER_PATCH = 16
_SUBPIXEL_BITS = 4
_SUBPIXEL = 1 << _SUBPIXEL_BITS


@dataclass(frozen=True)
class TilingParams:
    """Where patches go and which are kept."""

    target_mpp: float = field(
        default=0.5, metadata={"help": "patch resolution in µm/px (0.5 = 20x, 0.25 = 40x)"}
    )
    patch_size: int = field(default=256, metadata={"help": "patch side in pixels at target_mpp"})
    overlap: int = field(
        default=0, metadata={"help": "overlap of neighbouring patches in pixels at target_mpp"}
    )
    min_tissue_fraction: float = field(
        default=0.25, metadata={"help": "keep patches with at least this fraction of tissue"}
    )

    def __post_init__(self) -> None:
        if self.patch_size < 1 or not 0 <= self.overlap < self.patch_size:
            raise SettingsError(
                f"need patch_size >= 1 and 0 <= overlap < patch_size, got patch_size="
                f"{self.patch_size}, overlap={self.overlap}"
            )
        if not 0.0 <= self.min_tissue_fraction <= 1.0:
            raise SettingsError(
                f"min_tissue_fraction must lie in [0, 1], got {self.min_tissue_fraction}"
            )


@dataclass(frozen=True)
class Lattice:
    """The patch lattice of one slide and how to read a patch.

    Attributes:
        patch_size_level0: Patch side in level-0 pixels.
        step_level0: Distance between neighbouring patches in level-0 pixels.
        read_level: Pyramid level patches are read from.
        read_downsample: That level's downsample.
        read_size: Patch side in pixels at ``read_level`` (resized to ``patch_size`` if unequal).
    """

    patch_size_level0: int
    step_level0: int
    read_level: int
    read_downsample: float
    read_size: int


def make_lattice(slide: Slide, params: TilingParams) -> Lattice:
    """Lay the lattice for ``params`` on ``slide``.

    A level within the MPP tolerance of the target is taken as the target, so a 0.499 µm/px
    scan tiled at 0.5 gives 256-pixel patches read from level 0 without resizing.
    """
    choice = slide.pick_level(params.target_mpp)
    effective_mpp = choice.mpp if choice.scale == 1.0 else params.target_mpp
    ratio = effective_mpp / slide.mpp
    patch_size_level0 = round(params.patch_size * ratio)
    step_level0 = patch_size_level0 - round(params.overlap * ratio)
    read_size = round(patch_size_level0 / choice.downsample)
    return Lattice(patch_size_level0, step_level0, choice.level, choice.downsample, read_size)


def _polygon_fractions(
    polygon: TissuePolygon, lattice: Lattice, grid_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue fraction of every lattice cell that the polygon's bounding box touches.

    Returns:
        (cells, fractions): flat cell indices (row * n_cols + col) and their tissue fractions.
    """
    n_rows, n_cols = grid_shape
    step, size = lattice.step_level0, lattice.patch_size_level0
    lo = polygon.exterior.min(axis=0)
    hi = polygon.exterior.max(axis=0)
    col0, row0 = (np.maximum(np.floor((lo - size) / step).astype(int) + 1, 0)).tolist()
    col1 = min(int(hi[0] // step), n_cols - 1)
    row1 = min(int(hi[1] // step), n_rows - 1)
    if col1 < col0 or row1 < row0:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    scale = SAMPLES_PER_PATCH / size
    origin = np.array([col0 * step, row0 * step], dtype=np.float64)
    width = int(np.ceil(((col1 - col0) * step + size) * scale))
    height = int(np.ceil(((row1 - row0) * step + size) * scale))
    raster = np.zeros((height, width), np.uint8)
    # Sub-pixel vertices (fixed point, 1/16 px); -0.5 because OpenCV puts pixel centres on
    # integer coordinates.
    rings = [
        np.round(((ring - origin) * scale - 0.5) * _SUBPIXEL).astype(np.int32)
        for ring in polygon.rings()
    ]
    cv2.fillPoly(raster, rings, 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    integral = cv2.integral(raster)
    cols = np.arange(col0, col1 + 1)
    rows = np.arange(row0, row1 + 1)
    xs = np.round((cols - col0) * step * scale).astype(int)
    ys = np.round((rows - row0) * step * scale).astype(int)
    x1 = np.minimum(xs + SAMPLES_PER_PATCH, width)
    y1 = np.minimum(ys + SAMPLES_PER_PATCH, height)
    sums = (
        integral[y1[:, None], x1[None, :]]
        - integral[ys[:, None], x1[None, :]]
        - integral[y1[:, None], xs[None, :]]
        + integral[ys[:, None], xs[None, :]]
    )
    cells = (rows[:, None] * n_cols + cols[None, :]).ravel()
    return cells, sums.ravel() / SAMPLES_PER_PATCH**2


def tile(
    polygons: list[TissuePolygon],
    lattice: Lattice,
    level0_size: tuple[int, int],
    min_tissue_fraction: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the lattice patches that lie inside the slide and are tissue enough.

    Args:
        polygons: Tissue polygons in level-0 pixels.
        lattice: The slide's patch lattice.
        level0_size: Slide (width, height) at level 0; patches must lie fully inside.
        min_tissue_fraction: Minimal tissue fraction of a kept patch.

    Returns:
        (coords, fractions): int64 (N, 2) level-0 top-left (x, y) sorted by row then column,
        and each patch's tissue fraction (float32, N).
    """
    step, size = lattice.step_level0, lattice.patch_size_level0
    n_cols = max(0, (level0_size[0] - size) // step + 1)
    n_rows = max(0, (level0_size[1] - size) // step + 1)
    if not polygons or n_cols == 0 or n_rows == 0:
        return np.empty((0, 2), np.int64), np.empty(0, np.float32)
    parts = [_polygon_fractions(p, lattice, (n_rows, n_cols)) for p in polygons]
    cells = np.concatenate([cells for cells, _ in parts])
    fractions = np.concatenate([fractions for _, fractions in parts])
    unique, inverse = np.unique(cells, return_inverse=True)
    total = np.minimum(np.bincount(inverse, weights=fractions), 1.0)
    keep = (total >= min_tissue_fraction) & (total > 0)
    rows, cols = np.divmod(unique[keep], n_cols)
    coords = np.stack([cols * step, rows * step], axis=1).astype(np.int64)
    return coords, total[keep].astype(np.float32)


def params_hash(params: TilingParams, lattice: Lattice) -> str:
    """Short stable hash of everything that decides where patches go."""
    payload = {**dataclasses.asdict(params), **dataclasses.asdict(lattice)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def write_coords(
    path: str | Path,
    coords: np.ndarray,
    tissue_fraction: np.ndarray,
    *,
    slide: Slide,
    lattice: Lattice,
    params: TilingParams,
) -> None:
    """Write the coords HDF5 (atomic) with TRIDENT's, CLAM's and our attributes.

    Datasets: ``coords`` (N, 2) int64 level-0 top-left (x, y) and ``tissue_fraction`` (N,).
    """
    level0_magnification, target_magnification = io.trident_magnifications(
        params.target_mpp, params.patch_size, lattice.patch_size_level0
    )
    attrs = {
        # TRIDENT / Patho-Bench
        "patch_size": params.patch_size,
        "patch_size_level0": lattice.patch_size_level0,
        "level0_magnification": level0_magnification,
        "target_magnification": target_magnification,
        "overlap": params.overlap,
        "name": slide.slide_id,
        "level0_width": slide.dimensions[0],
        "level0_height": slide.dimensions[1],
        # CLAM
        "patch_level": lattice.read_level,
        "downsample": np.array([lattice.read_downsample] * 2),
        "level_dim": np.array(slide.level_dimensions[lattice.read_level]),
        # querent
        "level0_mpp": slide.mpp,
        "target_mpp": params.target_mpp,
        "mpp_source": slide.mpp_source,
        "step_level0": lattice.step_level0,
        "read_size": lattice.read_size,
        "min_tissue_fraction": params.min_tissue_fraction,
        "params_hash": params_hash(params, lattice),
    }
    if slide.objective_power is not None:
        attrs["scanner_objective_power"] = slide.objective_power
    io.write_coords(path, coords, tissue_fraction, attrs)


def tile_slide(
    slide: Slide,
    polygons: list[TissuePolygon],
    params: TilingParams,
    coords_path: str | Path,
    qc_path: str | Path,
    thumbnail: np.ndarray | None = None,
    *,
    preview_path: str | Path | None = None,
) -> tuple[np.ndarray, Lattice]:
    """Tile one slide's tissue; write its coords file and a QC picture with the patches.

    Args:
        slide: The open slide.
        polygons: Its tissue polygons in level-0 pixels.
        params: Tiling settings.
        coords_path: Output coords HDF5.
        qc_path: Output QC JPEG (tissue outlines, holes and kept patches).
        thumbnail: A whole-slide thumbnail to draw on; read at QC resolution if None.
        preview_path: Output JPEG of the same picture at report size
            (:func:`~extractors.wsi.tissue.write_preview`), or None for none.

    Returns:
        The kept coords and the lattice.
    """
    lattice = make_lattice(slide, params)
    coords, fractions = tile(polygons, lattice, slide.dimensions, params.min_tissue_fraction)
    if len(coords) == 0:
        logger.warning("%s: no patch has enough tissue; writing 0 patches", slide.slide_id)
    logger.info(
        "%s: %d patches of %d px at %.3f µm/px (level %d, step %d level-0 px)",
        slide.slide_id,
        len(coords),
        params.patch_size,
        params.target_mpp,
        lattice.read_level,
        lattice.step_level0,
    )
    write_coords(coords_path, coords, fractions, slide=slide, lattice=lattice, params=params)
    if thumbnail is None:
        thumbnail = slide.read_at_mpp(qc_mpp(slide))
    picture = draw_qc(thumbnail, slide.dimensions, polygons, coords, lattice.patch_size_level0)
    write_jpeg(qc_path, picture)
    if preview_path is not None:
        write_preview(preview_path, picture)
    return coords, lattice

"""Deterministic synthetic whole-slide images: a demo cohort and large benchmark slides.

Slides are real pyramidal Aperio SVS files (tiled JPEG, ``openslide.vendor == "aperio"``) so the
whole pipeline, OpenSlide included, runs on them without any download. Tissue is painted from a
small *label map* (0 = background, 1 = stroma, 2 = tumour) that is upsampled smoothly tile by
tile, so a slide of any size is streamed and level 0 is never held in memory.

Two textures make the label learnable from patch features: every slide shows *stroma* (pink
eosin with sparse small nuclei); slides of label ``"B"`` also show *tumour* (densely packed,
large, dark nuclei).

Everything is a pure function of its arguments: the same call writes the same bytes.
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd
import tifffile
from tqdm import tqdm

from extractors.errors import SettingsError
from extractors.io import atomic_path

logger = logging.getLogger(__name__)

DEMO_MPP = 0.5
LABELS = ("A", "B")

BACKGROUND, STROMA, TUMOUR = 0, 1, 2

_TILE = 256
_BANK_SIZE = 32
_PAD = 32  # margin painted around bank tiles, then cropped, to avoid border effects
_DEMO_MAP_SCALE = 32  # level-0 pixels per label-map pixel in demo slides
_PIECE_GAP = 0.25  # gap between tissue pieces, in units of elliptical distance
_EDGE_PX = 8.0  # width of tissue / tumour edges in level-0 pixels
_FIELD_SIGMA = 1.0  # label-map smoothing (map pixels) before upsampling
_INK_THRESHOLD = 0.3  # thin pen strokes survive smoothing
_INK_OPACITY = 0.9
_INK_RGB = np.array([30, 115, 125], dtype=np.float32)
_BACKGROUND_RGB = (243, 241, 245)
_JPEG_QUALITY = 80
_BIGTIFF_PIXELS = 1_000_000_000
_APERIO_HEADER = "Aperio Image Library v12.0.0\r\n"


@dataclass(frozen=True)
class _Texture:
    """Appearance of one tissue type in a 256 x 256 level-0 tile at 0.5 um/px."""

    ground: tuple[float, float, float]  # eosin-stained ground, RGB
    nucleus: tuple[float, float, float]  # haematoxylin, RGB
    n_nuclei: int  # nuclei per tile
    radius: tuple[float, float]  # range of the short semi-axis, pixels
    elongation: tuple[float, float]  # range of long / short semi-axis
    fibre: float  # darkening along wavy fibres
    clefts: float  # strength of pale gaps between fibres


_STROMA_TEXTURE = _Texture(
    ground=(234.0, 164.0, 198.0),
    nucleus=(104.0, 66.0, 152.0),
    n_nuclei=14,
    radius=(2.5, 4.0),
    elongation=(1.8, 3.2),
    fibre=0.10,
    clefts=0.4,
)
_TUMOUR_TEXTURE = _Texture(
    ground=(206.0, 146.0, 192.0),
    nucleus=(64.0, 36.0, 112.0),
    n_nuclei=150,
    radius=(6.5, 10.0),
    elongation=(1.0, 1.4),
    fibre=0.03,
    clefts=0.15,
)


def demo_slide_ids(n_slides: int) -> list[str]:
    """Return the slide ids of a demo cohort: ``["demo_000", "demo_001", ...]``.

    Args:
        n_slides: Number of slides.
    """
    return [f"demo_{i:03d}" for i in range(n_slides)]


def demo_cohort(n_slides: int = 16, seed: int = 0) -> pd.DataFrame:
    """Return the cohort sheet of the demo: one row per slide.

    Every fourth case owns two slides, so splits must be made per patient. Both slides of a case
    share label, survival time and event. Labels are balanced over slides (counts differ by at
    most one) and assigned to cases in an order shuffled by ``seed``. Label ``"B"`` has the
    shorter survival; about 70 % of cases have an event.

    Args:
        n_slides: Number of slides (at least 1).
        seed: Seed of the shuffle and of the survival draws.

    Returns:
        Columns ``slide_id``, ``case_id``, ``label``, ``time`` (months, > 0) and ``event`` (0/1).
    """
    if n_slides < 1:
        raise SettingsError(f"n_slides must be at least 1, got {n_slides}")
    slides_per_case = _slides_per_case(n_slides)
    rng = np.random.default_rng(seed)
    case_labels = _balanced_case_labels(slides_per_case, rng)
    mean_months = {"A": 48.0, "B": 18.0}
    times = [round(1.0 + rng.exponential(mean_months[label]), 2) for label in case_labels]
    events = (rng.random(len(case_labels)) < 0.7).astype(int)
    rows = []
    slide_ids = iter(demo_slide_ids(n_slides))
    for case, n_case in enumerate(slides_per_case):
        for _ in range(n_case):
            rows.append(
                {
                    "slide_id": next(slide_ids),
                    "case_id": f"case_{case:03d}",
                    "label": case_labels[case],
                    "time": times[case],
                    "event": int(events[case]),
                }
            )
    return pd.DataFrame(rows, columns=["slide_id", "case_id", "label", "time", "event"])


def _slides_per_case(n_slides: int) -> list[int]:
    """Split ``n_slides`` over cases; every fourth case owns two slides."""
    counts: list[int] = []
    remaining = n_slides
    while remaining:
        n_case = min(2 if len(counts) % 4 == 3 else 1, remaining)
        counts.append(n_case)
        remaining -= n_case
    return counts


def _balanced_case_labels(slides_per_case: Sequence[int], rng: np.random.Generator) -> list[str]:
    """Label cases so that slide counts per label differ by at most one.

    Cases are visited in a shuffled order, two-slide cases first, and each goes to the label
    with fewer slides so far (ties alternate).
    """
    order = rng.permutation(len(slides_per_case))
    order = sorted(order, key=lambda case: -slides_per_case[case])  # stable: keeps the shuffle
    labels = [""] * len(slides_per_case)
    counts = dict.fromkeys(LABELS, 0)
    for rank, case in enumerate(order):
        if counts["A"] == counts["B"]:
            label = LABELS[rank % 2]
        else:
            label = min(LABELS, key=counts.__getitem__)
        labels[case] = label
        counts[label] += slides_per_case[case]
    return labels


def write_demo_cohort(
    out_dir: str | os.PathLike, *, n_slides: int = 16, seed: int = 0
) -> pd.DataFrame:
    """Write a demo cohort: ``out_dir/slides/{slide_id}.svs`` and ``out_dir/cohort.csv``.

    Args:
        out_dir: Output folder (created if missing).
        n_slides: Number of slides.
        seed: Seed of the sheet and of every slide.

    Returns:
        The cohort sheet, as written to ``cohort.csv``.
    """
    sheet = demo_cohort(n_slides, seed)
    slides_dir = os.path.join(out_dir, "slides")
    for row in tqdm(sheet.itertuples(), total=len(sheet), desc="demo slides", disable=None):
        write_demo_slide(
            os.path.join(slides_dir, f"{row.slide_id}.svs"),
            slide_id=row.slide_id,
            label=row.label,
            seed=seed,
        )
    with atomic_path(os.path.join(out_dir, "cohort.csv")) as tmp:
        sheet.to_csv(tmp, index=False)
    logger.info("Wrote demo cohort of %d slides to %s", n_slides, out_dir)
    return sheet


def write_demo_slide(path: str | os.PathLike, *, slide_id: str, label: str, seed: int = 0) -> None:
    """Write one demo slide (about 6000 x 4500 px, levels 1, 4, 16, 0.5 um/px).

    Size, tissue layout and texture placement depend on ``(slide_id, seed)`` only; the label
    only decides whether tumour regions (1-3 regions, 15-30 % of the tissue) are painted, so an
    ``"A"`` and a ``"B"`` slide with the same id share their tissue outline.

    Args:
        path: Output ``.svs`` path.
        slide_id: Slide id; seeds the slide's layout.
        label: One of :data:`LABELS`.
        seed: Cohort seed.
    """
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    rng = np.random.default_rng([seed, zlib.crc32(slide_id.encode())])
    map_width, map_height = int(rng.integers(176, 200)), int(rng.integers(132, 150))
    tissue_fraction = rng.uniform(0.3, 0.5)
    n_pieces = int(rng.integers(2, 5))
    tumour_fraction = rng.uniform(0.15, 0.3)
    n_tumour_regions = int(rng.integers(1, 4))
    slide_seed = int(rng.integers(2**31))
    label_map = random_tissue_map(
        (map_height, map_width),
        tissue_fraction=tissue_fraction,
        n_pieces=n_pieces,
        tumour_fraction=tumour_fraction if label == "B" else 0.0,
        n_tumour_regions=n_tumour_regions,
        rng=rng,
    )
    size = (map_width * _DEMO_MAP_SCALE, map_height * _DEMO_MAP_SCALE)
    write_synthetic_slide(path, label_map, level0_size=size, seed=slide_seed)


def random_tissue_map(
    shape: tuple[int, int],
    *,
    tissue_fraction: float,
    n_pieces: int,
    tumour_fraction: float = 0.0,
    n_tumour_regions: int = 1,
    rng: np.random.Generator,
) -> np.ndarray:
    """Return a label map of irregular tissue pieces, optionally with tumour regions inside.

    Pieces are noisy ellipses thresholded so that tissue covers ``tissue_fraction`` of the map
    (slightly less once specks are removed); tumour regions are noisy blobs inside the tissue
    covering ``tumour_fraction`` of it.

    Args:
        shape: ``(height, width)`` of the map.
        tissue_fraction: Fraction of the map covered by tissue, in (0, 1).
        n_pieces: Number of tissue pieces; a thin gap keeps neighbouring pieces apart.
        tumour_fraction: Fraction of the tissue that is tumour, in [0, 1).
        n_tumour_regions: Number of tumour regions.
        rng: Source of randomness.

    Returns:
        ``uint8`` array of ``shape`` with values :data:`BACKGROUND`, :data:`STROMA`,
        :data:`TUMOUR`.
    """
    if not 0.0 < tissue_fraction < 1.0:
        raise ValueError(f"tissue_fraction must be in (0, 1), got {tissue_fraction}")
    if not 0.0 <= tumour_fraction < 1.0:
        raise ValueError(f"tumour_fraction must be in [0, 1), got {tumour_fraction}")
    if n_pieces < 1 or n_tumour_regions < 1:
        raise ValueError("n_pieces and n_tumour_regions must be at least 1")
    height, width = shape
    total = tissue_fraction * height * width
    radius = math.sqrt(total / n_pieces / math.pi)
    interior = np.zeros(shape, dtype=bool)
    margin_y, margin_x = min(int(radius), (height - 1) // 2), min(int(radius), (width - 1) // 2)
    interior[margin_y : height - margin_y, margin_x : width - margin_x] = True
    centres = _spread_points(interior, n_pieces, rng)
    field = _blob_field(shape, centres, total, rng, separate=True)
    tissue = _drop_specks(field >= np.quantile(field, 1.0 - tissue_fraction))
    label_map = tissue.astype(np.uint8) * STROMA
    if tumour_fraction > 0.0:
        centres = _spread_points(tissue, n_tumour_regions, rng)
        field = _blob_field(shape, centres, tumour_fraction * tissue.sum(), rng)
        tumour = tissue & (field >= np.quantile(field[tissue], 1.0 - tumour_fraction))
        label_map[_drop_specks(tumour, min_share=0.05)] = TUMOUR
    return label_map


def _spread_points(
    allowed: np.ndarray, n: int, rng: np.random.Generator, tries: int = 64
) -> np.ndarray:
    """Pick ``n`` (x, y) pixels of the mask ``allowed``, as far apart as ``tries`` draws allow."""
    points = np.argwhere(allowed)[:, ::-1].astype(np.float64)
    draws = [points[rng.choice(len(points), size=n, replace=False)] for _ in range(tries)]
    return max(draws, key=_smallest_gap)


def _smallest_gap(points: np.ndarray) -> float:
    """Return the smallest distance between two of ``points`` (infinite for one point)."""
    gaps = np.linalg.norm(points[:, None] - points[None], axis=-1)
    return float((gaps + np.diag(np.full(len(points), np.inf))).min())


def _blob_field(
    shape: tuple[int, int],
    centres: np.ndarray,
    total_area: float,
    rng: np.random.Generator,
    *,
    separate: bool = False,
) -> np.ndarray:
    """Return a field that is high inside noisy ellipses around ``centres``.

    Ellipse areas split ``total_area`` at random; the field is ``1 - elliptical distance`` of the
    nearest ellipse plus smooth multi-scale noise, so its level sets are irregular outlines.
    With ``separate``, a strip where two ellipses are about equally near is set very low, so
    blobs never merge.
    """
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    areas = total_area * rng.dirichlet(np.full(len(centres), 4.0))
    best = np.full(shape, -np.inf, dtype=np.float32)
    second = best.copy()
    for (cx, cy), area in zip(centres, areas, strict=True):
        aspect, angle = rng.uniform(0.55, 1.0), rng.uniform(0.0, math.pi)
        major = math.sqrt(area / (math.pi * aspect))
        cos, sin = math.cos(angle), math.sin(angle)
        u = ((xs - cx) * cos + (ys - cy) * sin) / major
        v = (-(xs - cx) * sin + (ys - cy) * cos) / (major * aspect)
        bump = 1.0 - np.sqrt(u * u + v * v)
        second = np.maximum(second, np.minimum(best, bump))
        best = np.maximum(best, bump)
    scale = min(height, width)
    field = best.copy()
    for sigma, amplitude in ((scale / 12, 0.25), (scale / 40, 0.12)):
        field += amplitude * _smooth_noise(shape, sigma, rng)
    if separate:
        field[best - second < _PIECE_GAP] = -10.0
    return field


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Return Gaussian-smoothed white noise of unit standard deviation.

    Wide smoothing is done on a coarse grid (``sigma / 2`` pixels per cell, blurred by 2 cells)
    and upsampled bicubically, which looks the same and costs far less than a wide kernel.

    Args:
        shape: ``(height, width)``.
        sigma: Smoothing in pixels.
        rng: Source of randomness.
    """
    height, width = shape
    cell = max(1.0, sigma / 2.0) if sigma > 8.0 else 1.0
    coarse = (math.ceil(height / cell) + 1, math.ceil(width / cell) + 1)
    noise = rng.standard_normal(coarse).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma / cell)
    if cell > 1.0:
        noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = noise[:height, :width]
    return noise / max(float(noise.std()), 1e-6)


def _drop_specks(mask: np.ndarray, min_share: float = 0.02) -> np.ndarray:
    """Remove connected components smaller than ``min_share`` of the mask's area."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA]
    keep = areas >= min_share * mask.sum()
    keep[0] = False
    return keep[labels]


def write_synthetic_slide(
    path: str | os.PathLike,
    label_map: np.ndarray,
    *,
    level0_size: tuple[int, int],
    mpp: float = DEMO_MPP,
    downsamples: Sequence[int] = (1, 4, 16),
    seed: int = 0,
    ink_map: np.ndarray | None = None,
) -> None:
    """Write a pyramidal Aperio SVS slide painted from a small label map.

    Level 0 is streamed tile by tile (any size works, e.g. 60,000 x 40,000 px); the lower levels
    are box-filtered from the level-0 tiles while they stream, so all levels agree.

    Args:
        path: Output ``.svs`` path; written atomically.
        label_map: 2-D ``uint8`` map, 0 = background, 1 = stroma, 2 = tumour, spanning the whole
            slide (typically 1/32 of level 0); upsampled smoothly.
        level0_size: ``(width, height)`` of level 0 in pixels.
        mpp: Level-0 microns per pixel (``AppMag`` is ``10 / mpp``).
        downsamples: Level downsamples: starts at 1, each a multiple of the previous, the second
            a divisor of 256.
        seed: Seed of textures and of their placement.
        ink_map: Optional boolean map of ``label_map``'s shape: a blue-green pen stroke.
    """
    _check_inputs(label_map, ink_map, level0_size, downsamples)
    width, height = level0_size
    painter = _Painter(label_map, ink_map, level0_size, seed)
    bigtiff = width * height > _BIGTIFF_PIXELS
    logger.info(
        "Writing %s: %d x %d px, %d tiles, levels %s",
        path,
        width,
        height,
        painter.rows * painter.cols,
        tuple(downsamples),
    )
    reduced = _ReducedLevel(painter.rows, painter.cols, downsamples[1]) if downsamples[1:] else None
    level0_desc = (
        f"{_APERIO_HEADER}{width}x{height} [0,0 {width}x{height}] ({_TILE}x{_TILE}) "
        f"JPEG/RGB Q={_JPEG_QUALITY}|AppMag = {10.0 / mpp:g}|MPP = {mpp:g}"
    )
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
        _write_level(tif, painter.tiles(reduced), (width, height), level0_desc)
        if reduced is not None:
            for downsample, image in _pyramid(reduced.image, downsamples):
                size = (max(1, width // downsample), max(1, height // downsample))
                desc = f"{_APERIO_HEADER}{width}x{height} -> {size[0]}x{size[1]} - |"
                _write_level(tif, image[: size[1], : size[0]], size, desc)


def _pyramid(first: np.ndarray, downsamples: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(downsample, image)`` per reduced level, starting from the first reduced image.

    Images cover the padded tile grid of level 0 and are cropped by the caller.
    """
    image = first
    yield downsamples[1], image
    for previous, downsample in zip(downsamples[1:], downsamples[2:], strict=False):
        image = _box_reduce(image, downsample // previous)
        yield downsample, image


def _check_inputs(
    label_map: np.ndarray,
    ink_map: np.ndarray | None,
    level0_size: tuple[int, int],
    downsamples: Sequence[int],
) -> None:
    """Raise ``ValueError`` on arguments :func:`write_synthetic_slide` cannot honour."""
    if label_map.ndim != 2 or label_map.dtype != np.uint8 or label_map.max() > TUMOUR:
        raise ValueError("label_map must be a 2-D uint8 array with values 0, 1, 2")
    if ink_map is not None and ink_map.shape != label_map.shape:
        raise ValueError(f"ink_map shape {ink_map.shape} differs from {label_map.shape}")
    if min(level0_size) < 1:
        raise ValueError(f"level0_size must be positive, got {level0_size}")
    pairs = zip(downsamples, downsamples[1:], strict=False)
    valid = (
        len(downsamples) > 0
        and all(isinstance(d, int | np.integer) for d in downsamples)
        and downsamples[0] == 1
        and all(b >= 2 * a and b % a == 0 for a, b in pairs)
        and (len(downsamples) == 1 or _TILE % downsamples[1] == 0)
    )
    if not valid:
        raise ValueError(
            "downsamples must be integers starting at 1, each a multiple (>= 2) of the previous, "
            f"the second dividing {_TILE}; got {tuple(downsamples)}"
        )


def _write_level(
    tif: tifffile.TiffWriter,
    data: np.ndarray | Iterator[np.ndarray],
    size: tuple[int, int],
    description: str,
) -> None:
    """Write one pyramid level of ``size`` (width, height) as tiled JPEG, Aperio-described."""
    tif.write(
        data,
        shape=(size[1], size[0], 3),
        dtype=np.uint8,
        tile=(_TILE, _TILE),
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": _JPEG_QUALITY},
        description=description,
        subfiletype=0,
        metadata=None,
    )


def _box_reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Return ``image`` shrunk by an integer ``factor`` with box (area) averaging."""
    height, width = image.shape[:2]
    size = (max(1, width // factor), max(1, height // factor))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


class _ReducedLevel:
    """The first reduced pyramid level, accumulated from level-0 tiles as they stream."""

    def __init__(self, rows: int, cols: int, factor: int) -> None:
        self.factor = factor
        self.step = _TILE // factor
        self.image = np.zeros((rows * self.step, cols * self.step, 3), dtype=np.uint8)

    def add(self, row: int, col: int, tile: np.ndarray) -> None:
        """Store ``tile`` (level-0 tile at grid position ``row``, ``col``) box-reduced."""
        y, x = row * self.step, col * self.step
        self.image[y : y + self.step, x : x + self.step] = _box_reduce(tile, self.factor)


class _Painter:
    """Paints level-0 tiles of one slide from its label map and texture banks.

    The label map's channels (tissue, tumour, optional ink) are smoothed once at map resolution;
    per tile they are upsampled bilinearly and sharpened into weights, so outlines are smooth
    curves with edges about ``_EDGE_PX`` wide. Bilinear interpolation never leaves the range of
    the map pixels it reads, so tiles whose map footprint is uniform skip the upsampling.
    """

    def __init__(
        self,
        label_map: np.ndarray,
        ink_map: np.ndarray | None,
        level0_size: tuple[int, int],
        seed: int,
    ) -> None:
        width, height = level0_size
        self.rows, self.cols = -(-height // _TILE), -(-width // _TILE)
        rng = np.random.default_rng(seed)
        self.background = _background_tile(rng)
        self.banks = [_texture_bank(texture, rng) for texture in (_STROMA_TEXTURE, _TUMOUR_TEXTURE)]
        # per tile: bank index and orientation (flips / transpose) for each texture
        self.picks = rng.integers(0, _BANK_SIZE, size=(self.rows, self.cols, 2))
        self.orients = rng.integers(0, 8, size=(self.rows, self.cols, 2))
        channels = [label_map > BACKGROUND, label_map == TUMOUR]
        if ink_map is not None:
            channels.append(ink_map.astype(bool))
        fields = np.stack(channels, axis=-1).astype(np.float32)
        self.fields = cv2.GaussianBlur(fields, (0, 0), _FIELD_SIGMA).reshape(fields.shape)
        self.thresholds = np.array([0.5, 0.5, _INK_THRESHOLD][: len(channels)], dtype=np.float32)
        self.scale = (label_map.shape[1] / width, label_map.shape[0] / height)
        # gain that turns the smoothed 0..1 ramp into an edge about _EDGE_PX level-0 px wide
        slope = min(self.scale) / (math.sqrt(2 * math.pi) * _FIELD_SIGMA)
        self.gain = max(1.0, 1.0 / (slope * _EDGE_PX))
        self.spans_x = _footprints(self.cols, self.scale[0], label_map.shape[1])
        self.spans_y = _footprints(self.rows, self.scale[1], label_map.shape[0])

    def tiles(self, reduced: _ReducedLevel | None) -> Iterator[np.ndarray]:
        """Yield all level-0 tiles in row-major order, feeding ``reduced`` on the way."""
        with tqdm(total=self.rows * self.cols, unit="tile", leave=False, disable=None) as bar:
            for row in range(self.rows):
                for col in range(self.cols):
                    tile = self.tile(row, col)
                    if reduced is not None:
                        reduced.add(row, col, tile)
                    bar.update()
                    yield tile

    def tile(self, row: int, col: int) -> np.ndarray:
        """Return the ``_TILE x _TILE x 3`` uint8 tile at grid position ``row``, ``col``."""
        (y0, y1), (x0, x1) = self.spans_y[row], self.spans_x[col]
        footprint = self.fields[y0:y1, x0:x1].reshape(-1, self.fields.shape[-1])
        low = self._sharpen(footprint.min(axis=0))
        high = self._sharpen(footprint.max(axis=0))
        if len(high) < 3 or high[2] == 0.0:  # no ink on this tile
            if high[0] == 0.0:
                return self.background
            if low[0] == 1.0 and high[1] == 0.0:
                return self._texture(0, row, col)
            if low[0] == 1.0 and low[1] == 1.0:
                return self._texture(1, row, col)
        return self._blend(row, col)

    def _blend(self, row: int, col: int) -> np.ndarray:
        """Return a tile mixing background, stroma, tumour and ink by per-pixel weights."""
        weights = self._sharpen(self._upsample(row, col))
        tissue = weights[..., 0:1]
        tumour = np.minimum(weights[..., 1:2], tissue)
        mixed = (
            self.background * (1.0 - tissue)
            + self._texture(0, row, col) * (tissue - tumour)
            + self._texture(1, row, col) * tumour
        )
        if weights.shape[-1] > 2:
            mixed *= 1.0 - _INK_OPACITY * weights[..., 2:3] * (1.0 - _INK_RGB / 255.0)
        return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)

    def _sharpen(self, smooth: np.ndarray) -> np.ndarray:
        """Map smoothed channel values to weights in [0, 1] with a steep ramp at the threshold."""
        return np.clip((smooth - self.thresholds) * self.gain + 0.5, 0.0, 1.0)

    def _upsample(self, row: int, col: int) -> np.ndarray:
        """Return the smoothed channels over one tile, shape ``(_TILE, _TILE, channels)``."""
        sx, sy = self.scale
        x0, y0 = col * _TILE, row * _TILE
        affine = np.array(
            [[sx, 0.0, (x0 + 0.5) * sx - 0.5], [0.0, sy, (y0 + 0.5) * sy - 0.5]], dtype=np.float64
        )
        smooth = cv2.warpAffine(
            self.fields,
            affine,
            (_TILE, _TILE),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        return smooth.reshape(_TILE, _TILE, -1)

    def _texture(self, which: int, row: int, col: int) -> np.ndarray:
        """Return the bank tile of texture ``which`` (0 stroma, 1 tumour) placed at a tile."""
        tile = self.banks[which][self.picks[row, col, which]]
        orient = self.orients[row, col, which]
        if orient & 1:
            tile = tile[::-1]
        if orient & 2:
            tile = tile[:, ::-1]
        if orient & 4:
            tile = tile.transpose(1, 0, 2)
        return np.ascontiguousarray(tile)


def _footprints(n_tiles: int, scale: float, map_size: int) -> list[tuple[int, int]]:
    """Return, per tile along one axis, the slice of map pixels its bilinear upsampling reads."""
    spans = []
    for i in range(n_tiles):
        first = (i * _TILE + 0.5) * scale - 0.5
        last = ((i + 1) * _TILE - 0.5) * scale - 0.5
        start = min(max(math.floor(first), 0), map_size - 1)
        stop = min(max(math.floor(last) + 1, 0), map_size - 1) + 1
        spans.append((start, stop))
    return spans


def _background_tile(rng: np.random.Generator) -> np.ndarray:
    """Return a near-white glass tile with faint noise."""
    noise = rng.normal(0.0, 1.5, size=(_TILE, _TILE, 3))
    return np.clip(np.asarray(_BACKGROUND_RGB) + noise + 0.5, 0, 255).astype(np.uint8)


def _texture_bank(texture: _Texture, rng: np.random.Generator) -> np.ndarray:
    """Return ``_BANK_SIZE`` tiles of ``texture``, shape ``(bank, _TILE, _TILE, 3)``, uint8."""
    return np.stack([_texture_tile(texture, rng) for _ in range(_BANK_SIZE)])


def _texture_tile(texture: _Texture, rng: np.random.Generator) -> np.ndarray:
    """Paint one tile: eosin ground with wavy fibres and pale clefts, soft nuclei, noise."""
    size = _TILE + 2 * _PAD
    waves = _smooth_noise((size, size), 6.0, rng)[_PAD:-_PAD, _PAD:-_PAD, None]
    fibres = np.exp(-((waves / 0.25) ** 2))  # thin wavy lines along the noise's zero set
    ground = np.asarray(texture.ground, dtype=np.float32) * (1.0 - texture.fibre * fibres)
    ground += (255.0 - ground) * texture.clefts * np.clip(waves - 1.4, 0.0, 1.0)
    alpha = _nuclei_alpha(texture, rng)[..., None]
    image = ground * (1.0 - alpha) + np.asarray(texture.nucleus, dtype=np.float32) * alpha
    image += rng.normal(0.0, 3.0, size=image.shape)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def _nuclei_alpha(texture: _Texture, rng: np.random.Generator) -> np.ndarray:
    """Return the nuclei coverage of one tile in [0, 1], with soft, slightly blurred edges.

    Nuclei are drawn on a padded canvas so that those crossing the tile border are cut, as in a
    real tile, and the blur has no border effect.
    """
    size = _TILE + 2 * _PAD
    mask = np.zeros((size, size), dtype=np.uint8)
    n_nuclei = round(texture.n_nuclei * (size / _TILE) ** 2)
    for _ in range(n_nuclei):
        centre = rng.uniform(0, size, 2)
        minor = rng.uniform(*texture.radius)
        axes = (minor * rng.uniform(*texture.elongation), minor)
        angle = rng.uniform(0.0, 180.0)
        darkness = int(rng.uniform(185, 255))
        cv2.ellipse(
            mask,
            (tuple(int(c) for c in centre), tuple(float(a) for a in axes), angle),
            darkness,
            thickness=-1,
            lineType=cv2.LINE_AA,
        )
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 0.8)
    return alpha[_PAD:-_PAD, _PAD:-_PAD]

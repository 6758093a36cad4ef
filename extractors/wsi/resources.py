"""Cluster resources of the per-slide stages, estimated from a slide's header alone.

Runs in Snakemake's main process for every slide job, so it reads no more than the header:
the first TIFF page with tifffile (0.1 to 1 ms), OpenSlide for other formats.
"""

from __future__ import annotations

import os
from pathlib import Path

import openslide
import tifffile

from extractors.wsi.formats import TIFF_EXTENSIONS
from extractors.wsi.reader import READ_CHUNK
from extractors.wsi.tissue import QC_MAX_SIDE, TissueParams

#: Memory of the process before it reads anything (Python, numpy, OpenCV, OpenSlide), MB.
BASE_MB = 600
#: Copies of the thumbnail held at once by segmentation or tiling (RGB, HSV, masks, QC, JPEG).
THUMBNAIL_COPIES = 8
#: What a slide whose header cannot be read gets (its job fails with the reason anyway).
FALLBACK_MB = 4000
#: MPP assumed when sizing a job (0.25: a 40x scan; finer slides are rare, coarser ones smaller).
ASSUMED_MPP = 0.25


def level0_dimensions(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of level 0 from the file's header.

    Raises:
        OSError, ValueError or OpenSlideError: Not a readable slide.
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_EXTENSIONS:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return int(page.imagewidth), int(page.imagelength)
    with openslide.OpenSlide(str(path)) as slide:
        return slide.dimensions


def slide_stage_mem_mb(path: str | os.PathLike, seg_mpp: float = TissueParams.seg_mpp) -> int:
    """Memory (MB) that segmenting or tiling the slide at ``path`` needs, from its dimensions.

    Both stages hold a thumbnail of the whole slide at ``seg_mpp`` or at the QC picture's MPP
    (:data:`QC_MAX_SIDE` pixels a side), whichever is finer, and one chunk of
    :data:`READ_CHUNK` pixels read from the pyramid.
    """
    try:
        width, height = level0_dimensions(path)
    except (OSError, ValueError, openslide.OpenSlideError, tifffile.TiffFileError):
        return FALLBACK_MB
    scale = max(ASSUMED_MPP / seg_mpp, QC_MAX_SIDE / max(width, height, 1))
    pixels = width * height * min(1.0, scale) ** 2
    chunk_mb = 2 * READ_CHUNK * READ_CHUNK * 4 / 1e6
    return round(BASE_MB + chunk_mb + THUMBNAIL_COPIES * 3 * pixels / 1e6)

"""Read the cached whole-slide thumbnails that heatmaps are drawn on (no slide is opened)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib import image

from extractors.errors import FileFormatError


def read_thumbnail(path: str | Path) -> tuple[np.ndarray, float]:
    """An RGB uint8 thumbnail and its downsample (level-0 pixels per thumbnail pixel).

    Reads ``{slide}.jpg`` and ``{slide}.json`` as rule ``segment_tissue`` writes them.

    Raises:
        FileFormatError: Missing or unreadable; the message says to segment the slide again.
    """
    path = Path(path)
    try:
        rgb = np.asarray(image.imread(path))[..., :3]
        scale = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError, KeyError) as err:
        raise FileFormatError(
            f"{path}: no readable thumbnail and scale ({err}); segment the slide again "
            "(rule segment_tissue)."
        ) from err
    if rgb.dtype != np.uint8:
        rgb = np.round(rgb * 255).astype(np.uint8)
    return rgb, float(np.mean(scale["downsample"]))

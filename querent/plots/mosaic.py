"""A mosaic of patch pictures, highest-ranked first."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mosaic(images: Sequence[np.ndarray], *, columns: int = 4, gap: int = 4) -> np.ndarray:
    """Patches of one size laid row by row on a white sheet.

    Args:
        images: RGB uint8 arrays of one shape (s, s, 3).
        columns: Patches per row.
        gap: White pixels between patches.

    Returns:
        RGB uint8 array.

    Raises:
        ValueError: No image, or images of different shapes.
    """
    if not images:
        raise ValueError("a mosaic needs at least one image")
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise ValueError(f"mosaic images differ in shape: {sorted(shapes)}")
    height, width, _ = images[0].shape
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    sheet = np.full(
        (rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3), 255, np.uint8
    )
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        top, left = row * (height + gap), column * (width + gap)
        sheet[top : top + height, left : left + width] = image
    return sheet

"""Read the patches of a coords file, fast: neighbours come from one region read.

Patches are grouped into blocks of ``block_cells x block_cells`` lattice cells; each block is
one ``read_region`` call of exactly the pixels its patches cover, cut into patches and resized
straight into one channels-last uint8 array (no transposes, no per-patch arrays). A batch
reaches the encoder as a uint8 tensor of shape (n, 3, h, w) in channels-last memory, which the
encoder normalises in one pass. A :class:`PatchBlocks` dataset is safe for DataLoader worker
processes: each opens its own slide.

Axes: ``n`` patches, ``h``/``w`` rows/columns, ``c`` colour channels (RGB).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from extractors.errors import SlideError
from extractors.wsi.reader import Slide

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PatchGeometry:
    """How patches of a coords file are read and shaped for an encoder.

    Attributes:
        level: Pyramid level to read.
        downsample: That level's downsample.
        patch_size_level0: Patch side in level-0 pixels.
        step_level0: Lattice step in level-0 pixels.
        read_size: Patch side at ``level``.
        resize_size: Side the patch is resized to.
        crop_size: Side of the centred crop fed to the encoder (== resize_size: no crop).
    """

    level: int
    downsample: float
    patch_size_level0: int
    step_level0: int
    read_size: int
    resize_size: int
    crop_size: int


def resize_patch(patch: np.ndarray, out: np.ndarray, resize_size: int) -> None:
    """Resize an RGB patch into ``out`` (area for shrinking, cubic for enlarging), centre-cropped.

    Args:
        patch: uint8 (h, w, c), any strides (a view into a region is fine).
        out: uint8 (crop, crop, c), C-contiguous; written in place.
        resize_size: Side the patch is resized to before the centred crop of ``out``'s side.
    """
    crop_size = out.shape[0]
    if patch.shape[0] != resize_size or patch.shape[1] != resize_size:
        shrink = patch.shape[0] > resize_size
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
        if crop_size == resize_size:
            resized = cv2.resize(
                patch, (resize_size, resize_size), dst=out, interpolation=interpolation
            )
            if not np.shares_memory(resized, out):  # OpenCV declined ``dst``
                out[...] = resized
            return
        patch = cv2.resize(patch, (resize_size, resize_size), interpolation=interpolation)
    start = (resize_size - crop_size) // 2
    out[...] = patch[start : start + crop_size, start : start + crop_size]


def prepare_patch(patch: np.ndarray, resize_size: int, crop_size: int) -> np.ndarray:
    """Resize an RGB patch (area for shrinking, cubic for enlarging) and centre-crop it.

    Returns:
        uint8 (3, crop_size, crop_size), channels first.
    """
    out = np.empty((crop_size, crop_size, 3), np.uint8)
    resize_patch(patch, out, resize_size)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def group_into_blocks(coords: np.ndarray, step_level0: int, block_cells: int) -> list[np.ndarray]:
    """Indices of ``coords`` grouped by blocks of ``block_cells`` x ``block_cells`` lattice cells.

    Blocks are ordered row-major, and indices within a block ascend, so the order is stable.
    """
    if len(coords) == 0:
        return []
    cells = coords // step_level0 // block_cells
    keys = cells[:, 1] * (int(cells[:, 0].max()) + 1) + cells[:, 0]
    order = np.lexsort((np.arange(len(coords)), keys))
    boundaries = np.flatnonzero(np.diff(keys[order])) + 1
    return np.split(order, boundaries)


class PatchBlocks(Dataset):
    """Blocks of patches of one slide, each read with one region read.

    Args:
        slide_path: The slide file.
        slide_kwargs: Keyword arguments of :class:`Slide` (slide_id, mpp_override, ...).
        coords: (N, 2) level-0 top-left coordinates.
        geometry: How to read and shape patches.
        block_cells: Lattice cells per block side.
        skip_errors: On a region that fails to decode twice, skip its patches (True) or raise.
    """

    def __init__(
        self,
        slide_path: str | Path,
        slide_kwargs: dict,
        coords: np.ndarray,
        geometry: PatchGeometry,
        *,
        block_cells: int = 4,
        skip_errors: bool = False,
    ) -> None:
        self.slide_path = Path(slide_path)
        self.slide_kwargs = slide_kwargs
        self.coords = coords
        self.geometry = geometry
        self.blocks = group_into_blocks(coords, geometry.step_level0, block_cells)
        self.skip_errors = skip_errors
        self._slide: Slide | None = None

    def __len__(self) -> int:
        return len(self.blocks)

    def _open(self) -> Slide:
        if self._slide is None:
            self._slide = Slide(self.slide_path, **self.slide_kwargs)
        return self._slide

    def _offsets(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 corner of a block and its patches' (left, top) offsets at the level."""
        corner = self.coords[indices].min(axis=0)
        offsets = np.rint((self.coords[indices] - corner) / self.geometry.downsample)
        return corner, offsets.astype(np.int64)

    def _read_block(self, indices: np.ndarray) -> np.ndarray:
        corner, offsets = self._offsets(indices)
        # Exactly the pixels the patches cover: a spare row or column would decode one more
        # row or column of JPEG tiles whenever the block ends on a tile boundary.
        width, height = (int(side) + self.geometry.read_size for side in offsets.max(axis=0))
        return self._open().read_region(
            (int(corner[0]), int(corner[1])), self.geometry.level, (width, height)
        )

    def __getitem__(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """One block: (indices into coords, uint8 patches (n, 3, crop, crop)).

        The patches are a channels-last view: ``patches.transpose(0, 2, 3, 1)`` is a
        C-contiguous (n, crop, crop, 3) array. A failed read is retried once with a fresh
        slide handle; then it raises, or with ``skip_errors`` returns the block's indices with
        no patches (n = 0).
        """
        indices = self.blocks[item]
        g = self.geometry
        try:
            region = self._read_block(indices)
        except SlideError as first:
            logger.warning("retrying after a failed read: %s", first)
            self._slide = None
            try:
                region = self._read_block(indices)
            except SlideError as second:
                if not self.skip_errors:
                    raise
                logger.warning("skipping %d patches: %s", len(indices), second)
                return indices, np.empty((0, 3, g.crop_size, g.crop_size), np.uint8)
        _, offsets = self._offsets(indices)
        patches = np.empty((len(indices), g.crop_size, g.crop_size, 3), np.uint8)  # (n, h, w, c)
        for out, (left, top) in zip(patches, offsets, strict=True):
            patch = region[top : top + g.read_size, left : left + g.read_size]
            resize_patch(patch, out, g.resize_size)
        return indices, patches.transpose(0, 3, 1, 2)  # (n, c, h, w), channels-last memory


def collate_blocks(items: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, ...]:
    """Concatenate blocks: (indices, patches, failed indices) as tensors.

    ``patches`` is uint8 (n, 3, h, w) in channels-last memory (one copy of the uint8 pixels,
    none if the batch is one block).
    """
    kept = [(i, p) for i, p in items if len(p)]
    failed = [i for i, p in items if not len(p)]
    indices = np.concatenate([i for i, _ in kept]) if kept else np.empty(0, np.int64)
    if kept:
        channels_last = [p.transpose(0, 2, 3, 1) for _, p in kept]  # (n, h, w, c) views
        if len(channels_last) == 1 and channels_last[0].flags.c_contiguous:
            pixels = torch.from_numpy(channels_last[0])
        else:
            pixels = torch.from_numpy(np.concatenate(channels_last))
        patches = pixels.permute(0, 3, 1, 2)  # (n, c, h, w)
    else:
        patches = torch.empty((0, 3, 1, 1), dtype=torch.uint8)
    failed_indices = np.concatenate(failed) if failed else np.empty(0, np.int64)
    return (
        torch.from_numpy(indices.astype(np.int64)),
        patches,
        torch.from_numpy(failed_indices.astype(np.int64)),
    )


def read_patch_images(slide: Slide, coords: np.ndarray, coords_attrs: dict) -> list[np.ndarray]:
    """Patches of ``coords`` as seen at the tiling resolution, for pictures (not for encoders).

    Each is read at the coords file's level and resized to its ``patch_size``.

    Returns:
        RGB uint8 arrays (patch_size, patch_size, 3), in the order of ``coords``.
    """
    level = int(coords_attrs["patch_level"])
    read_size = int(coords_attrs["read_size"])
    side = int(coords_attrs["patch_size"])
    images = []
    for x, y in np.asarray(coords, np.int64).reshape(-1, 2):
        patch = slide.read_region((int(x), int(y)), level, (read_size, read_size))
        images.append(prepare_patch(patch, side, side).transpose(1, 2, 0))
    return images

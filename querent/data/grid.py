"""Region grids: group the patches of a slide into square regions of lattice cells.

Patches lie on one lattice (level-0 step ``step``); a region is ``region_size x region_size``
cells, so the region of a patch is integer division. Only regions with patches exist.

Axes: ``n`` patches, ``r`` regions, ``s = region_size**2`` slots per region.

Grids are cheap (one sort, milliseconds for 100k patches), so the data loader builds them when a
slide is loaded: region size is a model setting, and a file per region size would only multiply
the cache. ``querent grid`` and rule ``build_region_grid`` write the same structure for
inspection and for other tools (:mod:`querent.data.grid_files`). Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RegionGrid:
    """Patch-to-region assignment of one slide.

    Attributes:
        region_size: Lattice cells per region side.
        region_of_patch: (n,) region index of every patch.
        region_cells: (r, 2) (column, row) of every region on the region lattice, row-major.
        offsets: (r + 1,) members of region ``i`` are ``members[offsets[i]:offsets[i + 1]]``.
        members: (n,) patch indices grouped by region, ascending within a region.
        slots: (r, s) patch index at each cell of the region (row-major inside the region),
            -1 where the cell has no patch.
    """

    region_size: int
    region_of_patch: np.ndarray
    region_cells: np.ndarray
    offsets: np.ndarray
    members: np.ndarray
    slots: np.ndarray

    @property
    def n_regions(self) -> int:
        """Number of regions that hold at least one patch."""
        return len(self.region_cells)

    @property
    def mask(self) -> np.ndarray:
        """(r, s) True where a slot holds a patch."""
        return self.slots >= 0

    def region_members(self, region: int) -> np.ndarray:
        """Patch indices of one region."""
        return self.members[self.offsets[region] : self.offsets[region + 1]]


def lattice_cells(coords: np.ndarray, step: int) -> np.ndarray:
    """(n, 2) integer (column, row) lattice cells of level-0 coordinates.

    Raises:
        ValueError: A coordinate is not on the lattice of ``step``.
    """
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if step < 1:
        raise ValueError(f"lattice step must be >= 1, got {step}")
    off = coords % step != 0
    if off.any():
        bad = coords[off.any(axis=1)][0].tolist()
        raise ValueError(
            f"coordinate {bad} is not on the lattice of step {step}; grids need coords from one "
            "lattice anchored at (0, 0) (tile the slide with querent)."
        )
    return coords // step


def build_grid(coords: np.ndarray, step: int, region_size: int) -> RegionGrid:
    """Group patches into regions of ``region_size x region_size`` lattice cells.

    Args:
        coords: (n, 2) level-0 top-left (x, y) on a lattice anchored at (0, 0).
        step: Lattice step in level-0 pixels (``step_level0`` of the coords file).
        region_size: Cells per region side (e.g. 4: 16 patches per full region).

    Raises:
        ValueError: Off-lattice coordinates, duplicate patches or a bad region size.
    """
    if region_size < 1:
        raise ValueError(f"region_size must be >= 1, got {region_size}")
    cells = lattice_cells(coords, step)
    n = len(cells)
    s = region_size * region_size
    if n == 0:
        empty = np.empty(0, np.int64)
        return RegionGrid(
            region_size,
            empty,
            np.empty((0, 2), np.int64),
            np.zeros(1, np.int64),
            empty,
            np.empty((0, s), np.int64),
        )
    region_xy = cells // region_size
    # Row-major keys of the regions shifted to start at 0, so any integer cells (negative ones
    # of a centred or augmented lattice too) give unique keys.
    origin = region_xy.min(axis=0)
    shifted = region_xy - origin
    width = int(shifted[:, 0].max()) + 1
    keys = shifted[:, 1] * width + shifted[:, 0]
    unique_keys, region_of_patch = np.unique(keys, return_inverse=True)
    region_cells = np.stack([unique_keys % width, unique_keys // width], axis=1) + origin
    members = np.argsort(region_of_patch, kind="stable")
    counts = np.bincount(region_of_patch, minlength=len(unique_keys))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    local = cells % region_size
    slot = local[:, 1] * region_size + local[:, 0]
    slots = np.full((len(unique_keys), s), -1, np.int64)
    if (np.bincount(region_of_patch * s + slot, minlength=len(unique_keys) * s) > 1).any():
        raise ValueError("two patches share one lattice cell; the coords hold duplicates")
    slots[region_of_patch, slot] = np.arange(n)
    return RegionGrid(
        region_size,
        region_of_patch.astype(np.int64),
        region_cells.astype(np.int64),
        offsets.astype(np.int64),
        members.astype(np.int64),
        slots,
    )


def region_neighbours(region_cells: np.ndarray) -> np.ndarray:
    """(r, 9) each region followed by its 8 adjacent regions, -1 where a neighbour is absent.

    Args:
        region_cells: (r, 2) (column, row) of the regions of a grid.
    """
    region_cells = np.asarray(region_cells, np.int64).reshape(-1, 2)
    offsets = np.array([(0, 0)] + [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dx or dy])
    if not len(region_cells):
        return np.empty((0, len(offsets)), np.int64)
    origin = region_cells.min(axis=0) - 1
    width = int((region_cells[:, 0] - origin[0]).max()) + 2
    keys = (region_cells[:, 1] - origin[1]) * width + region_cells[:, 0] - origin[0]
    order = np.argsort(keys)
    around = region_cells[:, None, :] + offsets  # (r, 9, 2)
    wanted = (around[..., 1] - origin[1]) * width + around[..., 0] - origin[0]
    at = np.searchsorted(keys[order], wanted).clip(max=len(keys) - 1)
    found = keys[order][at] == wanted
    return np.where(found, order[at], -1)

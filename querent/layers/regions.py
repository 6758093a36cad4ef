"""Patches laid out by region, and per-region summaries (min, max, mean).

Axes: ``n`` patches, ``r`` regions, ``s`` slots per region (region_size²), ``...`` any trailing
feature axes (e.g. heads and head features).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from querent.data.grid import RegionGrid, region_neighbours


@dataclass(frozen=True)
class RegionLayout:
    """A :class:`~querent.data.grid.RegionGrid` as tensors on the model's device.

    Attributes:
        slots: (r, s) patch index per region slot, -1 where the cell has no patch.
        valid: (r, s) True where a slot holds a patch.
        region_of_patch: (n,) region of every patch.
        patch_slot: (n,) flat slot ``region * s + slot`` of every patch.
        neighbours: (r, 9) each region and its 8 adjacent regions, -1 where absent.
        region_cells: (r, 2) (column, row) of every region on the region lattice, or None
            where unknown (groups of adjacent regions, :mod:`querent.layers.pruning`, need it).
    """

    slots: torch.Tensor
    valid: torch.Tensor
    region_of_patch: torch.Tensor
    patch_slot: torch.Tensor
    neighbours: torch.Tensor
    region_cells: torch.Tensor | None = None

    @classmethod
    def from_grid(cls, grid: RegionGrid, device: torch.device | str | None = None) -> RegionLayout:
        """Tensors of ``grid`` on ``device``."""
        slots = torch.as_tensor(grid.slots, dtype=torch.long, device=device)
        valid = slots >= 0
        flat = valid.flatten().nonzero().squeeze(-1)
        patch_slot = torch.empty_like(flat)
        patch_slot[slots.flatten()[flat]] = flat
        region_of_patch = torch.as_tensor(grid.region_of_patch, dtype=torch.long, device=device)
        neighbours = torch.as_tensor(
            region_neighbours(grid.region_cells), dtype=torch.long, device=device
        )
        region_cells = torch.as_tensor(grid.region_cells, dtype=torch.long, device=device)
        return cls(slots, valid, region_of_patch, patch_slot, neighbours, region_cells)

    @property
    def n_regions(self) -> int:
        """Regions with at least one patch."""
        return self.slots.shape[0]


def regions_by_area(layout: RegionLayout) -> torch.Tensor:
    """(r,) every region, in Z-order of its lattice cell (index order where cells are unknown).

    Consecutive regions then fill compact squares (2 x 2 regions, 4 x 4, ...) rather than rows.
    """
    regions = torch.arange(layout.n_regions, device=layout.slots.device)
    if layout.region_cells is None or layout.n_regions == 0:
        return regions
    cells = layout.region_cells - layout.region_cells.min(dim=0).values
    code = torch.zeros_like(regions)
    for bit in range(max(int(cells.max()).bit_length(), 1)):
        code |= ((cells[:, 0] >> bit) & 1) << (2 * bit)
        code |= ((cells[:, 1] >> bit) & 1) << (2 * bit + 1)
    return torch.argsort(code)


def patches_by_area(layout: RegionLayout) -> torch.Tensor:
    """(n,) every patch, region by region, the regions in :func:`regions_by_area` order.

    Consecutive patches then fill compact squares of regions rather than rows.
    """
    regions = regions_by_area(layout)
    return layout.slots[regions][layout.valid[regions]]


def to_regions(x: torch.Tensor, layout: RegionLayout) -> torch.Tensor:
    """(n, ...) per patch -> (r, s, ...) per region slot; empty slots hold patch 0 (mask them)."""
    slots = layout.slots.clamp(min=0)
    return x.index_select(0, slots.flatten()).view(*slots.shape, *x.shape[1:])


def from_regions(x: torch.Tensor, layout: RegionLayout) -> torch.Tensor:
    """(r, s, ...) per region slot -> (n, ...) per patch; empty slots are dropped."""
    return x.flatten(0, 1).index_select(0, layout.patch_slot)


def _expand(valid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return valid.view(*valid.shape, *([1] * (x.ndim - 2)))


def region_min_max(x: torch.Tensor, layout: RegionLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise (min, max) over each region's patches: (n, ...) -> two (r, ...)."""
    grouped = to_regions(x, layout)
    valid = _expand(layout.valid, grouped)
    low = grouped.masked_fill(~valid, math.inf).amin(dim=1)
    high = grouped.masked_fill(~valid, -math.inf).amax(dim=1)
    return low, high


def region_mean(x: torch.Tensor, layout: RegionLayout) -> torch.Tensor:
    """Mean over each region's patches: (n, ...) -> (r, ...)."""
    grouped = to_regions(x, layout)
    valid = _expand(layout.valid, grouped)
    total = grouped.masked_fill(~valid, 0).sum(dim=1)
    return total / valid.sum(dim=1).to(x.dtype)


#: Region summaries a scorer can read: the paper's min-max and its ablations.
SUMMARIES = ("minmax", "min", "max", "mean", "meanstd")


def region_summary(
    x: torch.Tensor, layout: RegionLayout, kind: str = "minmax"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A (low, high) pair of vectors per region: (n, ...) -> two (r, ...).

    ``minmax``: element-wise min and max (the paper's); ``min`` / ``max``: that one twice;
    ``mean``: the mean twice; ``meanstd``: mean -+ standard deviation.
    """
    if kind not in SUMMARIES:
        raise ValueError(f"unknown region summary {kind!r}; choose one of: {SUMMARIES}")
    if kind in ("minmax", "min", "max"):
        low, high = region_min_max(x, layout)
        return {"minmax": (low, high), "min": (low, low), "max": (high, high)}[kind]
    mean = region_mean(x, layout)
    if kind == "mean":
        return mean, mean
    spread = (region_mean(x * x, layout) - mean * mean).clamp(min=0).sqrt()
    return mean - spread, mean + spread

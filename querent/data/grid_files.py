"""Grid files: the region grid of one slide, built from its coords or features file.

Models build grids themselves when a slide is loaded; these files serve inspection and other
tools. Patch indices in the grid are rows of the source file's ``coords`` dataset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import h5py

from extractors.errors import FileFormatError
from extractors.io import atomic_path, lattice_step, read_coords
from querent.data.grid import RegionGrid, build_grid

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GridSummary:
    """What one grid file holds.

    Attributes:
        slide: Slide name (the source's ``name`` attribute, else its file name).
        n_patches: Patches of the slide.
        n_regions: Regions that hold at least one patch.
        mean_fill: Mean share of a region's slots that hold a patch (0 for an empty slide).
    """

    slide: str
    n_patches: int
    n_regions: int
    mean_fill: float


def grid_of_file(source: str | Path, region_size: int) -> tuple[RegionGrid, dict]:
    """Build the grid of a coords or features file.

    Returns:
        The grid and the attributes a grid file records: ``slide``, ``step_level0``,
        ``source`` and, where the source has them, ``patch_size_level0`` and
        ``coords_params_hash``.

    Raises:
        ValueError: No readable ``coords`` dataset, an unknown lattice, or coords off it; the
            message names the file.
    """
    coords, attrs = read_coords(source)
    step = lattice_step(attrs, coords, source)
    try:
        grid = build_grid(coords, step, region_size)
    except ValueError as err:
        raise FileFormatError(f"{source}: {err}") from err
    record = {
        "slide": str(attrs.get("name", Path(source).stem)),
        "step_level0": step,
        "source": str(source),
    }
    if "patch_size_level0" in attrs:
        record["patch_size_level0"] = int(attrs["patch_size_level0"])
    if "params_hash" in attrs:
        record["coords_params_hash"] = str(attrs["params_hash"])
    return grid, record


def write_slide_grid(source: str | Path, out: str | Path, region_size: int) -> GridSummary:
    """Build the grid of a coords or features file and write it to ``out`` (atomic).

    Args:
        source: Coords file (``querent tile``) or features file (``querent extract``).
        out: Grid HDF5 to write (see :func:`querent.data.grid.write_grid`).
        region_size: Lattice cells per region side.

    Raises:
        ValueError: See :func:`grid_of_file`.
    """
    grid, attrs = grid_of_file(source, region_size)
    write_grid(out, grid, **attrs)
    n_patches = len(grid.region_of_patch)
    slots = grid.n_regions * region_size**2
    summary = GridSummary(
        attrs["slide"], n_patches, grid.n_regions, n_patches / slots if slots else 0.0
    )
    logger.info(
        "%s: %d patches in %d regions of %dx%d cells (mean fill %.2f) -> %s",
        summary.slide,
        summary.n_patches,
        summary.n_regions,
        region_size,
        region_size,
        summary.mean_fill,
        out,
    )
    return summary


def write_grid(path: str | Path, grid: RegionGrid, **attrs: object) -> None:
    """Write a grid to HDF5 (atomic); ``attrs`` (e.g. slide name, step) go on the file."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        for name in ("region_of_patch", "region_cells", "offsets", "members", "slots"):
            h5.create_dataset(name, data=getattr(grid, name))
        h5.attrs.update({"region_size": grid.region_size, **attrs})


def read_grid(path: str | Path) -> RegionGrid:
    """Read a grid written by :func:`write_grid`."""
    with h5py.File(path, "r") as h5:
        return RegionGrid(
            int(h5.attrs["region_size"]),
            *(
                h5[name][:]
                for name in ("region_of_patch", "region_cells", "offsets", "members", "slots")
            ),
        )

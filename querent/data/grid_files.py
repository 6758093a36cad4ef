"""Grid files: the region grid of one slide, built from its coords or features file.

Models build grids themselves when a slide is loaded; these files serve inspection and other
tools. Patch indices in the grid are rows of the source file's ``coords`` dataset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from extractors.wsi.tiling import read_coords
from querent.data.grid import RegionGrid, build_grid, write_grid

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


def lattice_step(attrs: dict, source: str | Path) -> int:
    """Level-0 lattice step of a coords file's attributes.

    Files from other tools (CLAM, TRIDENT) lack ``step_level0``; without overlap their step is
    the level-0 patch size.

    Raises:
        ValueError: The step cannot be told from the attributes.
    """
    if "step_level0" in attrs:
        return int(attrs["step_level0"])
    if "patch_size_level0" in attrs and int(attrs.get("overlap", 0)) == 0:
        return int(attrs["patch_size_level0"])
    raise ValueError(
        f"{source}: its coords carry neither step_level0 nor patch_size_level0 without overlap, "
        "so the patch lattice is unknown; tile the slide with `querent tile`."
    )


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
    step = lattice_step(attrs, source)
    try:
        grid = build_grid(coords, step, region_size)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from err
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

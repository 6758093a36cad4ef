"""Case bags (``cohort.bag: case``): every slide of a case in one bag, the slides kept apart.

A case bag's files are a tuple, one per slide in slide-id order (each file's stem is its slide
id, as the workflow names feature files); a slide bag's file is a single path. The bag cohort has
one row per case whose ``slide_id`` is the case id, so tasks, splits by case and case-level
metrics read cases as they read slides. Pure numpy and pandas.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from querent.data.cohort import Cohort

#: A bag's feature file, or the files of a case bag's slides (a tuple, in slide-id order).
BagFiles = Path | tuple[Path, ...]


def bag_paths(files: BagFiles) -> tuple[Path, ...]:
    """The feature files of one bag, as a tuple."""
    return tuple(map(Path, files)) if isinstance(files, tuple) else (Path(files),)


def case_bags(
    cohort: Cohort, files: Mapping[str, Path]
) -> tuple[Cohort, dict[str, tuple[Path, ...]]]:
    """The cohort's cases as bags: one row per case, and each case's slide files.

    The bag cohort's ``slide_id`` is the case id, so that targets, splits by case and
    case-level metrics read it as they read slides; its other columns are the case's first
    slide's (the sheet checks make the targets of a case's slides agree).

    Args:
        cohort: One row per slide.
        files: Slide id -> feature file, for every slide of ``cohort``.

    Returns:
        The bag cohort and case id -> its slides' files in slide-id order (file stems are the
        slide ids).
    """
    table = cohort.table.sort_values("slide_id").drop_duplicates("case_id")
    table = table.assign(slide_id=table["case_id"]).sort_values("slide_id").reset_index(drop=True)
    slides = cohort.table.sort_values("slide_id").groupby("case_id", sort=True)["slide_id"]
    bags = {case: tuple(Path(files[s]) for s in ids) for case, ids in slides}
    return dataclasses.replace(cohort, table=table), bags


def bag_mode(files: Mapping[str, BagFiles]) -> str:
    """``case`` where the bags are cases (tuples of files), else ``slide``."""
    return "case" if any(isinstance(value, tuple) for value in files.values()) else "slide"


def slide_files(files: Mapping[str, BagFiles]) -> dict[str, Path]:
    """Slide id -> feature file of every slide of ``files``' bags (a case bag's: by file stem)."""
    out = {}
    for bag, value in files.items():
        if isinstance(value, tuple):
            out.update({path.stem: path for path in value})
        else:
            out[bag] = Path(value)
    return out


def place_slides(cells: np.ndarray, slide_of_patch: np.ndarray, region_size: int) -> np.ndarray:
    """The cells of a case bag's slides set side by side along x, apart.

    The first slide stays; each next one moves right by a multiple of ``region_size`` (so its
    own regions are those of its slide bag) until the empty columns between it and the one
    before number at least the longest side of any of the bag's slides plus two regions. No
    region, nor a region's 8 neighbours, then holds patches of two slides, and distance-biased
    attention sees two slides at least as far apart as the longest side of any of them.

    Args:
        cells: (n, 2) lattice cells, each slide's on its own lattice.
        slide_of_patch: (n,) index of every patch's slide (0, 1, ...).
        region_size: Region side of the model's grid (1 without one).
    """
    present = np.unique(slide_of_patch)
    if len(present) < 2:
        return cells
    boxes = [cells[slide_of_patch == i] for i in present]
    longest = max(int((box.max(axis=0) - box.min(axis=0)).max()) + 1 for box in boxes)
    gap = longest + 2 * region_size
    placed = cells.copy()
    right = None
    for i, box in zip(present, boxes, strict=True):
        if right is not None:
            shift = -(-(right + gap + 1 - int(box[:, 0].min())) // region_size) * region_size
            placed[slide_of_patch == i, 0] += shift
        right = int(placed[slide_of_patch == i, 0].max())
    return placed


def case_slides(files: Mapping[str, BagFiles], bag_ids: list[str]) -> dict[str, list[str]] | None:
    """Each case bag of ``bag_ids`` and its slides (resume signatures); None for slide bags."""
    if bag_mode(files) == "slide":
        return None
    return {bag: [path.stem for path in bag_paths(files[bag])] for bag in bag_ids}


def attention_entries(
    bag_id: str,
    files: BagFiles,
    arrays: Mapping[str, np.ndarray | None],
    slide_of_patch: np.ndarray,
    region_size: int | None,
) -> dict[str, dict[str, object]]:
    """The attention.h5 entries of one whole bag: its own, or a case bag's one per slide.

    A case bag's per-patch arrays (``attention`` (n,), ``region_of_patch`` (n,), ``selected``
    (h, n, k)) are cut to each slide's patches, in the order of its file's rows; its regions are
    numbered within the slide, and picks of another slide's regions become -1 (no region of this
    slide). Each entry names its slide's feature file and, as ``bag``, the case.

    Args:
        bag_id: The bag (slide or case).
        files: The bag's feature file, or a case bag's files.
        arrays: The model's per-patch outputs (None where it has none).
        slide_of_patch: (n,) index into ``files`` of every patch's slide.
        region_size: The model's region size (None: no regions).
    """
    if not isinstance(files, tuple):
        return {bag_id: {**arrays, "features": str(files), "region_size": region_size}}
    regions, selected = arrays.get("region_of_patch"), arrays.get("selected")
    entries = {}
    for i, path in enumerate(files):
        mine = slide_of_patch == i
        entry = {"attention": arrays["attention"][mine], "features": str(path)}
        entry |= {"region_size": region_size, "bag": bag_id}
        if regions is not None:
            kept, local = np.unique(regions[mine], return_inverse=True)
            entry["region_of_patch"] = local.reshape(-1)
            if selected is not None:
                renumber = np.full(int(regions.max()) + 1, -1, np.int64)
                renumber[kept] = np.arange(len(kept))
                picks = selected[:, mine]
                entry["selected"] = np.where(picks >= 0, renumber[picks.clip(min=0)], -1)
        entries[Path(path).stem] = entry
    return entries

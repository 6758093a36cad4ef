"""Bags: patch features, lattice cells and region grid of a slide or a case, from feature files.

A bag is read whole from its HDF5 file each time it is needed (or once, when the cohort fits in
memory), optionally cut to a random subset of ``max_patches`` rows seeded by (seed, epoch,
slide), so the subset does not depend on the number of loader workers or on resuming. The
region grid is built here, in the loader workers, so the model never waits on it.

A case bag (``cohort.bag: case``) holds the patches of all the slides of a case: its files are a
tuple, one per slide in slide-id order, and :func:`place_slides` sets the slides side by side on
one lattice so that no region or neighbourhood spans two of them.

Axes: ``n`` patches, ``d`` feature width.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from extractors.errors import CohortError, FileFormatError
from extractors.io import feature_shape, lattice_step, read_coords, read_features
from querent.data.case_bags import BagFiles, bag_paths, place_slides
from querent.data.cohort import format_items
from querent.data.grid import RegionGrid, build_grid

logger = logging.getLogger(__name__)

#: Cohorts whose features take less than this many bytes are held in memory by default.
IN_MEMORY_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Bag:
    """One slide, or one case, as a model sees it.

    Attributes:
        slide_id: The bag: the slide, or the case of a case bag.
        features: (n, d) float32; None where the consumer reads them (``read_features``).
        cells: (n, 2) int64 lattice cells (column, row); a case bag's slides side by side.
        rows: (n,) rows of the feature file (of its slide) these patches come from.
        grid: Region grid of the patches (models with regions), else None.
        slides: The slides of the bag, in order (a slide bag: its slide).
        slide_of_patch: (n,) index into ``slides`` of every patch's slide.
    """

    slide_id: str
    features: torch.Tensor | None
    cells: torch.Tensor
    rows: torch.Tensor
    grid: RegionGrid | None
    slides: tuple[str, ...]
    slide_of_patch: torch.Tensor


def lattice_cells_of(coords: np.ndarray, step: int, source: str | Path) -> np.ndarray:
    """(n, 2) lattice cells of level-0 coordinates.

    Our coordinates lie on a lattice anchored at (0, 0); CLAM's start at each tissue piece's
    corner, so where coordinates are off the (0, 0) lattice they are taken relative to their
    minimum (and rounded to the nearest cell, which is logged).
    """
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    if (coords % step == 0).all():
        return coords // step
    shifted = coords - coords.min(axis=0)
    cells = np.rint(shifted / step).astype(np.int64)
    if (cells * step != shifted).any():
        logger.warning("%s: coordinates off one lattice; rounded to cells of %d px", source, step)
    return cells


def read_bag_arrays(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, d) float32, cells (n, 2) int64) of one feature file."""
    features, coords, coords_attrs, _ = read_features(path)
    if features.ndim != 2 or len(features) != len(coords):
        raise FileFormatError(
            f"{path}: `features` {features.shape} and `coords` {coords.shape} do not align; "
            "extract the slide again."
        )
    step = lattice_step(coords_attrs, coords, path)
    return features.astype(np.float32, copy=False), lattice_cells_of(coords, step, path)


def read_bag_cells(path: str | Path) -> tuple[int, np.ndarray]:
    """(patches, cells (n, 2) int64) of one feature file, without reading its features."""
    n, _ = feature_shape(path)
    coords, coords_attrs = read_coords(path)
    if len(coords) != n:
        raise FileFormatError(
            f"{path}: `features` ({n} rows) and `coords` {coords.shape} do not align; "
            "extract the slide again."
        )
    return n, lattice_cells_of(coords, lattice_step(coords_attrs, coords, path), path)


def inspect_feature_files(files: Mapping[str, Path]) -> dict[str, tuple[int, str | None]]:
    """Each slide's feature width and ``encoder`` attribute (None where absent).

    Reads each file once; files of different widths or encoders are fine here (a deployed
    model checks each file against itself).

    Raises:
        CohortError: Empty bags or NaN / Inf values; the message lists the slides and says
            what to do.
    """
    found, problems = _inspect(files)
    if problems:
        raise CohortError("; ".join(problems))
    return found


def check_feature_files(files: Mapping[str, Path]) -> tuple[int, str | None]:
    """Check that every slide's features can train one model.

    Returns:
        The feature width and the files' ``encoder`` attribute (None where absent).

    Raises:
        CohortError: Files of different widths or encoders, empty bags, or NaN / Inf values;
            the message lists the slides and says what to do.
    """
    found, read_problems = _inspect(files)
    widths: dict[int, list[str]] = {}
    encoders: dict[str, list[str]] = {}
    for slide_id, (width, encoder) in found.items():
        widths.setdefault(width, []).append(slide_id)
        encoders.setdefault(encoder or "no encoder attribute", []).append(slide_id)
    problems = []
    if len(widths) > 1:
        problems.append(
            "features of different widths: "
            + "; ".join(f"{w}: {format_items(ids)}" for w, ids in sorted(widths.items()))
            + " (use the files of one encoder)"
        )
    if len(encoders) > 1:
        problems.append(
            "features of different encoders: "
            + "; ".join(f"{name}: {format_items(ids)}" for name, ids in sorted(encoders.items()))
            + " (use the files of one encoder)"
        )
    problems += read_problems
    if problems:
        raise CohortError("; ".join(problems))
    return next(iter(found.values()))


def _inspect(files: Mapping[str, Path]) -> tuple[dict[str, tuple[int, str | None]], list[str]]:
    """Each slide's (width, encoder attribute), and the problems of empty or non-finite bags."""
    found: dict[str, tuple[int, str | None]] = {}
    empty, non_finite = [], []
    for slide_id, path in files.items():
        n, width = feature_shape(path)
        with h5py.File(path, "r") as h5:
            encoder = h5["features"].attrs.get("encoder")
            found[slide_id] = (width, None if encoder is None else str(encoder))
            if n == 0:
                empty.append(slide_id)
            elif not np.isfinite(h5["features"][:]).all():
                non_finite.append(slide_id)
    problems = []
    if empty:
        problems.append(
            f"slides without patches: {format_items(empty)} (no tissue was found: drop them "
            "from the cohort sheet or check their tissue masks)"
        )
    if non_finite:
        problems.append(
            f"features with NaN or Inf: {format_items(non_finite)} (extract these slides again)"
        )
    return found, problems


def cohort_bytes(files: Mapping[str, Path]) -> int:
    """Bytes the features of ``files`` take as float32."""
    return sum(4 * np.prod(feature_shape(path)) for path in files.values())


class BagDataset(Dataset):
    """The bags of some slides (or cases), in a fixed order.

    Args:
        files: Bag id -> feature file, or a case bag's tuple of its slides' files.
        slide_ids: The bags of this dataset, in order.
        region_size: Region size of the model's grid; None: no grid.
        max_patches: Cut bigger bags to this many patches (training).
        subset: How: ``random`` patches, or ``crop``: whole regions (of ``region_size``, else
            single cells) nearest to a random patch, up to ``max_patches`` (:func:`crop_rows`).
        seed: Seed of the subsets and augmentations.
        in_memory: Keep every bag after its first read (only in the process that reads it).
        augment: Move each bag's lattice by a random flip, quarter turn and shift
            (:func:`augment_cells`), seeded like the subsets (training); a case bag's slides
            each by their own, then set side by side again.
        read_features: False: bags carry no ``features`` (None); whoever takes them reads the
            rows ``rows`` of each slide's file (training's device feed, in threads).
    """

    def __init__(
        self,
        files: Mapping[str, BagFiles],
        slide_ids: Sequence[str],
        *,
        region_size: int | None = None,
        max_patches: int | None = None,
        subset: str = "random",
        seed: int = 0,
        in_memory: bool = False,
        augment: bool = False,
        read_features: bool = True,
    ) -> None:
        missing = [s for s in slide_ids if s not in files]
        if missing:
            raise CohortError(f"no feature file for slides {format_items(missing)}")
        self.files = {s: bag_paths(files[s]) for s in slide_ids}
        #: Each bag's slides: a case bag's by its files' stems.
        self.slides = {
            s: tuple(p.stem for p in self.files[s]) if isinstance(files[s], tuple) else (s,)
            for s in slide_ids
        }
        self.slide_ids = list(slide_ids)
        self.region_size = region_size
        self.max_patches = max_patches
        self.subset = subset
        self.seed = seed
        self.in_memory = in_memory
        self.augment = augment
        self.read_features = read_features
        self._cache: dict[str, tuple[np.ndarray, ...]] = {}

    def __len__(self) -> int:
        return len(self.slide_ids)

    def _arrays(self, bag_id: str) -> tuple[np.ndarray, ...]:
        """Features, placed cells, each patch's slide and its row in that slide's file."""
        if bag_id in self._cache:
            return self._cache[bag_id]
        if self.read_features:
            parts = [read_bag_arrays(path) for path in self.files[bag_id]]
            features = parts[0][0] if len(parts) == 1 else np.concatenate([f for f, _ in parts])
            sizes = [len(f) for f, _ in parts]
        else:
            parts = [read_bag_cells(path) for path in self.files[bag_id]]
            features, sizes = None, [n for n, _ in parts]
        cells = parts[0][1] if len(parts) == 1 else np.concatenate([c for _, c in parts])
        slide_of_patch = np.repeat(np.arange(len(parts)), sizes)
        rows = np.concatenate([np.arange(n) for n in sizes])
        cells = place_slides(cells, slide_of_patch, self.region_size or 1)
        arrays = features, cells, slide_of_patch, rows
        if self.in_memory:
            self._cache[bag_id] = arrays
        return arrays

    def __getitem__(self, key: int | tuple[int, int]) -> Bag:
        """The bag at ``index``, or at ``(index, epoch)`` with that epoch's patch subset."""
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        slide_id = self.slide_ids[index]
        features, cells, slide_of_patch, rows = self._arrays(slide_id)
        rng = np.random.default_rng([self.seed, epoch, zlib.crc32(slide_id.encode())])
        if self.max_patches is not None and len(rows) > self.max_patches:
            if self.subset == "crop":
                kept = crop_rows(cells, self.max_patches, rng, self.region_size or 1)
            else:
                kept = np.sort(rng.choice(len(rows), self.max_patches, replace=False))
            features = None if features is None else features[kept]
            cells = cells[kept]
            slide_of_patch, rows = slide_of_patch[kept], rows[kept]
        if self.augment:
            cells = cells.copy()
            for i in np.unique(slide_of_patch):
                cells[slide_of_patch == i] = augment_cells(cells[slide_of_patch == i], rng)
            cells = place_slides(cells, slide_of_patch, self.region_size or 1)
        grid = None if self.region_size is None else build_grid(cells, 1, self.region_size)
        return Bag(
            slide_id,
            None if features is None else torch.from_numpy(np.ascontiguousarray(features)),
            torch.from_numpy(np.ascontiguousarray(cells)),
            torch.from_numpy(rows),
            grid,
            self.slides[slide_id],
            torch.from_numpy(slide_of_patch),
        )


def crop_rows(cells: np.ndarray, count: int, rng: np.random.Generator, unit: int) -> np.ndarray:
    """Sorted rows of a spatially contiguous crop of at most ``count`` patches.

    Blocks of ``unit`` x ``unit`` cells (a model's regions: ``cells // unit``) are taken whole,
    nearest to a random patch's block first, while the crop holds at most ``count`` patches
    (at least the first block, cut to ``count`` if it alone is larger).
    """
    blocks = cells // unit
    centre = blocks[rng.integers(len(cells))]
    _, block_of, sizes = np.unique(blocks, axis=0, return_inverse=True, return_counts=True)
    block_of = block_of.reshape(-1)
    block_cells = np.zeros((len(sizes), 2), np.int64)
    block_cells[block_of] = blocks
    distance = np.hypot(*(block_cells - centre).T)
    order = np.argsort(distance, kind="stable")
    taken = order[: max(1, int(np.searchsorted(np.cumsum(sizes[order]), count, side="right")))]
    rows = np.flatnonzero(np.isin(block_of, taken))
    return rows[:count]


def augment_cells(cells: np.ndarray, rng: np.random.Generator, shift: int = 64) -> np.ndarray:
    """Cells moved by one of the 8 flips and quarter turns of the lattice and a random shift.

    Lattice neighbours stay neighbours (distances are kept), so what a model learns from
    the arrangement of patches cannot depend on the slide's orientation or place.

    Args:
        cells: (n, 2) lattice cells.
        rng: Random source.
        shift: Shifts are drawn from ``[0, shift)`` on each axis.
    """
    x, y = cells[:, 0], cells[:, 1]
    if rng.random() < 0.5:
        x = -x
    for _ in range(int(rng.integers(4))):
        x, y = -y, x
    return np.stack([x, y], axis=1) + rng.integers(0, shift, size=2)


class EpochOrder(Sampler):
    """Keys ``(index, epoch)`` of every bag, shuffled per epoch by (seed, epoch) or in order.

    The epoch travels with each key, so loader workers that live across epochs (persistent)
    still draw each epoch's patch subsets.
    """

    def __init__(self, n: int, *, seed: int = 0, shuffle: bool = False) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Order and subsets of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = np.arange(self.n)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        return iter([(int(i), self.epoch) for i in order])


def _single(bags: list[Bag]) -> Bag:
    return bags[0]


def bag_loader(dataset: BagDataset, order: Sampler, *, workers: int) -> DataLoader:
    """Bags of ``dataset`` in ``order``, read ahead by ``workers`` processes (0: inline).

    Workers persist across epochs (no start-up cost per epoch). The loader has its own
    generator, so it draws nothing from torch's global RNG: training is the same whatever the
    number of workers.
    """
    return DataLoader(
        dataset,
        batch_size=1,
        sampler=order,
        collate_fn=_single,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )

"""The on-disk formats: atomic writes, coords and feature files, and the lattice of a file.

h5py, numpy and the standard library only, so the MIL code reads features without loading any
slide library.

- Slide id: :data:`SLIDE_ID_PATTERN`, the name of every file of a slide.
- Coords file: ``coords`` (N, 2) int64 level-0 top-left (x, y) carrying TRIDENT's, CLAM's and
  our attributes, and ``tissue_fraction`` (N,).
- Attention file (evaluation): per slide, pooling attention and region selections
  (:func:`write_attention`).
- Feature file: ``features`` (N, D) float32 (attributes: encoder, embed_dim, ...) and ``coords``
  (N, 2), rows aligned, ``coords`` carrying every attribute of the coords file; optionally
  ``skipped_coords``. CLAM's and TRIDENT's feature files have the same two datasets.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections.abc import Iterator, Mapping
from functools import reduce
from pathlib import Path

import h5py
import numpy as np

from extractors.errors import FileFormatError

logger = logging.getLogger(__name__)

#: Slide ids become file names and wildcards: letters, digits, '.', '_' and '-', first a letter
#: or digit (the schemas' ``slide_id`` patterns are this, anchored).
SLIDE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` only on success.

    The temporary file is ``path`` + ``.{host}.{pid}.tmp`` in the same folder, so the rename is
    atomic and two processes writing the same file (planners of one folder on two nodes) never
    share one. On any exception it is removed and ``path`` is untouched; a killed process leaves
    only ``*.tmp``.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def trident_magnifications(
    target_mpp: float, patch_size: int, patch_size_level0: int
) -> tuple[float, float]:
    """``(level0_magnification, target_magnification)`` as TRIDENT reads them.

    TRIDENT reads ``patch_size * level0_magnification / target_magnification`` level-0 pixels
    per patch, so the level-0 "magnification" must follow the patch geometry (from the MPP), not
    the scanner's objective power: a 40x Aperio GT450 at 0.2632 µm/px tiled at 0.5 µm/px has
    486-pixel patches, which TRIDENT would read as 512 with the label's 40.
    """
    target = 10.0 / target_mpp
    return target * patch_size_level0 / patch_size, target


def write_coords(
    path: str | Path, coords: np.ndarray, tissue_fraction: np.ndarray, attrs: dict
) -> None:
    """Write a coords file (atomic); ``attrs`` go on the ``coords`` dataset."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        dataset = h5.create_dataset("coords", data=coords.astype(np.int64).reshape(-1, 2))
        dataset.attrs.update(attrs)
        h5.create_dataset("tissue_fraction", data=tissue_fraction.astype(np.float32))


def read_coords(path: str | Path) -> tuple[np.ndarray, dict]:
    """The ``coords`` (N, 2) int64 array and its attributes, from a coords or feature file.

    Raises:
        FileFormatError: No readable ``coords`` dataset; the message says to tile again.
    """
    try:
        with h5py.File(path, "r") as h5:
            dataset = h5["coords"]
            return dataset[:].astype(np.int64).reshape(-1, 2), dict(dataset.attrs)
    except (OSError, KeyError) as err:
        raise FileFormatError(
            f"{path}: not a readable coords file ({err}); run `querent tile` for its slide again."
        ) from err


def write_features(
    path: str | Path,
    features: np.ndarray,
    coords: np.ndarray,
    coords_attrs: dict,
    feature_attrs: dict,
    skipped_coords: np.ndarray,
) -> None:
    """Write a feature file (atomic): ``features`` (N, D) and ``coords`` (N, 2), rows aligned."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("features", data=features.astype(np.float32)).attrs.update(feature_attrs)
        h5.create_dataset("coords", data=coords.astype(np.int64)).attrs.update(coords_attrs)
        if len(skipped_coords):
            h5.create_dataset("skipped_coords", data=skipped_coords.astype(np.int64))


def read_features(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """``features``, ``coords`` and the attributes of both, from a feature file.

    Reads our files and CLAM's or TRIDENT's (whose ``features`` may lack attributes).

    Raises:
        FileFormatError: Not a feature file; the message names it.
    """
    try:
        with h5py.File(path, "r") as h5:
            return (
                h5["features"][:],
                h5["coords"][:].astype(np.int64).reshape(-1, 2),
                dict(h5["coords"].attrs),
                dict(h5["features"].attrs),
            )
    except (OSError, KeyError) as err:
        raise FileFormatError(
            f"{path}: not a readable feature file with `features` and `coords` ({err}); extract "
            "its slide again (`querent extract` / rule extract_features)."
        ) from err


def feature_shape(path: str | Path) -> tuple[int, int]:
    """(patches, feature width) of a feature file, without reading the features."""
    try:
        with h5py.File(path, "r") as h5:
            n, width = h5["features"].shape
            return int(n), int(width)
    except (OSError, KeyError, ValueError) as err:
        raise FileFormatError(
            f"{path}: not a readable feature file with a 2-D `features` dataset ({err})."
        ) from err


def lattice_step(attrs: dict, coords: np.ndarray | None, source: str | Path) -> int:
    """Level-0 lattice step of a coords or feature file.

    Taken from ``step_level0`` (ours), else ``patch_size_level0`` without overlap (TRIDENT),
    else, where the file has no attributes (CLAM writes none on feature files), inferred from
    the coordinates as the greatest common divisor of their differences (logged).

    Raises:
        FileFormatError: The step cannot be told.
    """
    if "step_level0" in attrs:
        return int(attrs["step_level0"])
    if "patch_size_level0" in attrs and int(attrs.get("overlap", 0)) == 0:
        return int(attrs["patch_size_level0"])
    if coords is not None and len(coords) > 1:
        diffs = np.abs(np.asarray(coords, np.int64) - np.asarray(coords, np.int64)[0]).ravel()
        step = reduce(math.gcd, diffs.tolist(), 0)
        if step > 0:
            logger.info("%s: no lattice attributes; step %d inferred from the coords", source, step)
            return step
    raise FileFormatError(
        f"{source}: its coords carry neither step_level0 nor patch_size_level0 without overlap, "
        "and too few patches to infer it, so the lattice is unknown; tile the slide with "
        "`querent tile`."
    )


def write_attention(slides: Mapping[str, Mapping[str, object]], path: str | Path) -> None:
    """Write attention.h5 (atomic): ``{slide_id: {"attention": ..., "selected": ..., ...}}``.

    One group per slide, rows aligned with the slide's feature file: ``attention`` (n,) pooling
    weight of every patch, and for models with regions ``selected`` (h, n, k) the regions each
    patch attended to in the last query-aware layer and ``region_of_patch`` (n,); attributes
    ``features`` (the feature file) and ``region_size``. Arrays become datasets, everything
    else group attributes (None values are left out).
    """
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        for slide_id, values in slides.items():
            group = h5.create_group(slide_id)
            for key, value in values.items():
                if isinstance(value, np.ndarray):
                    group.create_dataset(key, data=value, compression="gzip", compression_opts=1)
                elif value is not None:
                    group.attrs[key] = value


def read_attention(path: str | Path, slide_id: str) -> dict[str, object]:
    """One slide's arrays and attributes from attention.h5."""
    try:
        with h5py.File(path, "r") as h5:
            group = h5[slide_id]
            return {**dict(group.attrs), **{key: group[key][:] for key in group}}
    except (OSError, KeyError) as err:
        raise FileFormatError(f"{path}: no attention of slide {slide_id!r} ({err})") from err

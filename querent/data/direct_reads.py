"""Features read straight into a caller's buffer, such as pinned host memory for a GPU.

A ``features`` dataset stored contiguous and unfiltered (how h5py writes an array given whole,
as our extraction does) is one run of bytes in its file: it is read with one positioned read,
outside HDF5's global lock, so threads read several files at once and nothing is copied twice.
Chunked or compressed datasets, other byte orders and reads that convert the stored type go
through h5py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from extractors.errors import FileFormatError

#: Stored types kept as they are (cast on the device); others are read as float32.
KEPT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))


@dataclass(frozen=True)
class FeatureLayout:
    """Shape, stored type and, where the bytes are one run in the file, their offset."""

    shape: tuple[int, int]
    dtype: np.dtype
    offset: int | None

    @property
    def read_dtype(self) -> np.dtype:
        """The type a buffer for these features takes: the stored one, or float32."""
        return self.dtype if self.dtype in KEPT_DTYPES else np.dtype(np.float32)


def feature_layout(path: str | Path) -> FeatureLayout:
    """The layout of the ``features`` dataset of a feature file.

    Raises:
        FileFormatError: No readable 2-D ``features`` dataset; the message names the file.
    """
    try:
        with h5py.File(path, "r") as h5:
            dataset = h5["features"]
            plain = dataset.chunks is None and dataset.external is None and dataset.dtype.isnative
            offset = dataset.id.get_offset() if plain else None
            n, width = dataset.shape
            return FeatureLayout((int(n), int(width)), dataset.dtype, offset)
    except (OSError, KeyError, ValueError) as err:
        raise FileFormatError(
            f"{path}: not a readable feature file with a 2-D `features` dataset ({err}); extract "
            "its slide again."
        ) from err


def read_features_into(path: str | Path, layout: FeatureLayout, out: np.ndarray) -> None:
    """Fill ``out`` (C-contiguous, ``layout.shape``) with the features of ``path``."""
    if out.shape != layout.shape or not out.flags.c_contiguous:
        raise ValueError(f"{path}: buffer {out.shape} does not fit features {layout.shape}")
    if layout.offset is None or out.dtype != layout.dtype:
        with h5py.File(path, "r") as h5:
            h5["features"].read_direct(out)
        return
    view = memoryview(out.reshape(-1).view(np.uint8))
    with open(path, "rb", buffering=0) as raw:
        raw.seek(layout.offset)
        done = 0
        while done < len(view):
            got = raw.readinto(view[done:])
            if not got:
                raise FileFormatError(f"{path}: ends inside its `features`; extract it again.")
            done += got

"""Files of the evaluation: predictions.csv, metrics.json and attention.h5 (all atomic).

``attention.h5`` holds one group per slide, rows aligned with the slide's feature file:
``attention`` (n,) pooling weight of every patch, and for models with regions ``selected``
(h, n, k) the regions each patch attended to in the last query-aware layer and
``region_of_patch`` (n,); group attributes ``features`` (the feature file) and ``region_size``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from extractors.errors import FileFormatError
from extractors.io import atomic_path


def write_predictions(table: pd.DataFrame, path: str | Path) -> None:
    """Write predictions.csv."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")


def _plain(value: object) -> object:
    """JSON-safe values: NaN and infinities become null."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        return None
    if isinstance(value, np.integer | np.floating):
        return value.item()
    return value


def write_metrics(metrics: Mapping, path: str | Path) -> None:
    """Write metrics.json (undefined metrics as null)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_plain(dict(metrics)), indent=2, allow_nan=False) + "\n")


def write_attention(slides: Mapping[str, Mapping[str, object]], path: str | Path) -> None:
    """Write attention.h5: ``{slide_id: {"attention": ..., "selected": ..., ...}}``.

    Arrays become datasets, everything else group attributes.
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

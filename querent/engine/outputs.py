"""Where a training's files go, and the files of the evaluation: predictions.csv, metrics.json.

attention.h5 is written by :func:`extractors.io.write_attention` (its format is described there).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from extractors.io import atomic_path


def run_folder(stage: str, model: str, encoder: str, seed: int, fold: int) -> Path:
    """``results/{stage}/{model}/{encoder}/seed_{seed}/fold_{fold}`` (stage: models or eval)."""
    return Path("results", stage, model, encoder, f"seed_{seed}", f"fold_{fold}")


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

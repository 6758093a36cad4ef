"""Synthetic feature-level cohorts whose truth is known, for tests and benchmarks.

Each slide is a blob of patches on a lattice with Gaussian features. A share of the patches
carries a class signal (a shift along one feature direction, stronger in the positive class), so
a MIL model can learn the label; survival times shorten with the signal. Files are written in
our feature-file format (``features`` + ``coords`` with ``step_level0``), with a cohort sheet.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from extractors.io import atomic_path

#: Level-0 lattice step of the synthetic slides.
STEP = 256


def _blob_cells(rng: np.random.Generator, n_patches: int) -> np.ndarray:
    """``n_patches`` distinct lattice cells of a roughly round blob of tissue."""
    side = int(np.ceil(np.sqrt(n_patches * 1.6)))
    ys, xs = np.mgrid[0:side, 0:side]
    centre = (side - 1) / 2
    distance = np.hypot(xs - centre, ys - centre) + rng.random((side, side))
    order = np.argsort(distance.ravel())[:n_patches]
    cells = np.stack([xs.ravel()[order], ys.ravel()[order]], axis=1)
    return cells + rng.integers(0, 50, size=2)


def write_synthetic_cohort(
    out_dir: str | Path,
    *,
    n_cases: int = 24,
    n_patches: tuple[int, int] = (60, 120),
    dim: int = 16,
    signal: float = 1.5,
    seed: int = 0,
    encoder: str = "synthetic",
) -> Path:
    """Write ``out_dir``/features/{slide_id}.h5 and ``out_dir``/cohort.csv.

    Every fifth case has two slides. Labels alternate between ``neg`` and ``pos``; ``pos``
    slides have twice the share of signal patches. Survival times are exponential with a rate
    that grows with the label; 75% of cases have an event.

    Returns:
        The cohort sheet (columns ``slide_id, case_id, label, time, event``).
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    rows = []
    for case in range(n_cases):
        label = ("neg", "pos")[case % 2]
        time = round(float(rng.exponential(40.0 if label == "neg" else 15.0)) + 1.0, 2)
        event = int(rng.random() < 0.75)
        for slide in range(2 if case % 5 == 4 else 1):
            slide_id = f"syn_{case:03d}_{slide}"
            n = int(rng.integers(*n_patches))
            cells = _blob_cells(rng, n)
            features = rng.normal(size=(n, dim)).astype(np.float32)
            share = 0.3 if label == "pos" else 0.15
            carriers = rng.random(n) < share
            features[carriers] += signal * direction.astype(np.float32)
            path = out_dir / "features" / f"{slide_id}.h5"
            with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
                h5.create_dataset("features", data=features).attrs.update(
                    {"encoder": encoder, "embed_dim": dim}
                )
                h5.create_dataset("coords", data=cells.astype(np.int64) * STEP).attrs.update(
                    {"step_level0": STEP, "patch_size_level0": STEP, "name": slide_id}
                )
            rows.append((slide_id, f"case_{case:03d}", label, time, event))
    sheet = out_dir / "cohort.csv"
    with atomic_path(sheet) as tmp:
        pd.DataFrame(rows, columns=["slide_id", "case_id", "label", "time", "event"]).to_csv(
            tmp, index=False
        )
    return sheet

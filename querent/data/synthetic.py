"""Synthetic feature-level cohorts whose truth is known, for tests and benchmarks.

Two kinds, both written in our feature-file format (``features`` + ``coords`` with
``step_level0``) next to a cohort sheet, so ``features.dir`` trains on them like on real slides:

- :func:`write_synthetic_cohort`: blobs of Gaussian patches where a share of single patches
  carries the class signal (quick to learn; the tests' cohort).
- :func:`write_context_cohort`: slides whose label lives only in the arrangement of patch
  types (:mod:`querent.data.context`); each file also holds the true ``types``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from extractors.io import atomic_path
from querent.data.context import (
    ContextSettings,
    FeatureBank,
    defining_statistic,
    generate_slide,
    prototypes,
)

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
    that grows with the label; 75% of cases have an event. ``signal_share``, a regression
    target, is the share of the case's patches (over its slides) that carry the signal.

    Returns:
        The cohort sheet (columns ``slide_id, case_id, label, time, event, signal_share``).
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
        slide_ids, n_carriers, n_total = [], 0, 0
        for slide in range(2 if case % 5 == 4 else 1):
            slide_id = f"syn_{case:03d}_{slide}"
            n = int(rng.integers(*n_patches))
            cells = _blob_cells(rng, n)
            features = rng.normal(size=(n, dim)).astype(np.float32)
            share = 0.3 if label == "pos" else 0.15
            carriers = rng.random(n) < share
            features[carriers] += signal * direction.astype(np.float32)
            _write_bag(out_dir / "features" / f"{slide_id}.h5", features, cells, encoder)
            slide_ids.append(slide_id)
            n_carriers, n_total = n_carriers + int(carriers.sum()), n_total + n
        share = round(n_carriers / n_total, 4)
        rows += [(s, f"case_{case:03d}", label, time, event, share) for s in slide_ids]
    columns = ["slide_id", "case_id", "label", "time", "event", "signal_share"]
    return _write_table(rows, columns, out_dir)


def _write_bag(
    path: Path, features: np.ndarray, cells: np.ndarray, encoder: str, **extra: np.ndarray
) -> None:
    """One feature file: ``features``, ``coords`` (cells times :data:`STEP`) and ``extra``."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("features", data=features).attrs.update(
            {"encoder": encoder, "embed_dim": features.shape[1]}
        )
        h5.create_dataset("coords", data=cells.astype(np.int64) * STEP).attrs.update(
            {"step_level0": STEP, "patch_size_level0": STEP, "name": path.stem}
        )
        for name, data in extra.items():
            h5.create_dataset(name, data=data)


def _write_table(rows: list[tuple], columns: list[str], out_dir: Path, name: str = "cohort.csv"):
    path = out_dir / name
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=columns).to_csv(tmp, index=False)
    return path


def survival_of(rng: np.random.Generator, score: float) -> tuple[float, int]:
    """(time, event) with a hazard 20 times higher at ``score`` 1 than at 0; 25% censored."""
    time = rng.exponential(30.0 * np.exp(-3.0 * (score - 0.5)))
    if rng.random() < 0.25:
        return round(float(time * rng.random()) + 0.01, 2), 0
    return round(float(time) + 0.01, 2), 1


def write_context_cohort(
    out_dir: str | Path,
    settings: ContextSettings,
    *,
    encoder: str = "synthetic",
    bank: FeatureBank | None = None,
) -> Path:
    """Write a context cohort: ``out_dir``/features/{slide_id}.h5, cohort.csv and truth.csv.

    Labels alternate ``neg`` / ``pos`` (score 0 / 1); ``time`` and ``event`` follow the score
    (the survival task's target; a graded score proved too weak a signal to learn from 80
    slides). Features come from ``bank`` where one is given (real patches by type).
    ``truth.csv`` holds each slide's score and its arrangement's defining statistic.

    Returns:
        The cohort sheet.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(settings.seed)
    protos = prototypes(settings)
    rows, truth = [], []
    for index in range(settings.slides):
        score = float(index % 2)
        slide = generate_slide(rng, settings, score, protos, bank)
        slide_id = f"ctx_{index:04d}"
        _write_bag(
            out_dir / "features" / f"{slide_id}.h5",
            slide.features,
            slide.cells,
            encoder,
            types=slide.types,
        )
        time, event = survival_of(rng, score)
        label = "pos" if score > 0.5 else "neg"
        rows.append((slide_id, f"case_{index:04d}", label, time, event))
        statistic = defining_statistic(settings.kind, slide.cells, slide.types, settings.range)
        truth.append((slide_id, score, statistic, len(slide.cells)))
    _write_table(truth, ["slide_id", "score", "statistic", "patches"], out_dir, "truth.csv")
    return _write_table(rows, ["slide_id", "case_id", "label", "time", "event"], out_dir)

"""Real patch features grouped into types: the feature bank of the real-feature context cohorts.

The slides of ``../shared/slides`` (CMU-1-Small-Region and a TCGA frozen section, read at
0.5 µm/px) are tiled into 224 px patches with overlap and embedded by the default encoder
(EfficientNet-Lite0, 1,280-d) through ``querent tile`` and ``querent extract``, as a user would;
k-means (scikit-learn) then groups the features into one cluster per patch type, the largest
cluster standing for stroma, the next ones for tumour, immune, fat and the control's positive
immune. Cohorts draw a patch's features from its type's cluster, so their noise and correlations
are those of real features.

    .venv/bin/python benchmarks/context_bank.py [--work DIR]   # prints the clusters' sizes
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
from sklearn.cluster import KMeans

from querent.data.context import TYPES, FeatureBank

HERE = Path(__file__).resolve().parent
SLIDES = HERE.parent.parent / "shared" / "slides"
#: Slide -> (level-0 µm/px to assume or None for the metadata's, overlap in pixels).
SOURCES = {"cmu-1-small-region.svs": (None, 168), "tcga-cr-7395-01a-01-ts1.svs": (0.5, 112)}
ENCODER = "efficientnet_lite0"


def _querent(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "querent.cli", *args], check=True, capture_output=True)


def real_features(work: Path) -> np.ndarray:
    """(m, 1280) features of the shared slides' patches (extracted once under ``work``)."""
    features = []
    for name, (mpp, overlap) in SOURCES.items():
        slide = SLIDES / name
        if not slide.is_file():
            raise FileNotFoundError(f"{slide} is missing: the real-feature cohorts need it")
        given = ["--mpp", str(mpp)] if mpp else []
        out = work / "features" / f"{slide.stem}.h5"
        if not out.is_file():
            _querent(
                "tile",
                str(slide),
                "-o",
                str(work / "coords"),
                "--target-mpp",
                "0.5",
                "--patch-size",
                "224",
                "--overlap",
                str(overlap),
                *given,
            )
            _querent(
                "extract",
                str(slide),
                "--coords",
                str(work / "coords"),
                "-o",
                str(work / "features"),
                "--encoder",
                ENCODER,
                "--threads",
                "2",
                *given,
            )
        with h5py.File(out, "r") as h5:
            features.append(h5["features"][:])
    return np.concatenate(features).astype(np.float32)


@functools.cache
def feature_bank(work: Path, seed: int = 0) -> FeatureBank:
    """The shared slides' features, clustered into the types (largest cluster: stroma)."""
    features = real_features(work)
    labels = KMeans(len(TYPES) + 1, n_init=10, random_state=seed).fit_predict(features)
    rank = np.argsort(np.argsort(-np.bincount(labels), kind="stable"))  # 0: the largest
    return FeatureBank(features, rank[labels])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=HERE / "results" / "context_work" / "bank")
    args = parser.parse_args()
    bank = feature_bank(args.work)
    names = [*TYPES, "immune (control, positive)"]
    for t, name in enumerate(names):
        print(f"{name:28s} {int((bank.types == t).sum()):5d} patches")


if __name__ == "__main__":
    main()

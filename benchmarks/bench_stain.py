"""Stain normalisation's cost in feature extraction: patches/s with and without, on a real slide.

``extract_slide`` (the code the workflow runs) with the default encoder over CMU-1-Small-Region
(``../shared/slides``), tiled with the default settings, once without normalisation and once
with each method, the settings taking turns round after round so that a busy CPU slows them
alike; the median round counts. Macenko uses its built-in reference; Reinhard a 512 px region of
the TCGA frozen section (the most tissue-rich one on its level 1). A second table times the
normalisers alone on the slide's patches in batches of 16 (the CPU batch size): ours, vectorised
over the batch, against torchstain's Macenko one patch at a time (if torchstain is installed).

    python benchmarks/bench_stain.py [--rounds 5] [--threads 2]

Writes ``benchmarks/results/stain_norm.csv`` (the first table) and ``bench_stain.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from extractors.encoders import create_encoder
from extractors.extract import extract_slide, patch_geometry
from extractors.io import read_coords
from extractors.patches import PatchBlocks, collate_blocks
from extractors.stain_norm import create_normaliser
from extractors.wsi import tiling, tissue
from extractors.wsi.reader import Slide

HERE = Path(__file__).resolve().parent
SLIDES = HERE.parent.parent / "shared" / "slides"
ENCODER = "efficientnet_lite0"


def tile(slide: Path, out: Path) -> Path:
    """The slide's coords file, tiled with the default settings."""
    with Slide(slide) as opened:
        polygons = tissue.segment(opened, tissue.tissue_params()).polygons
        tiling.tile_slide(opened, polygons, tiling.TilingParams(), out, out.with_suffix(".jpg"))
    return out


def tcga_region(out: Path) -> Path:
    """A 512 px region of the TCGA frozen section, the most tissue-rich on its level 1."""
    with Slide(SLIDES / "tcga-cr-7395-01a-01-ts1.svs", mpp_override=0.5) as slide:
        width, height = (side // 2 for side in slide.dimensions)
        overview = slide.read_region((0, 0), 1, (width, height))
        counts = cv2.integral((overview.max(axis=-1) <= 205).astype(np.float32))
        s = 256
        windows = counts[s:, s:] - counts[:-s, s:] - counts[s:, :-s] + counts[:-s, :-s]
        y, x = np.unravel_index(np.argmax(windows), windows.shape)
        region = slide.read_region((int(x) * 2, int(y) * 2), 0, (512, 512))
    cv2.imwrite(str(out), cv2.cvtColor(region, cv2.COLOR_RGB2BGR))
    return out


def extraction_rounds(slide, coords, encoder, normalisers, rounds, tmp) -> dict[str, float]:
    """Median seconds of one extraction of the slide, per setting."""
    seconds = {name: [] for name in normalisers}
    for _ in range(rounds + 1):  # the first round warms up
        for name, normaliser in normalisers.items():
            start = time.perf_counter()
            extract_slide(slide, coords, encoder, tmp / f"{name}.h5", normaliser=normaliser)
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values[1:]) for name, values in seconds.items()}


def normaliser_rounds(patches, normalisers, rounds) -> dict[str, float]:
    """Patches per second of each normaliser alone, in batches of 16."""
    batches = patches.split(16)
    rates = {}
    for name, normalise in normalisers.items():
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            for batch in batches:
                normalise(batch)
            times.append(time.perf_counter() - start)
        rates[name] = len(patches) / statistics.median(times)
    return rates


def torchstain_per_patch():
    """The Macenko normaliser of torchstain applied one patch at a time (None: not installed)."""
    try:
        from torchstain.torch.normalizers import TorchMacenkoNormalizer
    except ImportError:
        return None
    reference = TorchMacenkoNormalizer()
    return lambda batch: [reference.normalize(p.contiguous(), stains=False) for p in batch]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default: 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    slide = SLIDES / "cmu-1-small-region.svs"
    encoder = create_encoder(ENCODER)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        tmp = Path(tmp)
        coords = tile(slide, tmp / "coords.h5")
        target = tcga_region(tmp / "target.png")
        normalisers = {
            "none": None,
            "macenko": create_normaliser("macenko"),
            "reinhard": create_normaliser("reinhard", target),
        }
        seconds = extraction_rounds(slide, coords, encoder, normalisers, args.rounds, tmp)
        points, attrs = read_coords(coords)
        dataset = PatchBlocks(slide, {}, points, patch_geometry(attrs, encoder.spec))
        _, patches, _ = collate_blocks([dataset[i] for i in range(len(dataset))])
        alone = {f"ours {name}, batched": n for name, n in normalisers.items() if n is not None}
        if (theirs := torchstain_per_patch()) is not None:
            alone["torchstain macenko, per patch"] = theirs
        rates = normaliser_rounds(patches, alone, args.rounds)
    n = len(points)
    table = pd.DataFrame(
        [
            {
                "stain_norm": name,
                "patches": n,
                "s_per_slide": round(s, 2),
                "patches_per_s": round(n / s, 1),
                "time_vs_none": round(s / seconds["none"], 2),
            }
            for name, s in seconds.items()
        ]
    )
    alone_table = pd.DataFrame(
        [{"normaliser": name, "patches_per_s": round(rate, 1)} for name, rate in rates.items()]
    )
    print(f"{ENCODER} on {slide.name}, {args.threads} torch threads, median of {args.rounds}")
    print(table.to_string(index=False))
    print(alone_table.to_string(index=False))
    out = HERE / "results"
    table.to_csv(out / "stain_norm.csv", index=False)
    (out / "bench_stain.json").write_text(
        json.dumps(
            {
                "encoder": ENCODER,
                "slide": slide.name,
                "threads": args.threads,
                "rounds": args.rounds,
                "extraction": table.to_dict("records"),
                "normalisers_alone": alone_table.to_dict("records"),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

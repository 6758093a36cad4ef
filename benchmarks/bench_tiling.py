"""Segmentation + tiling seconds per slide, next to the floor of opening it and reading a thumbnail.

Slides: the real CMU-1-Small-Region (if ../shared/slides is present) and two generated
pyramidal slides of 60,000 x 40,000 px at level 0 with about 15% and 60% tissue, so that time
can be compared against tissue area at a fixed pixel count. Runs on one core.

    python benchmarks/bench_tiling.py [--repeats 3] [--out benchmarks/results/bench_tiling.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from extractors.demo import random_tissue_map, write_synthetic_slide  # noqa: E402
from extractors.wsi import tiling, tissue  # noqa: E402
from extractors.wsi.reader import Slide  # noqa: E402

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
REAL_SLIDE = HERE.parent.parent / "shared" / "slides" / "cmu-1-small-region.svs"
LARGE_SIZE = (60_000, 40_000)


def large_slide(tissue_fraction: float) -> Path:
    """A generated 60k x 40k pyramidal slide, written once and cached."""
    path = CACHE / f"large_{LARGE_SIZE[0]}x{LARGE_SIZE[1]}_tissue{round(tissue_fraction * 100)}.svs"
    if not path.exists():
        rng = np.random.default_rng(7)
        label_map = random_tissue_map(
            (LARGE_SIZE[1] // 32, LARGE_SIZE[0] // 32),
            tissue_fraction=tissue_fraction,
            n_pieces=4,
            tumour_fraction=0.2,
            rng=rng,
        )
        print(f"writing {path.name} (once; cached) ...", flush=True)
        write_synthetic_slide(path, label_map, level0_size=LARGE_SIZE, seed=7)
    return path


def floor_seconds(path: Path, params: tissue.TissueParams) -> float:
    """Open the slide and read the thumbnail that segmentation reads."""
    start = time.perf_counter()
    with Slide(path) as slide:
        slide.read_at_mpp(tissue.thumbnail_mpp(slide, params))
    return time.perf_counter() - start


def pipeline_seconds(path: Path, params: tissue.TissueParams, out: Path) -> dict:
    """Open, segment, tile, and write GeoJSON, coords and QC picture, as ``querent tile``."""
    start = time.perf_counter()
    with Slide(path) as slide:
        result = tissue.segment_slide(slide, params, out / "t.geojson", out / "t_qc.png")
        coords, lattice = tiling.tile_slide(
            slide,
            result.polygons,
            tiling.TilingParams(),
            out / "t.h5",
            out / "t_qc.png",
            result.thumbnail,
        )
        total = time.perf_counter() - start
        tile_start = time.perf_counter()
        tiling.tile(result.polygons, lattice, slide.dimensions, 0.25)
        tile_only = time.perf_counter() - tile_start
        level0_mpx = slide.dimensions[0] * slide.dimensions[1] / 1e6
    return {
        "total_s": total,
        "lattice_only_s": tile_only,
        "patches": len(coords),
        "tissue_mm2": result.tissue_area_um2 / 1e6,
        "level0_mpx": level0_mpx,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_tiling.json")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    CACHE.mkdir(exist_ok=True)

    slides = {}
    if REAL_SLIDE.exists():
        slides["cmu-1-small-region (real)"] = REAL_SLIDE
    slides["generated 60k x 40k, ~15% tissue"] = large_slide(0.15)
    slides["generated 60k x 40k, ~60% tissue"] = large_slide(0.60)

    params = tissue.tissue_params()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in slides.items():
            floors, runs = [], []
            for _ in range(args.repeats):
                floors.append(floor_seconds(path, params))
                runs.append(pipeline_seconds(path, params, Path(tmp)))
            floor = statistics.median(floors)
            total = statistics.median(r["total_s"] for r in runs)
            rows.append(
                {
                    "slide": name,
                    "level0_mpx": runs[0]["level0_mpx"],
                    "tissue_mm2": runs[0]["tissue_mm2"],
                    "patches": runs[0]["patches"],
                    "floor_s": floor,
                    "segment_and_tile_s": total,
                    "beyond_floor_s": total - floor,
                    "lattice_only_s": statistics.median(r["lattice_only_s"] for r in runs),
                }
            )

    header = (
        f"{'slide':36} {'level0 Mpx':>10} {'tissue mm2':>10} {'patches':>8} "
        f"{'floor s':>8} {'seg+tile s':>10} {'beyond s':>9} {'lattice s':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['slide']:36} {r['level0_mpx']:10.0f} {r['tissue_mm2']:10.1f} {r['patches']:8d} "
            f"{r['floor_s']:8.3f} {r['segment_and_tile_s']:10.3f} {r['beyond_floor_s']:9.3f} "
            f"{r['lattice_only_s']:9.4f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"repeats": args.repeats, "threads": 1, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

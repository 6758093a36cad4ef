"""Segmentation + tiling seconds per slide, next to the floor of opening it and reading a thumbnail.

Slides: the real CMU-1-Small-Region (if ../shared/slides is present) and two generated
pyramidal slides of 60,000 x 40,000 px at level 0 with about 15% and 60% tissue, so that time
can be compared against tissue area at a fixed pixel count. Runs on one core.

Each slide is run by today's code and by a baseline, alternating run by run: the segmentation
+ tiling of commit 135373d (before it was sped up), kept below only to be timed. Both write
what ``querent tile`` writes: tissue GeoJSON, tissue QC picture, coords HDF5, tiling QC picture.

    python benchmarks/bench_tiling.py [--repeats 5] [--out benchmarks/results/bench_tiling.json]
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
from extractors.wsi.tissue import TissueParams, TissuePolygon  # noqa: E402

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
    """Open, segment, tile, and write GeoJSON, coords and both QC pictures, as ``querent tile``."""
    start = time.perf_counter()
    with Slide(path) as slide:
        result = tissue.segment_slide(slide, params, out / "t.geojson", out / "t_tissue_qc.jpg")
        coords, lattice = tiling.tile_slide(
            slide,
            result.polygons,
            tiling.TilingParams(),
            out / "t.h5",
            out / "t_qc.jpg",
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


# --- Baseline: commit 135373d's segmentation + tiling, kept ONLY to time against. ---------------
# Where it differs from today's code: the thumbnail goes through a PIL image, the saturation is
# median-blurred, and the whole thumbnail is shrunk to QC size (area average) for each picture,
# whose patches are drawn one rectangle at a time. Unchanged steps call today's functions.


def _baseline_mask(thumbnail: np.ndarray, params: TissueParams) -> np.ndarray:
    hsv = cv2.cvtColor(thumbnail, cv2.COLOR_RGB2HSV)
    saturation = cv2.medianBlur(hsv[..., 1], tissue._odd(params.median_blur_um / params.seg_mpp))
    mask = (saturation > params.min_saturation).astype(np.uint8) * 255  # 'fixed' threshold
    kernel_px = tissue._odd(params.close_um / params.seg_mpp)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_px, kernel_px))
    return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)


def _baseline_qc(
    thumbnail: np.ndarray,
    level0_size: tuple[int, int],
    polygons: list[TissuePolygon],
    coords: np.ndarray | None = None,
    patch_size_level0: int = 0,
) -> np.ndarray:
    factor = min(1.0, tissue.QC_MAX_SIDE / max(thumbnail.shape[:2]))
    picture = thumbnail
    if factor < 1.0:
        size = (round(thumbnail.shape[1] * factor), round(thumbnail.shape[0] * factor))
        picture = cv2.resize(thumbnail, size, interpolation=cv2.INTER_AREA)
    picture = np.ascontiguousarray(picture)
    scale = np.array([picture.shape[1] / level0_size[0], picture.shape[0] / level0_size[1]])
    thickness = max(1, round(max(picture.shape[:2]) / 700))
    if coords is not None and len(coords):
        corners = np.round(coords * scale).astype(np.int32)
        extent = np.round(patch_size_level0 * scale).astype(np.int32)
        overlay = picture.copy()
        for x, y in corners:
            cv2.rectangle(overlay, (x, y), (x + extent[0], y + extent[1]), (255, 160, 0), thickness)
        picture = cv2.addWeighted(overlay, 0.8, picture, 0.2, 0)
    for polygon in polygons:
        rings = [np.round(r * scale).astype(np.int32) for r in polygon.rings()]
        cv2.polylines(picture, rings[:1], True, (0, 200, 0), thickness)
        cv2.polylines(picture, rings[1:], True, (0, 80, 255), thickness)
    return picture


def _baseline_png(path: Path, rgb: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    path.write_bytes(encoded.tobytes())


def baseline_pipeline_seconds(path: Path, params: TissueParams, out: Path) -> dict:
    """:func:`pipeline_seconds` for the baseline (default 'fixed' threshold, no pen filter)."""
    assert params.threshold == "fixed" and not params.remove_pen
    start = time.perf_counter()
    with Slide(path) as slide:
        slide.read_region = slide._read_region_pil  # the PIL path the baseline read through
        thumbnail, seg_image, scale = tissue.read_for_segmentation(slide, params)
        width, height = slide.dimensions
        polygons = tissue.mask_to_polygons(_baseline_mask(seg_image, params), params, scale)
        tissue.write_geojson(out / "b.geojson", polygons, slide_id=slide.slide_id)
        _baseline_png(out / "b_tissue_qc.png", _baseline_qc(thumbnail, (width, height), polygons))
        tiling_params = tiling.TilingParams()
        lattice = tiling.make_lattice(slide, tiling_params)
        coords, fractions = tiling.tile(
            polygons, lattice, slide.dimensions, tiling_params.min_tissue_fraction
        )
        tiling.write_coords(
            out / "b.h5", coords, fractions, slide=slide, lattice=lattice, params=tiling_params
        )
        picture = _baseline_qc(
            thumbnail, (width, height), polygons, coords, lattice.patch_size_level0
        )
        _baseline_png(out / "b_qc.png", picture)
        total = time.perf_counter() - start
    return {"total_s": total, "patches": len(coords)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
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
            floors, results = [], {pipeline_seconds: [], baseline_pipeline_seconds: []}
            order = list(results)
            for _ in range(args.repeats):
                floors.append(floor_seconds(path, params))
                for measure in order:
                    results[measure].append(measure(path, params, Path(tmp)))
                order.reverse()  # alternate which of the two goes first
            runs, baselines = results[pipeline_seconds], results[baseline_pipeline_seconds]
            total = statistics.median(r["total_s"] for r in runs)
            baseline = statistics.median(r["total_s"] for r in baselines)
            rows.append(
                {
                    "slide": name,
                    "level0_mpx": runs[0]["level0_mpx"],
                    "tissue_mm2": runs[0]["tissue_mm2"],
                    "patches": runs[0]["patches"],
                    "baseline_patches": baselines[0]["patches"],
                    "floor_s": statistics.median(floors),
                    "baseline_s": baseline,
                    "segment_and_tile_s": total,
                    "new_over_baseline": total / baseline,
                    "lattice_only_s": statistics.median(r["lattice_only_s"] for r in runs),
                }
            )

    header = (
        f"{'slide':34} {'Mpx':>5} {'tissue mm2':>10} {'patches':>13} {'floor s':>8} "
        f"{'135373d s':>9} {'today s':>8} {'ratio':>6} {'lattice s':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        patches = f"{r['baseline_patches']}/{r['patches']}"
        print(
            f"{r['slide']:34} {r['level0_mpx']:5.0f} {r['tissue_mm2']:10.1f} {patches:>13} "
            f"{r['floor_s']:8.3f} {r['baseline_s']:9.3f} {r['segment_and_tile_s']:8.3f} "
            f"{r['new_over_baseline']:6.2f} {r['lattice_only_s']:9.4f}"
        )
    print(
        "\npatches: baseline/today; floor: open + read the thumbnail (today's reader); ratio: "
        "today / 135373d, medians of alternating runs"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"repeats": args.repeats, "threads": 1, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

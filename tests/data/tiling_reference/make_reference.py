"""Write the tiling reference of the real slides: what segmentation + tiling gave before a change.

For every case below (a real slide from ../shared/slides at the default settings) it writes

- ``{case}.coords.npy``: the kept patch coordinates, int32 (N, 2) level-0 top-left (x, y);
- ``{case}.mask.png``: the tissue polygons (holes cut out) rasterised on the segmentation grid
  (one pixel per ``seg_mpp`` µm), 0 or 255;
- ``manifest.json``: patch counts, tissue areas, grid shapes and the commit that made them.

tests/extractors/wsi/test_tiling_regression.py compares today's code against these files. Only
regenerate them when a change to the outputs is intended (see README.md here):

    .venv/bin/python tests/data/tiling_reference/make_reference.py
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np

from extractors.wsi import tiling, tissue
from extractors.wsi.reader import Slide

HERE = Path(__file__).resolve().parent
SLIDES = HERE.parents[2].parent / "shared" / "slides"

#: case name -> (slide file in ../shared/slides, keyword arguments of Slide).
CASES: dict[str, tuple[str, dict]] = {
    "cmu": ("cmu-1-small-region.svs", {}),
    "cmu_3level": ("derived_cmu_small_region_3level.svs", {}),
    "tcga_mpp0.5": ("tcga-cr-7395-01a-01-ts1.svs", {"mpp_override": 0.5}),
    "tcga_mpp0.25": ("tcga-cr-7395-01a-01-ts1.svs", {"mpp_override": 0.25}),
}


def polygon_mask(
    polygons: list[tissue.TissuePolygon], level0_size: tuple[int, int], shape: tuple[int, int]
) -> np.ndarray:
    """Polygons (level-0 pixels) rasterised onto a (height, width) grid spanning the slide."""
    canvas = np.zeros(shape, np.uint8)
    scale = np.array([shape[1] / level0_size[0], shape[0] / level0_size[1]])
    rings = [np.round((r * scale - 0.5) * 16).astype(np.int32) for p in polygons for r in p.rings()]
    if rings:
        cv2.fillPoly(canvas, rings, 255, shift=4)
    return canvas


def outputs(case: str) -> dict:
    """Segment and tile one case with the code installed now, at the default settings."""
    name, slide_kwargs = CASES[case]
    params = tissue.tissue_params()
    with Slide(SLIDES / name, **slide_kwargs) as slide:
        result = tissue.segment(slide, params)
        lattice = tiling.make_lattice(slide, tiling.TilingParams())
        coords, _ = tiling.tile(
            result.polygons, lattice, slide.dimensions, tiling.TilingParams().min_tissue_fraction
        )
        width, height = slide.dimensions
        shape = (
            max(1, round(height * slide.mpp / params.seg_mpp)),
            max(1, round(width * slide.mpp / params.seg_mpp)),
        )
    return {
        "coords": coords.astype(np.int32),
        "mask": polygon_mask(result.polygons, (width, height), shape),
        "patches": len(coords),
        "tissue_pieces": len(result.polygons),
        "tissue_area_um2": result.tissue_area_um2,
    }


def main() -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    manifest = {"commit": commit, "settings": "defaults (resection preset, TilingParams())"}
    for case in CASES:
        out = outputs(case)
        np.save(HERE / f"{case}.coords.npy", out["coords"])
        cv2.imwrite(str(HERE / f"{case}.mask.png"), out["mask"], [cv2.IMWRITE_PNG_BILEVEL, 1])
        manifest[case] = {
            "slide": CASES[case][0],
            "slide_kwargs": CASES[case][1],
            "patches": out["patches"],
            "tissue_pieces": out["tissue_pieces"],
            "tissue_area_um2": round(out["tissue_area_um2"], 1),
            "mask_shape": list(out["mask"].shape),
        }
        print(f"{case}: {out['patches']} patches, {out['tissue_pieces']} tissue pieces")
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Regenerate the reference features of tests/extractors/test_extract_regression.py.

Run from the project root, with the code whose features are the reference (the features were
first written by the extraction code of the commit before the fast reading pipeline)::

    .venv/bin/python tests/data/extract_reference/make_reference.py

For each case it tiles a real slide of ../shared/slides, keeps a few patches (most of one
4 x 4 block, so block reads are exercised, and a few scattered ones), extracts their
EfficientNet-Lite0 features on the CPU in float32 and saves ``<case>.npz``: ``coords``,
``features`` and ``attrs`` (the coords attributes, as JSON). Regenerate only when the features
are meant to change, and say so in the commit.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SLIDES = ROOT.parent / "shared" / "slides"
sys.path.insert(0, str(ROOT))

from extractors.encoders import create_encoder  # noqa: E402
from extractors.extract import ExtractionOptions, extract_slide  # noqa: E402
from extractors.io import read_coords, read_features, write_coords  # noqa: E402
from extractors.patches import group_into_blocks  # noqa: E402
from extractors.wsi import tiling, tissue  # noqa: E402
from extractors.wsi.reader import Slide  # noqa: E402

#: case -> (slide file, Slide keyword arguments, tiling settings); what each exercises:
#: level 0 with 256 -> 224 area shrink; level 1 (downsample 2.0003) with 128 -> 224 cubic
#: enlargement; JPEG 2000 at level 1 with an MPP override; 486 -> 224 area shrink (a 40x label).
CASES = {
    "cmu_level0": ("cmu-1-small-region.svs", {}, {}),
    "cmu3_level1_upsample": (
        "derived_cmu_small_region_3level.svs",
        {},
        {"target_mpp": 1.0, "patch_size": 128},
    ),
    "tcga_level1": ("tcga-cr-7395-01a-01-ts1.svs", {"mpp_override": 0.25}, {}),
    "gt450_level0_486px": ("gt450-40x.svs", {}, {}),
}
PATCHES_FROM_BLOCK = 16
SCATTERED = 4


def relabelled_40x(folder: Path) -> Path:
    """CMU-1-Small-Region relabelled as a 40x scan (as the ``relabelled_40x_slide`` fixture)."""
    data = (SLIDES / "cmu-1-small-region.svs").read_bytes()
    for old, new in ((b"AppMag = 20", b"AppMag = 40"), (b"MPP = 0.4990", b"MPP = 0.2632")):
        data = data.replace(old, new)
    path = folder / "gt450-40x.svs"
    path.write_bytes(data)
    return path


def pick(coords: np.ndarray, step: int) -> np.ndarray:
    """Indices of most of the fullest 4 x 4 block and a few patches spread over the slide."""
    blocks = group_into_blocks(coords, step, 4)
    fullest = max(blocks, key=len)[:PATCHES_FROM_BLOCK]
    rest = np.setdiff1d(np.arange(len(coords)), fullest)
    spread = rest[np.linspace(0, len(rest) - 1, SCATTERED).round().astype(int)]
    return np.sort(np.concatenate([fullest, spread]))


def jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    encoder = create_encoder("efficientnet_lite0")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for case, (name, slide_kwargs, params) in CASES.items():
            path = relabelled_40x(tmp) if name == "gt450-40x.svs" else SLIDES / name
            with Slide(path, **slide_kwargs) as slide:
                polygons = tissue.segment(slide, tissue.tissue_params()).polygons
                tiling.tile_slide(
                    slide, polygons, tiling.TilingParams(**params), tmp / "all.h5", tmp / "q.jpg"
                )
            coords, attrs = read_coords(tmp / "all.h5")
            chosen = coords[pick(coords, int(attrs["step_level0"]))]
            write_coords(tmp / "c.h5", chosen, np.ones(len(chosen)), attrs)
            options = ExtractionOptions(num_workers=0, device="cpu")
            extract_slide(
                path,
                tmp / "c.h5",
                encoder,
                tmp / "f.h5",
                slide_kwargs=slide_kwargs,
                options=options,
            )
            features, written, _, _ = read_features(tmp / "f.h5")
            assert np.array_equal(written, chosen)
            np.savez_compressed(
                HERE / f"{case}.npz",
                coords=chosen,
                features=features.astype(np.float32),
                attrs=json.dumps({k: jsonable(v) for k, v in attrs.items()}),
            )
            print(
                f"{case}: {len(chosen)} patches, level {attrs['patch_level']}, "
                f"read {attrs['read_size']} px"
            )


if __name__ == "__main__":
    main()

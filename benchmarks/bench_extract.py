"""Feature-extraction throughput: full extraction next to its ceiling (encoder alone) and reading.

All in one run on one generated slide (about 1,000 patches of 256 px at 0.5 µm/px):
- reading: region reads + JPEG decode + cut + resize to the encoder input, no encoder;
- encoder only: the encoder on pre-decoded uint8 tensors (the ceiling on this machine);
- full: ``extract_slide`` (read + decode + resize + encode + write the HDF5).

    python benchmarks/bench_extract.py [--encoder efficientnet_lite0] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from extractors.demo import random_tissue_map, write_synthetic_slide
from extractors.encoders import create_encoder
from extractors.extract import (
    ExtractionOptions,
    extract_slide,
    patch_geometry,
    pick_device,
)
from extractors.io import read_coords
from extractors.patches import PatchBlocks, collate_blocks
from extractors.wsi import tiling, tissue
from extractors.wsi.reader import Slide

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"


def bench_slide() -> tuple[Path, Path]:
    """A generated 12,288 x 8,192 slide with ~60% tissue and its coords (cached)."""
    CACHE.mkdir(exist_ok=True)
    slide_path = CACHE / "extract_12288x8192.svs"
    coords_path = CACHE / "extract_12288x8192.h5"
    if not slide_path.exists():
        label_map = random_tissue_map(
            (256, 384), tissue_fraction=0.6, n_pieces=3, rng=np.random.default_rng(3)
        )
        write_synthetic_slide(slide_path, label_map, level0_size=(12288, 8192), seed=3)
    if not coords_path.exists():
        with Slide(slide_path) as slide:
            polygons = tissue.segment(slide, tissue.tissue_params()).polygons
            tiling.tile_slide(
                slide, polygons, tiling.TilingParams(), coords_path, CACHE / "extract_qc.png"
            )
    return slide_path, coords_path


def read_only(dataset: PatchBlocks, workers: int, batch_blocks: int) -> tuple[float, list]:
    """Seconds to read every patch through the same DataLoader extraction uses; the patches."""
    loader = DataLoader(
        dataset, batch_size=batch_blocks, num_workers=workers, collate_fn=collate_blocks
    )
    start = time.perf_counter()
    batches = [patches for _, patches, _ in loader]
    return time.perf_counter() - start, batches


def encoder_only(encoder, batches: list, device: torch.device) -> float:
    """Seconds to encode pre-decoded batches (the ceiling)."""
    with torch.inference_mode():
        encoder(batches[0].to(device))  # warm-up
        start = time.perf_counter()
        for patches in batches:
            encoder(patches.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--workers", type=int, default=None, help="reader processes (auto)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating ceiling/full runs")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_extract.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(None)

    slide_path, coords_path = bench_slide()
    coords, attrs = read_coords(coords_path)
    encoder = create_encoder(args.encoder, pretrained=args.encoder == "efficientnet_lite0")
    encoder.to(device)
    options = ExtractionOptions(batch_size=args.batch_size, num_workers=args.workers)
    batch_size = options.resolved_batch_size(device)
    workers = options.resolved_workers(device)
    dataset = PatchBlocks(slide_path, {}, coords, patch_geometry(attrs, encoder.spec))
    batch_blocks = max(1, round(batch_size / (len(coords) / len(dataset))))
    n = len(coords)

    read_s, batches = read_only(dataset, workers, batch_blocks)
    read_1core_s, _ = read_only(dataset, 0, batch_blocks)
    # Ceiling and full runs alternate so that machine noise hits both alike; medians reported.
    encode_runs, full_runs = [], []
    for _ in range(args.repeats):
        encode_runs.append(encoder_only(encoder, batches, device))
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            extract_slide(slide_path, coords_path, encoder, Path(tmp) / "f.h5", options=options)
            full_runs.append(time.perf_counter() - start)
    encode_s, full_s = statistics.median(encode_runs), statistics.median(full_runs)

    rows = [
        ("reading, in the main process (1 core)", read_1core_s),
        (f"reading, {workers} worker process(es)", read_s),
        ("encoder only, pre-decoded tensors (ceiling)", encode_s),
        ("full extraction (read+decode+resize+encode+write)", full_s),
    ]
    print(
        f"{n} patches, encoder {args.encoder} on {device}, {args.threads} torch threads, "
        f"{workers} reader processes, median of {args.repeats}\n"
    )
    print(f"{'stage':52} {'seconds':>8} {'patches/s':>10}")
    print("-" * 72)
    for name, seconds in rows:
        print(f"{name:52} {seconds:8.2f} {n / seconds:10.1f}")
    ratio = encode_s / full_s
    print(f"\nfull / ceiling = {ratio:.1%} (runs: ceiling {encode_runs}, full {full_runs})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "patches": n,
        "encoder": args.encoder,
        "device": str(device),
        "threads": args.threads,
        "workers": workers,
        "repeats": args.repeats,
        "batch_size": batch_size,
        "patches_per_s": {name: n / seconds for name, seconds in rows},
        "full_over_ceiling": ratio,
        "encoder_only_runs_s": encode_runs,
        "full_runs_s": full_runs,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

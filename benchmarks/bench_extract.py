"""Feature-extraction throughput: our reading pipeline and extraction against old and TRIDENT-style.

All in one run on one generated slide (about 1,000 patches of 256 px at 0.5 µm/px), variants
alternating run by run so machine noise hits them alike; medians of ``--repeats``:

- reading pipeline (region reads + decode + cut + resize + normalise; the network replaced by a
  channel mean): ours next to the one before it (``OldPatchBlocks`` below reproduces that
  code: a spare pixel per read, per-patch arrays and transposes, unfused normalisation);
- encoder only: the encoder on pre-decoded uint8 tensors (the ceiling on this machine);
- full extraction: ``extract_slide`` (read + decode + resize + encode + write the HDF5) with
  the default reader setting and with one reader worker, the old pipeline, and a TRIDENT-style
  baseline as TRIDENT documents it: a DataLoader with one worker process, one patch per item
  read with OpenSlide ``read_region`` at the level, resized to the input size, ``ToTensor`` +
  ``Normalize`` in the worker, the encoder in the main process (our code, not TRIDENT's).

    python benchmarks/bench_extract.py [--encoder efficientnet_lite0] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openslide
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from extractors.demo import random_tissue_map, write_synthetic_slide
from extractors.devices import pick_device
from extractors.encoders import Encoder, create_encoder
from extractors.extract import ExtractionOptions, extract_slide, patch_geometry
from extractors.io import read_coords, write_coords, write_features
from extractors.patches import PatchBlocks, collate_blocks, prepare_patch
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
                slide, polygons, tiling.TilingParams(), coords_path, CACHE / "extract_qc.jpg"
            )
    return slide_path, coords_path


# --- the pipeline before this change, reproduced as a labelled baseline ------------------------


class OldPatchBlocks(PatchBlocks):
    """The reading of the previous version: one spare pixel per side, per-patch CHW arrays."""

    def _read_block(self, indices: np.ndarray) -> np.ndarray:
        g = self.geometry
        corner = self.coords[indices].min(axis=0)
        extent = self.coords[indices].max(axis=0) - corner + g.patch_size_level0
        size = tuple(int(np.ceil(e / g.downsample)) + 1 for e in extent)
        return self._open().read_region((int(corner[0]), int(corner[1])), g.level, size)

    def __getitem__(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        indices = self.blocks[item]
        region = self._read_block(indices)
        g = self.geometry
        corner = self.coords[indices].min(axis=0)
        patches = []
        for x, y in self.coords[indices]:
            left = int(round((x - corner[0]) / g.downsample))
            top = int(round((y - corner[1]) / g.downsample))
            patch = region[top : top + g.read_size, left : left + g.read_size]
            patches.append(prepare_patch(patch, g.resize_size, g.crop_size))  # (c, h, w) copy
        return indices, np.stack(patches)


def old_collate(items: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, ...]:
    indices = np.concatenate([i for i, _ in items])
    return torch.from_numpy(indices), torch.from_numpy(np.concatenate([p for _, p in items]))


def old_normalise(encoder: Encoder, images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(encoder.spec.mean).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(encoder.spec.std).view(1, 3, 1, 1) * 255.0
    return (images.to(torch.float32) - mean) / std


# --- TRIDENT-style baseline --------------------------------------------------------------------


class OnePatchPerItem(Dataset):
    """One OpenSlide read per patch at the level; PIL resize, ToTensor, Normalize in the worker."""

    def __init__(self, slide_path: Path, coords: np.ndarray, attrs: dict, encoder: Encoder):
        self.slide_path, self.coords = slide_path, coords
        self.level, self.read_size = int(attrs["patch_level"]), int(attrs["read_size"])
        spec = encoder.spec
        self.transform = transforms.Compose(
            [
                transforms.Resize(spec.resize_size or spec.input_size),
                transforms.CenterCrop(spec.input_size),
                transforms.ToTensor(),
                transforms.Normalize(spec.mean, spec.std),
            ]
        )
        self._osr = None

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        if self._osr is None:
            self._osr = openslide.OpenSlide(str(self.slide_path))
        x, y = self.coords[item]
        size = (self.read_size, self.read_size)
        image = self._osr.read_region((int(x), int(y)), self.level, size).convert("RGB")
        return self.transform(image), item


def trident_style(slide_path, coords_path, encoder, out_path, batch_size: int) -> int:
    coords, attrs = read_coords(coords_path)
    device = next(encoder.parameters()).device
    loader = DataLoader(
        OnePatchPerItem(slide_path, coords, attrs, encoder),
        batch_size=batch_size,
        num_workers=1,
        pin_memory=device.type == "cuda",
    )
    features = np.empty((len(coords), encoder.embed_dim), np.float32)
    with torch.inference_mode():
        for images, items in loader:
            embeddings = encoder.spec.embed(encoder.model, images.to(device))
            features[items.numpy()] = embeddings.float().cpu().numpy()
    write_features(out_path, features, coords, attrs, {"encoder": encoder.spec.name}, coords[:0])
    return len(coords)


# --- runs ---------------------------------------------------------------------------------------


def reading_pipeline(loader: DataLoader, normalise: Callable[[torch.Tensor], torch.Tensor]):
    """Read, resize and normalise every patch, the network replaced by a channel mean."""
    for _, patches, *_ in loader:
        normalise(patches).mean(dim=(2, 3))


def old_full(dataset, encoder, out_path, batch_blocks: int, workers: int) -> float:
    loader = DataLoader(
        dataset, batch_size=batch_blocks, num_workers=workers, collate_fn=old_collate
    )
    features = np.empty((len(dataset.coords), encoder.embed_dim), np.float32)
    with torch.inference_mode():
        for indices, patches in loader:
            x = old_normalise(encoder, patches)
            features[indices.numpy()] = encoder.spec.embed(encoder.model, x).numpy()
    write_features(out_path, features, dataset.coords, {}, {}, dataset.coords[:0])


def encoder_only(encoder, batches: list, device: torch.device) -> None:
    """Encode pre-decoded batches (the ceiling)."""
    with torch.inference_mode():
        for patches in batches:
            encoder(patches.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its finished children) of ``run()``."""
    before, start = os.times(), time.perf_counter()
    run()
    wall, after = time.perf_counter() - start, os.times()
    cpu = sum(after[:4]) - sum(before[:4])  # user + system, self + reaped children
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--workers", type=int, default=None, help="our reader processes (auto)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs per variant")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--skip-full", action="store_true", help="reading pipeline only")
    parser.add_argument(
        "--quick", action="store_true", help="leave out the ceiling and the old full extraction"
    )
    parser.add_argument(
        "--max-patches", type=int, default=None, help="the first N patches only (busy machines)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_extract.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(None)

    slide_path, coords_path = bench_slide()
    coords, attrs = read_coords(coords_path)
    if args.max_patches:
        coords = coords[: args.max_patches]
        coords_path = CACHE / f"extract_12288x8192_first{len(coords)}.h5"
        write_coords(coords_path, coords, np.ones(len(coords)), attrs)
    encoder = create_encoder(args.encoder, pretrained=args.encoder == "efficientnet_lite0")
    encoder.to(device)
    options = ExtractionOptions(batch_size=args.batch_size, num_workers=args.workers)
    one_reader = ExtractionOptions(batch_size=args.batch_size, num_workers=1)
    batch_size = options.resolved_batch_size(device)
    workers = options.resolved_workers(device)
    geometry = patch_geometry(attrs, encoder.spec)
    blocks = PatchBlocks(slide_path, {}, coords, geometry)
    batch_blocks = max(1, round(batch_size / (len(coords) / len(blocks))))
    n = len(coords)

    def read_ours() -> None:  # a fresh dataset per run: a fresh slide handle and tile cache
        dataset = PatchBlocks(slide_path, {}, coords, geometry)
        loader = DataLoader(dataset, batch_size=batch_blocks, num_workers=workers,
                            collate_fn=collate_blocks)  # fmt: skip
        reading_pipeline(loader, encoder.normalise)

    def read_old() -> None:
        dataset = OldPatchBlocks(slide_path, {}, coords, geometry)
        loader = DataLoader(dataset, batch_size=batch_blocks, num_workers=workers,
                            collate_fn=old_collate)  # fmt: skip
        reading_pipeline(loader, lambda x: old_normalise(encoder, x))

    loader = DataLoader(blocks, batch_size=batch_blocks, collate_fn=collate_blocks)
    batches = [patches for _, patches, _ in loader]
    encoder_only(encoder, batches[:1], device)  # warm-up
    old, trident = "before (HEAD code, reproduced)", "TRIDENT-style (1 worker, per patch)"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "f.h5"
        variants: dict[str, Callable[[], object]] = {
            f"reading pipeline, {old}": read_old,
            "reading pipeline, ours": read_ours,
        }
        if not args.quick:
            variants["encoder only, pre-decoded tensors (ceiling)"] = lambda: encoder_only(
                encoder, batches, device
            )
        if not args.skip_full:
            variants |= {
                "full extraction, ours (default readers)": lambda: extract_slide(
                    slide_path, coords_path, encoder, out, options=options
                ),
                "full extraction, ours with 1 reader worker": lambda: extract_slide(
                    slide_path, coords_path, encoder, out, options=one_reader
                ),
                f"full extraction, {trident}": lambda: trident_style(
                    slide_path, coords_path, encoder, out, batch_size
                ),
            }
            if not args.quick:
                variants[f"full extraction, {old}"] = lambda: old_full(
                    OldPatchBlocks(slide_path, {}, coords, geometry),
                    encoder,
                    out,
                    batch_blocks,
                    workers,
                )
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for repeat in range(args.repeats):
            # Rotate the order too, so no variant always runs right after the same one.
            names = list(variants)
            names = names[repeat % len(names) :] + names[: repeat % len(names)]
            for name in names:
                runs[name].append(timed(variants[name]))
    wall = {name: statistics.median(w for w, _ in r) for name, r in runs.items()}
    cpu = {name: statistics.median(c for _, c in r) for name, r in runs.items()}

    print(
        f"\n{n} patches, encoder {args.encoder} on {device}, {args.threads} torch threads, "
        f"batch {batch_size}, our reader processes {workers}, median of {args.repeats} "
        "(CPU: user + system of this process and its reader workers)\n"
    )
    print(f"{'variant':54} {'wall s':>7} {'patch/s':>8} {'CPU s':>7}  wall runs")
    print("-" * 104)
    for name in variants:
        spread = " ".join(f"{w:.2f}" for w, _ in runs[name])
        print(f"{name:54} {wall[name]:7.2f} {n / wall[name]:8.1f} {cpu[name]:7.2f}  {spread}")
    pairs = {
        "reading: before / ours (speed-up)": (f"reading pipeline, {old}", "reading pipeline, ours")
    }
    if not args.skip_full:
        pairs |= {
            "full: TRIDENT-style / ours default (>1: ours faster)": (
                f"full extraction, {trident}",
                "full extraction, ours (default readers)",
            ),
            "full: TRIDENT-style / ours 1 worker (>1: ours faster)": (
                f"full extraction, {trident}",
                "full extraction, ours with 1 reader worker",
            ),
        }
        if not args.quick:
            pairs["full: before / ours default (speed-up)"] = (
                f"full extraction, {old}",
                "full extraction, ours (default readers)",
            )
    ratios = {name: wall[a] / wall[b] for name, (a, b) in pairs.items()}
    cpu_ratios = {name: cpu[a] / cpu[b] for name, (a, b) in pairs.items()}
    print(f"\n{'ratio of medians':54} {'wall':>7} {'CPU':>8}")
    for name in pairs:
        print(f"{name:54} {ratios[name]:6.2f}x {cpu_ratios[name]:7.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "patches": n,
        "encoder": args.encoder,
        "device": str(device),
        "threads": args.threads,
        "workers": workers,
        "repeats": args.repeats,
        "batch_size": batch_size,
        "median_wall_s": wall,
        "median_cpu_s": cpu,
        "runs_wall_cpu_s": runs,
        "patches_per_s": {name: n / seconds for name, seconds in wall.items()},
        "ratios_wall": ratios,
        "ratios_cpu": cpu_ratios,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

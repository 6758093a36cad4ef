"""Ours against the tools a user would otherwise pick: ratios of medians, one table.

Segmentation + tiling (20x = 0.5 µm/px, 256 px patches, no overlap, >= 25% tissue) on the two
generated 60,000 x 40,000 slides of ``bench_tiling.py`` and on the real CMU-1-Small-Region:
ours (``bench_tiling.pipeline_seconds``) against hs2p and LazySlide, each installed from PyPI
into its own virtual environment under ``benchmarks/.cache/peers/`` (never the project's) and
run in-process by a runner: this script started with that environment's Python (``--serve``).
Each runner imports its tool before any timing, segments and tiles once untimed (warm-up and
patch-count matching), then times each call inside the process. Each peer's minimum tissue
fraction is tuned so that its patch count lies within -1%..+2% of ours.

Feature extraction on ``bench_extract.bench_slide()`` (~1,000 patches) with EfficientNet-Lite0,
2 torch threads, batch 16: ``extract_slide`` against TRIDENT-style reading (a DataLoader with one
worker process reading one patch per item) and CLAM-style reading (one patch per read in the
main process), both rebuilt here from their documented behaviour (neither is on PyPI); and each
one's reading pipeline alone (the network replaced by a per-channel mean of the batch).

Runs alternate tool by tool (ours, hs2p, lazyslide, ours, ...) so that the noise of a shared
machine hits all alike; ratios are median / median of ours (lower is faster).

    .venv/bin/python benchmarks/bench_peers.py [--repeats 3] [--skip-install]
        [--tools hs2p,lazyslide,trident,clam] [--out benchmarks/results/bench_peers.json]
"""

from __future__ import annotations

# Only the standard library at module level: the runners import this file in peer
# environments that have neither the project nor torch.
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / ".cache" / "peers"

TARGET_MPP = 0.5
PATCH_SIZE = 256
MIN_TISSUE_FRACTION = 0.25
#: Our saturation threshold (``TissueParams.min_saturation``), given to each peer's threshold.
MIN_SATURATION = 15
#: Patch counts of a peer must lie within these relative differences to ours.
COUNT_WINDOW = (-0.01, 0.02)
ENCODER = "efficientnet_lite0"
TORCH_THREADS = 2
BATCH_SIZE = 16

#: pip requirements of each peer (the versions the issue measured).
PEER_PACKAGES = {
    "hs2p": ["hs2p[openslide]==6.1.0"],
    "lazyslide": ["lazyslide==0.13.0", "openslide-python", "openslide-bin"],
}
TILE_TOOLS = ("hs2p", "lazyslide")
EXTRACT_TOOLS = ("trident", "clam")
#: One thread for every library in every tiling runner, as bench_tiling.py measures ours.
ONE_THREAD = {
    name: "1"
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
}


# ---------------------------------------------------------------- tilers (inside a runner)


def ours_tiler():
    """Ours: ``pipeline_seconds`` writes GeoJSON, coords HDF5 and QC PNG, as ``querent tile``."""
    from bench_tiling import pipeline_seconds

    from extractors.wsi import tissue

    params = tissue.tissue_params()

    def run(slide: Path, out: Path, min_fraction: float) -> tuple[int, float]:
        result = pipeline_seconds(slide, params, out)  # settings: TilingParams() defaults
        return result["patches"], result["total_s"]

    return run, None


def hs2p_tiler():
    """hs2p: ``tile_slide`` (segment + tile in memory) + ``save_tiling_result`` (npz + json)."""
    import dataclasses

    import numpy as np
    from hs2p import (
        DEFAULT_MASK_SAMPLING,
        SegmentationConfig,
        SlideSpec,
        TilingConfig,
        save_tiling_result,
        tile_slide,
    )

    tiling = TilingConfig(
        backend="openslide",
        mask_backend="openslide",
        requested_spacing_um=TARGET_MPP,
        requested_tile_size_px=PATCH_SIZE,
        tolerance=0.05,  # our MPP tolerance
        overlap=0.0,
    )
    # Saturation, median blur, fixed threshold, closing: our recipe, at hs2p's own
    # segmentation level (downsample 64 -> the closest pyramid level) and kernel sizes.
    segmentation = SegmentationConfig(method="threshold", sthresh=MIN_SATURATION)

    def call(slide: Path, min_fraction: float):
        masks = dataclasses.replace(DEFAULT_MASK_SAMPLING, min_coverage={"tissue": min_fraction})
        return tile_slide(
            SlideSpec(sample_id=slide.stem, image_path=slide),
            tiling=tiling,
            segmentation=segmentation,
            masks=masks,
            num_workers=1,
        )

    def run(slide: Path, out: Path, min_fraction: float) -> tuple[int, float]:
        start = time.perf_counter()
        result = call(slide, min_fraction)
        save_tiling_result(result, output_dir=out)
        return len(result.x), time.perf_counter() - start

    def calibrate(slide: Path, low: int, high: int) -> float | None:
        # hs2p returns every kept tile's tissue fraction: keep all, then pick the threshold.
        fractions = np.sort(np.asarray(call(slide, 1e-6).tiles.tissue_fractions))[::-1]
        feasible = []
        for k in range(max(low, 1), min(high, len(fractions)) + 1):
            threshold = float(fractions[k - 1])
            if low <= int((fractions >= threshold).sum()) <= high:
                feasible.append(threshold)
        return min(feasible, key=lambda t: abs(t - MIN_TISSUE_FRACTION), default=None)

    return run, calibrate


def lazyslide_tiler():
    """LazySlide: ``open_wsi`` + ``pp.find_tissues`` + ``pp.tile_tissues`` + ``wsi.write()``."""
    import lazyslide as zs
    from wsidata import open_wsi

    def segment(slide: Path, out: Path):
        wsi = open_wsi(slide, store=str(out / f"{slide.stem}.zarr"), reader="openslide")
        # Saturation (to_hsv), median blur, fixed threshold, closing; level "auto" (~4 µm/px).
        zs.pp.find_tissues(wsi, to_hsv=True, filter_artifacts=False, threshold=MIN_SATURATION)
        return wsi

    def tile(wsi, min_fraction: float) -> int:
        # A tile is kept when its background fraction is at most background_fraction.
        zs.pp.tile_tissues(wsi, PATCH_SIZE, mpp=TARGET_MPP, background_fraction=1 - min_fraction)
        return len(wsi.shapes["tiles"]) if "tiles" in wsi.shapes else 0

    def run(slide: Path, out: Path, min_fraction: float) -> tuple[int, float]:
        start = time.perf_counter()
        wsi = segment(slide, out)
        n = tile(wsi, min_fraction)
        wsi.write()
        return n, time.perf_counter() - start

    def calibrate(slide: Path, low: int, high: int) -> float | None:
        with tempfile.TemporaryDirectory() as tmp:
            wsi = segment(slide, Path(tmp))
            lo, hi, fraction = 0.0, 1.0, MIN_TISSUE_FRACTION  # count falls as fraction rises
            for _ in range(14):
                n = tile(wsi, fraction)
                if low <= n <= high:
                    return fraction
                lo, hi = (fraction, hi) if n > high else (lo, fraction)
                fraction = (lo + hi) / 2
        return None

    return run, calibrate


TILERS = {"ours": ours_tiler, "hs2p": hs2p_tiler, "lazyslide": lazyslide_tiler}


def serve(tool: str) -> None:
    """Runner main loop: one JSON request per stdin line, one JSON answer per line."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the tool prints goes to stderr, not into the answers
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    from importlib.metadata import version

    run, calibrate = TILERS[tool]()  # imports the tool: never timed
    answers.write(json.dumps({"version": "" if tool == "ours" else version(tool)}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        slide = Path(request["slide"])
        try:
            with tempfile.TemporaryDirectory() as tmp:
                if request["op"] == "tile":
                    patches, seconds = run(slide, Path(tmp), request["min_fraction"])
                    answer = {"patches": patches, "seconds": seconds}
                else:
                    answer = {"min_fraction": calibrate(slide, request["low"], request["high"])}
        except Exception:  # noqa: BLE001 - reported to the caller, who skips this tool
            answer = {"error": traceback.format_exc(limit=3)}
        answers.write(json.dumps(answer) + "\n")


# ---------------------------------------------------------------- peer environments


def peer_python(tool: str, skip_install: bool) -> tuple[Path | None, str]:
    """The Python of a peer's own venv, created and filled on first use; or None and why."""
    venv = PEERS_DIR / f"{tool}-venv"
    python = venv / "bin" / "python"
    marker = venv / "installed.txt"
    wanted = " ".join(PEER_PACKAGES[tool])
    if not (marker.exists() and marker.read_text() == wanted):
        if skip_install:
            return None, f"not installed in {venv} and --skip-install was given"
        print(f"installing {wanted} into {venv} (once; can take minutes) ...", flush=True)
        PEERS_DIR.mkdir(parents=True, exist_ok=True)
        log = PEERS_DIR / f"{tool}-install.log"
        with log.open("w") as handle:
            steps = [
                [sys.executable, "-m", "venv", "--clear", str(venv)],
                [str(python), "-m", "pip", "install", *PEER_PACKAGES[tool]],
            ]
            for step in steps:
                if subprocess.run(step, stdout=handle, stderr=subprocess.STDOUT).returncode:
                    return None, f"install failed: {' '.join(step)} (see {log})"
        marker.write_text(wanted)
    return python, ""


class Runner:
    """A tiling runner process: ``python bench_peers.py --serve TOOL``."""

    def __init__(self, tool: str, python: Path) -> None:
        env = {**os.environ, **ONE_THREAD, "PYTHONNOUSERSITE": "1"}
        if tool != "ours":
            env.pop("PYTHONPATH", None)
        self.tool = tool
        self.log = (PEERS_DIR / f"{tool}-runner.log").open("w")
        self.process = subprocess.Popen(
            [str(python), str(Path(__file__).resolve()), "--serve", tool],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )
        self.version = self._answer().get("version", "")

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.tool} runner exited; see {self.log.name} in {PEERS_DIR}")
        return json.loads(line)

    def ask(self, **request: object) -> dict:
        """Send one request; wait for its answer."""
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def close(self) -> None:
        """End the runner (it exits when its stdin closes)."""
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.log.close()


# ---------------------------------------------------------------- segmentation + tiling


def bench_tiling(slides: dict[str, Path], tools: list[str], args, skipped: dict) -> list[dict]:
    """Alternating timed runs of ours and each peer on each slide."""
    runners = {"ours": Runner("ours", Path(sys.executable))}
    for tool in tools:
        python, reason = peer_python(tool, args.skip_install)
        if python is None:
            skipped[tool] = reason
            continue
        try:
            runners[tool] = Runner(tool, python)
        except (RuntimeError, json.JSONDecodeError) as err:
            skipped[tool] = f"runner did not start: {err}"
    rows = []
    try:
        for name, slide in slides.items():
            print(f"segmentation + tiling: {name} ...", flush=True)
            rows += tile_one_slide(name, slide, runners, args.repeats)
    finally:
        for runner in runners.values():
            runner.close()
    return rows


def tile_one_slide(name: str, slide: Path, runners: dict, repeats: int) -> list[dict]:
    """Match each peer's patch count to ours (untimed), then alternate timed runs."""
    target = runners["ours"].ask(op="tile", slide=str(slide), min_fraction=MIN_TISSUE_FRACTION)
    target = target["patches"]
    low = int(-(-target * (1 + COUNT_WINDOW[0]) // 1))  # ceil
    high = int(target * (1 + COUNT_WINDOW[1]))
    fractions = {"ours": MIN_TISSUE_FRACTION}
    notes, failed = {}, {}
    for tool in [t for t in runners if t != "ours"]:
        answer = runners[tool].ask(op="calibrate", slide=str(slide), low=low, high=high)
        if "error" in answer:
            failed[tool] = answer["error"]
        elif answer["min_fraction"] is None:
            fractions[tool] = MIN_TISSUE_FRACTION
            notes[tool] = f"no min tissue fraction gives {low}..{high} patches"
        else:
            fractions[tool] = answer["min_fraction"]
    runs = {tool: [] for tool in fractions}
    counts = {}
    for _ in range(repeats):
        for tool in [t for t in runs if t not in failed]:
            answer = runners[tool].ask(op="tile", slide=str(slide), min_fraction=fractions[tool])
            if "error" in answer:
                failed[tool] = answer["error"]
                continue
            runs[tool].append(answer["seconds"])
            counts[tool] = answer["patches"]
    base = statistics.median(runs["ours"])
    rows = []
    for tool in runners:
        row = {"task": f"seg+tile {name}", "tool": tool, "version": runners[tool].version}
        if tool in failed:
            print(f"{tool} failed on {slide}:\n{failed[tool]}", file=sys.stderr)
            last = failed[tool].strip().splitlines()[-1]
            rows.append({**row, "note": f"failed: {last}"})
            continue
        seconds = runs[tool]
        rows.append(
            {
                **row,
                "patches": counts[tool],
                "patch_diff": counts[tool] / target - 1,
                "min_tissue_fraction": fractions[tool],
                "median_s": statistics.median(seconds),
                "ratio": statistics.median(seconds) / base,
                "runs_s": seconds,
                "note": notes.get(tool, ""),
            }
        )
    return rows


# ---------------------------------------------------------------- feature extraction


class OnePatchPerItem:
    """Map-style dataset of TRIDENT's and CLAM's reading: one ``read_region`` per patch.

    The patch is read at the coords' level (the best level for the target magnification),
    resized to the patch size if that level differs, then given to torchvision transforms.
    A plain class (DataLoader needs only ``__len__`` and ``__getitem__``), so this file keeps
    no torch import at module level.
    """

    def __init__(self, slide_path: Path, coords, attrs: dict, transform) -> None:
        self.slide_path = slide_path
        self.coords = coords
        self.level = int(attrs["patch_level"])
        self.read_size = int(attrs["read_size"])
        self.patch_size = int(attrs["patch_size"])
        self.transform = transform
        self.slide = None

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, index: int):
        if self.slide is None:  # opened in the process that reads (a worker, or the main one)
            import openslide

            self.slide = openslide.OpenSlide(str(self.slide_path))
        x, y = (int(v) for v in self.coords[index])
        size = (self.read_size, self.read_size)
        image = self.slide.read_region((x, y), self.level, size).convert("RGB")
        if self.read_size != self.patch_size:
            image = image.resize((self.patch_size, self.patch_size))
        return self.transform(image)


def bench_extraction(tools: list[str], args) -> list[dict]:
    """Alternating timed runs of ``extract_slide`` and the TRIDENT / CLAM reading baselines."""
    import h5py
    import torch
    from bench_extract import bench_slide
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from extractors.encoders import create_encoder
    from extractors.extract import ExtractionOptions, extract_slide, patch_geometry
    from extractors.io import read_coords
    from extractors.patches import PatchBlocks, collate_blocks

    torch.set_num_threads(TORCH_THREADS)
    slide_path, coords_path = bench_slide()
    coords, attrs = read_coords(coords_path)
    encoder = create_encoder(ENCODER)
    spec = encoder.spec
    options = ExtractionOptions(batch_size=BATCH_SIZE)
    device = torch.device("cpu")
    workers = options.resolved_workers(device)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(spec.std).view(1, 3, 1, 1) * 255

    def normalise(images):
        """What our encoder does to uint8 patches before the network (``Encoder.forward``)."""
        if hasattr(encoder, "normalise"):
            return encoder.normalise(images)
        return (images.to(torch.float32) - mean) / std

    to_tensor = transforms.Compose(
        [
            transforms.Resize(spec.input_size),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )

    def network(x):
        return spec.embed(encoder.model, x)

    def reading_sink(x):
        return x.mean(dim=(0, 2, 3))

    def ours(full: bool) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            if full:
                extract_slide(slide_path, coords_path, encoder, Path(tmp) / "f.h5", options=options)
                return time.perf_counter() - start
            dataset = PatchBlocks(slide_path, {}, coords, patch_geometry(attrs, spec))
            per_block = max(1.0, len(coords) / len(dataset))
            loader = DataLoader(
                dataset,
                batch_size=max(1, round(BATCH_SIZE / per_block)),
                num_workers=workers,
                collate_fn=collate_blocks,
            )
            with torch.inference_mode():
                for _, patches, _ in loader:
                    reading_sink(normalise(patches))
            return time.perf_counter() - start

    def baseline(tool: str, full: bool) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            loader = DataLoader(
                OnePatchPerItem(slide_path, coords, attrs, to_tensor),
                batch_size=BATCH_SIZE,
                num_workers=1 if tool == "trident" else 0,
            )
            features = []
            with torch.inference_mode():
                for images in loader:
                    features.append((network if full else reading_sink)(images))
            if full:
                with h5py.File(Path(tmp) / "f.h5", "w") as handle:
                    handle["features"] = torch.cat(features).numpy()
                    handle["coords"] = coords
            return time.perf_counter() - start

    variants = {"ours": ours, **{t: (lambda full, t=t: baseline(t, full)) for t in tools}}
    labels = {"ours": "ours", "trident": "TRIDENT-style", "clam": "CLAM-style"}
    # Warm-up, untimed: the slide in the file cache, each reader's first call, the network's.
    for variant in variants.values():
        variant(False)
    with torch.inference_mode():
        network(torch.zeros(BATCH_SIZE, 3, spec.input_size, spec.input_size))
    rows = []
    for full in (True, False):
        task = "extract full" if full else "extract reading only"
        print(f"{task}: {len(coords)} patches ...", flush=True)
        runs = {tool: [] for tool in variants}
        for _ in range(args.repeats):
            for tool, variant in variants.items():
                runs[tool].append(variant(full))
        base = statistics.median(runs["ours"])
        for tool, seconds in runs.items():
            rows.append(
                {
                    "task": task,
                    "tool": labels[tool],
                    "version": "",
                    "patches": len(coords),
                    "patch_diff": 0.0,
                    "median_s": statistics.median(seconds),
                    "ratio": statistics.median(seconds) / base,
                    "runs_s": seconds,
                    "workers": (workers if tool == "ours" else int(tool == "trident")),
                    "note": "",
                }
            )
    return rows


# ---------------------------------------------------------------- main


def print_table(rows: list[dict], skipped: dict) -> None:
    header = (
        f"{'task':38} {'tool':16} {'patches':>8} {'vs ours':>8} {'min frac':>8} "
        f"{'median s':>9} {'ratio':>6}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    task = None
    for r in rows:
        shown = r["task"] if r["task"] != task else ""
        task = r["task"]
        tool = f"{r['tool']} {r.get('version') or ''}".strip()
        if "median_s" not in r:
            print(f"{shown:38} {tool:16} {r['note']}")
            continue
        diff = "" if r["tool"] == "ours" else f"{r['patch_diff']:+.1%}"
        fraction = f"{r['min_tissue_fraction']:.3f}" if "min_tissue_fraction" in r else ""
        note = f"  ({r['note']})" if r["note"] else ""
        print(
            f"{shown:38} {tool:16} {r['patches']:8d} {diff:>8} {fraction:>8} "
            f"{r['median_s']:9.3f} {r['ratio']:6.2f}{note}"
        )
    for tool, reason in skipped.items():
        print(f"skipped {tool}: {reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-install", action="store_true", help="use peer venvs as found")
    parser.add_argument(
        "--tools",
        default=",".join(TILE_TOOLS + EXTRACT_TOOLS),
        help="comma-separated peers to compare with (ours is always run)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_peers.json")
    parser.add_argument("--serve", choices=sorted(TILERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: no progress bars
    tools = [t for t in args.tools.split(",") if t]
    unknown = sorted(set(tools) - set(TILE_TOOLS + EXTRACT_TOOLS))
    if unknown:
        parser.error(f"unknown tools {unknown}; choose from {TILE_TOOLS + EXTRACT_TOOLS}")

    from bench_tiling import REAL_SLIDE, large_slide

    slides = {
        "60k x 40k ~15% tissue": large_slide(0.15),
        "60k x 40k ~60% tissue": large_slide(0.60),
    }
    if REAL_SLIDE.exists():
        slides["CMU-1-Small-Region"] = REAL_SLIDE
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    skipped: dict[str, str] = {}
    rows = bench_tiling(slides, [t for t in tools if t in TILE_TOOLS], args, skipped)
    rows += bench_extraction([t for t in tools if t in EXTRACT_TOOLS], args)

    print_table(rows, skipped)
    settings = {
        "target_mpp": TARGET_MPP,
        "patch_size": PATCH_SIZE,
        "overlap": 0,
        "min_tissue_fraction": MIN_TISSUE_FRACTION,
        "min_saturation": MIN_SATURATION,
        "count_window": COUNT_WINDOW,
        "tiling_threads": 1,
        "encoder": ENCODER,
        "torch_threads": TORCH_THREADS,
        "batch_size": BATCH_SIZE,
        "repeats": args.repeats,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"settings": settings, "rows": rows, "skipped": skipped}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

"""Patch-feature extraction on the GPU: ours against TRIDENT's own code, like for like.

One encoder object (``efficientnet_lite0``, and ``uni_v1``: a ViT-L/16 in UNI's timm layout;
random weights), one batch size and precision (bf16 autocast on CUDA, fp32 on the CPU), the same
slides and coords for ``extract_slide`` (ours, as the workflow calls it) and TRIDENT's
``OpenSlideWSI.extract_patch_features`` (its reader, transforms from its ``get_eval_transforms``
and worker count; the encoder wrapped in its ``CustomInferenceEncoder``, so nothing downloads;
source from ``gpu_prepare.sh`` in ``.trident/``). Slides: the generated 60k x 40k slide of
``bench_tiling.py`` (its first ``--max-patches`` patches) and the real slides in ``shared/slides``
or ``../shared/slides``, tiled as ``querent tile`` does. After an untimed warm-up of each tool,
runs alternate (the order flips every repeat); medians of ``--repeats``. On CUDA a thread reads
NVML's utilisation every 50 ms during each run. The first ``--check-patches`` patches of the
first slide are extracted again on the CPU in fp32 and compared with the device's features.

    python benchmarks/bench_gpu_extract.py [--max-patches 16384] [--repeats 3]
    python benchmarks/bench_gpu_extract.py --device cpu --quick   # smoke run
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars from the runs

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from extractors.encoders import Encoder, create_encoder  # noqa: E402
from extractors.extract import ExtractionOptions, autocast_dtype, extract_slide  # noqa: E402
from extractors.io import read_coords, write_coords  # noqa: E402
from extractors.wsi import tiling, tissue  # noqa: E402
from extractors.wsi.reader import Slide  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TRIDENT_SRC = ROOT / ".trident"
SLIDE_DIRS = (ROOT / "shared" / "slides", ROOT.parent / "shared" / "slides")
GENERATED = "generated-60kx40k"
#: Real slides: file and MPP override (the TCGA frozen section records none).
REAL_SLIDES = {
    "cmu-1-small-region": ("cmu-1-small-region.svs", None),
    "tcga-cr-7395": ("tcga-cr-7395-01a-01-ts1.svs", 0.5),
}
TOOLS = ("ours", "TRIDENT")
#: Random weights make embeddings nearly parallel (pairwise cosine 0.98 for EfficientNet-Lite0,
#: 0.99999 for the ViT-L, whose layer scales start at 1e-5), so a plain cosine would pass even a
#: wrong patch. The check therefore centres both sides on the mean CPU embedding of the checked
#: patches and compares what depends on the image: its cosine (different patches give -0.4 to
#: -0.98) and the plain relative L2 error. bf16 keeps 8 significant bits; CPU bf16 autocast
#: against fp32 gave a centred cosine of 0.988 (Lite0) and 0.999 (ViT-L) and a relative error
#: of 1.2% on CMU-1-Small-Region, so these bounds leave a margin of 4-8x.
MIN_CENTRED_COSINE = 0.95
MAX_RELATIVE_L2 = 0.1
BUSY_GOAL = 0.9


class SpecEmbedding(nn.Module):
    """An encoder's embedding (``spec.embed``) from normalised images: what TRIDENT calls."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.model, self.embed = encoder.model, encoder.spec.embed

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised float images -> (B, embed_dim)."""
        return self.embed(self.model, images)


def load_trident(source: Path):
    """TRIDENT's package from ``source`` (made by ``gpu_prepare.sh``)."""
    if not (source / "trident" / "__init__.py").is_file():
        sys.exit(f"No TRIDENT source in {source}: run `bash benchmarks/gpu_prepare.sh` first.")
    sys.path.insert(0, str(source))
    # Importing it probes huggingface.co, whose DNS lookup can stall on a machine without a
    # network; nothing is downloaded here, so the probe goes to this host (refused at once).
    saved = os.environ.get("HF_ENDPOINT")
    os.environ["HF_ENDPOINT"] = "http://127.0.0.1"
    try:
        import trident
        from trident.patch_encoder_models.load import CustomInferenceEncoder
        from trident.patch_encoder_models.utils.transform_utils import get_eval_transforms
    finally:
        if saved is None:
            os.environ.pop("HF_ENDPOINT")
        else:
            os.environ["HF_ENDPOINT"] = saved

    return trident, CustomInferenceEncoder, get_eval_transforms


def trident_encoder(encoder: Encoder, precision: torch.dtype, trident_api) -> nn.Module:
    """Our encoder as a TRIDENT ``CustomInferenceEncoder`` with TRIDENT's own transforms."""
    _, custom_encoder, eval_transforms = trident_api
    spec = encoder.spec
    transforms = eval_transforms(
        spec.mean, spec.std, target_img_size=spec.resize_size or spec.input_size, center_crop=True
    )
    return custom_encoder(spec.name, SpecEmbedding(encoder), transforms, precision)


def find_slides(names: list[str]) -> dict[str, tuple[Path, float | None]]:
    """``{name: (path, mpp override)}``; real slides missing from every folder are left out."""
    slides = {}
    for name in names:
        if name == GENERATED:
            saved = os.environ.get("OMP_NUM_THREADS")
            import bench_tiling  # sets OMP_NUM_THREADS for itself; put it back

            if saved is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            slides[name] = (bench_tiling.large_slide(0.6), None)
            continue
        file, mpp = REAL_SLIDES[name]
        found = [folder / file for folder in SLIDE_DIRS if (folder / file).is_file()]
        if found:
            slides[name] = (found[0], mpp)
        else:
            print(f"skipping {name}: {file} is in none of {[str(d) for d in SLIDE_DIRS]}")
    return slides


def tile(path: Path, mpp: float | None, out: Path, max_patches: int | None) -> Path:
    """Tile a slide as ``querent tile`` does; keep its first ``max_patches`` patches."""
    with Slide(path, mpp_override=mpp) as slide:
        polygons = tissue.segment(slide, tissue.tissue_params()).polygons
        tiling.tile_slide(slide, polygons, tiling.TilingParams(), out / "all.h5", out / "qc.jpg")
    return first_patches(out / "all.h5", max_patches, out / "coords.h5")


def first_patches(coords_path: Path, n: int | None, out: Path) -> Path:
    """A coords file of the first ``n`` patches of ``coords_path`` (all if None)."""
    coords, attrs = read_coords(coords_path)
    coords = coords[:n]
    write_coords(out, coords, np.ones(len(coords), np.float32), attrs)
    return out


class BusySampler:
    """GPU busy fraction of a run: NVML's utilisation, read every ``interval`` seconds."""

    def __init__(self, device: torch.device, interval: float = 0.05) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nvml, self.interval = pynvml, interval
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)

    @contextlib.contextmanager
    def sampling(self):
        """Yield a dict that holds ``busy`` (0-1) once the block ends."""
        samples, stop, result = [], threading.Event(), {}

        def loop() -> None:
            while not stop.wait(self.interval):
                samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield result
        finally:
            stop.set()
            thread.join()
            result["busy"] = statistics.mean(samples) / 100 if samples else None


def read_h5_features(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as h5:
        return h5["features"][:].astype(np.float32)


def centred_cosine(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-patch cosine of both sides minus the mean reference embedding."""
    mean = reference.mean(axis=0, dtype=np.float64)
    a, b = features.astype(np.float64) - mean, reference.astype(np.float64) - mean
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, 1e-300)


def agreement(device: np.ndarray, reference: np.ndarray) -> dict:
    """Errors of device features against the CPU fp32 reference (worst patch)."""
    device, reference = device.astype(np.float64), reference.astype(np.float64)
    relative = np.linalg.norm(device - reference, axis=1) / np.linalg.norm(reference, axis=1)
    return {
        "patches": len(reference),
        "max_abs": float(np.abs(device - reference).max()),
        "max_relative_l2": float(relative.max()),
        "min_centred_cosine": float(centred_cosine(device, reference).min()),
    }


def within_tolerance(stats: dict) -> bool:
    """Whether device features match the CPU path within bf16 tolerance."""
    return (
        stats["min_centred_cosine"] >= MIN_CENTRED_COSINE
        and stats["max_relative_l2"] <= MAX_RELATIVE_L2
    )


def cpu_reference(slide, coords_path: Path, encoder: Encoder, n: int, out_dir: Path) -> np.ndarray:
    """Features of the first ``n`` patches by our path on the CPU in fp32."""
    subset = first_patches(coords_path, n, out_dir / "check_coords.h5")
    path, mpp = slide
    on_cpu = copy.deepcopy(encoder).to("cpu").float()
    extract_slide(path, subset, on_cpu, out_dir / "check.h5", slide_kwargs={"mpp_override": mpp})
    return read_h5_features(out_dir / "check.h5")


def runners(encoder: Encoder, device: torch.device, batch_size: int, trident_api) -> dict:
    """``{tool: run(slide, coords_path, out_dir) -> features path}``, one encoder for both."""
    precision = autocast_dtype(device) or torch.float32
    theirs = trident_encoder(encoder, precision, trident_api)
    device_name = f"cuda:{device.index or 0}" if device.type == "cuda" else "cpu"

    def ours(slide, coords_path: Path, out_dir: Path) -> Path:
        out = out_dir / "ours.h5"
        options = ExtractionOptions(batch_size=batch_size)
        extract_slide(slide[0], coords_path, encoder, out, slide_kwargs={"mpp_override": slide[1]},
                      options=options)  # fmt: skip
        return out

    def trident(slide, coords_path: Path, out_dir: Path) -> Path:
        wsi = trident_api[0].OpenSlideWSI(slide_path=str(slide[0]), lazy_init=False, mpp=slide[1])
        out = wsi.extract_patch_features(theirs, str(coords_path), str(out_dir / "trident"),
                                         device=device_name, batch_limit=batch_size)  # fmt: skip
        return Path(out)

    return {"ours": ours, "TRIDENT": trident}


def bench_encoder(name, slides, coords, args, device, trident_api, sampler, work) -> tuple:
    """Rows of one encoder over every slide, and its agreement with the CPU path."""
    torch.manual_seed(0)
    encoder = create_encoder(name, pretrained=False).to(device)
    run = runners(encoder, device, args.batch_size, trident_api)
    first = next(iter(slides))
    warm = first_patches(coords[first], 2 * args.batch_size, work / "warm.h5")
    for tool in TOOLS:  # untimed: kernel choice, first reads of the file
        run[tool](slides[first], warm, work / f"warm_{tool}")
    rows, outputs = [], {}
    for slide_name, slide in slides.items():
        runs = {tool: [] for tool in TOOLS}
        for repeat in range(args.repeats):
            for tool in TOOLS if repeat % 2 == 0 else TOOLS[::-1]:
                out_dir = work / f"{name}_{slide_name}_{tool}".replace(" ", "_")
                with sampler.sampling() if sampler else contextlib.nullcontext({}) as busy:
                    start = time.perf_counter()
                    outputs[slide_name, tool] = run[tool](slide, coords[slide_name], out_dir)
                    seconds = time.perf_counter() - start
                runs[tool].append((seconds, busy.get("busy")))
        ours = read_h5_features(outputs[slide_name, "ours"])
        for tool in TOOLS:
            seconds, busy = zip(*runs[tool], strict=True)
            similar = centred_cosine(read_h5_features(outputs[slide_name, tool]), ours)
            rows.append({
                "slide": slide_name, "patches": len(ours), "encoder": name, "tool": tool,
                "patches_per_s": len(ours) / statistics.median(seconds),
                "runs_s": [round(s, 3) for s in seconds],
                "gpu_busy": None if None in busy else statistics.median(busy),
                "centred_cosine_to_ours": float(np.median(similar)),
            })  # fmt: skip
        print(f"  {name} on {slide_name}: done", flush=True)
    n_check = min(args.check_patches, len(read_coords(coords[first])[0]))
    reference = cpu_reference(slides[first], coords[first], encoder, n_check, work)
    stats = agreement(read_h5_features(outputs[first, "ours"])[:n_check], reference)
    return rows, {"slide": first, **stats, "within_tolerance": within_tolerance(stats)}


def goals(rows: list[dict], checks: dict[str, dict], busy_slide: str) -> list[dict]:
    """The issue's goals: speed against TRIDENT, GPU busy for the ViT-L, CPU agreement."""
    speed = {(r["encoder"], r["slide"], r["tool"]): r for r in rows}
    out = []
    for encoder in dict.fromkeys(r["encoder"] for r in rows):
        ratios = {
            slide: round(row["patches_per_s"] / speed[e, slide, "TRIDENT"]["patches_per_s"], 3)
            for (e, slide, tool), row in speed.items()
            if e == encoder and tool == "ours"
        }
        goal = f"{encoder}: ours patches/s >= TRIDENT's on every slide (ours / TRIDENT)"
        out.append({"goal": goal, "met": min(ratios.values()) >= 1, "value": ratios})
    if ("uni_v1", busy_slide, "ours") in speed:
        busy = speed["uni_v1", busy_slide, "ours"]["gpu_busy"]
        goal = f"ViT-L/16 (uni_v1): GPU busy >= {BUSY_GOAL:.0%} of our runs on {busy_slide}"
        out.append(
            {"goal": goal, "met": None if busy is None else busy >= BUSY_GOAL, "value": busy}
        )
    goal = (
        f"device features = CPU fp32 path within bf16 tolerance (centred cosine >= "
        f"{MIN_CENTRED_COSINE}, relative L2 <= {MAX_RELATIVE_L2})"
    )
    met = all(c["within_tolerance"] for c in checks.values())
    return [*out, {"goal": goal, "met": met, "value": checks}]


def print_table(result: dict) -> None:
    print(
        f"\nextraction on {result['device']}: batch {result['batch_size']}, "
        f"{result['precision']}, median of {result['repeats']}\n"
    )
    print(
        f"{'slide':20} {'patches':>7} {'encoder':18} {'tool':8} {'patch/s':>8} {'GPU busy':>8} "
        f"{'cos~ours':>8}  runs s"
    )
    for r in result["rows"]:
        busy = "-" if r["gpu_busy"] is None else f"{r['gpu_busy']:.0%}"
        runs = " ".join(f"{s:.2f}" for s in r["runs_s"])
        print(
            f"{r['slide']:20} {r['patches']:7d} {r['encoder']:18} {r['tool']:8} "
            f"{r['patches_per_s']:8.1f} {busy:>8} {r['centred_cosine_to_ours']:8.4f}  {runs}"
        )
    for goal in result["goals"]:
        met = {True: "MET", False: "NOT MET", None: "not measured"}[goal["met"]]
        print(f"[{met}] {goal['goal']}: {json.dumps(goal['value'])}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda, cpu (default: cuda if present)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tool and slide")
    parser.add_argument("--max-patches", type=int, default=16384, help="first N per slide")
    parser.add_argument("--encoders", nargs="+", default=["efficientnet_lite0", "uni_v1"])
    slides = [GENERATED, *REAL_SLIDES]
    parser.add_argument("--slides", nargs="+", default=slides, choices=slides)
    parser.add_argument("--batch-size", type=int, default=256, help="both tools")
    parser.add_argument("--check-patches", type=int, default=16, help="CPU fp32 reference (>=2)")
    parser.add_argument("--trident-src", type=Path, default=TRIDENT_SRC)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: efficientnet_lite0, CMU-1-Small-Region, 32 patches, 1 repeat, 4 checked",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu_extract.json")
    args = parser.parse_args()
    if args.quick:
        args.encoders, args.slides = ["efficientnet_lite0"], ["cmu-1-small-region"]
        args.max_patches, args.repeats, args.check_patches = 32, 1, 4
    return args


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    trident_api = load_trident(args.trident_src)
    slides = find_slides(args.slides)
    if not slides:
        sys.exit("no slide to run on")
    sampler = BusySampler(device) if device.type == "cuda" else None
    rows, checks, coords = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, (path, mpp) in slides.items():
            (work / "tiles" / name).mkdir(parents=True)
            coords[name] = tile(path, mpp, work / "tiles" / name, args.max_patches)
        print(f"slides ready in {time.perf_counter() - start:.0f} s", flush=True)
        for name in args.encoders:
            more, checks[name] = bench_encoder(
                name, slides, coords, args, device, trident_api, sampler, work
            )
            rows += more
    largest = max(rows, key=lambda r: r["patches"])["slide"]
    precision = autocast_dtype(device)
    commit = args.trident_src / "COMMIT"
    from trident.IO import get_num_workers

    result = {
        "benchmark": "extract",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch_size": args.batch_size,
        "precision": "bf16 autocast" if precision == torch.bfloat16 else str(precision or "fp32"),
        "repeats": args.repeats,
        "workers": {
            "ours": ExtractionOptions().resolved_workers(device),
            "TRIDENT": get_num_workers(args.batch_size),
        },
        "trident_commit": commit.read_text().strip() if commit.is_file() else None,
        "rows": rows,
        "goals": goals(rows, checks, largest),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    tmp_out.write_text(json.dumps(result, indent=2))
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out} ({result['seconds']} s in all)")


if __name__ == "__main__":
    main()

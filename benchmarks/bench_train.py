"""Training speed: features streamed from disk vs held in memory.

Seconds per epoch of ``train_fold`` (the code the workflow runs) for ``abmil`` and ``querent``
on synthetic cohorts of about 2k and 20k patches per slide with 1024-d features (UNI's width),
whole bags (no ``max_patches``), one slide per step. Streamed epochs read every bag from its
HDF5 file (the device feed's threads read the features, on CUDA into pinned memory, copied on
a side stream; loader workers read the coordinates); in-memory epochs read each bag once. The
two modes alternate run by run; a run's figure is the median of its epochs after the first
(which fills the memory cache), the table gives the median over runs and the ratio (goal:
streaming within 10% of in memory, I/O hidden behind compute).

The cohort is written once per size: ``--slides`` slides (default: 10 of 2k, 3 of 20k), whose
features are copies of up to 8 distinct synthetic slides (distinct files, so every read is a
real read), stored as ``--dtype``.

    python benchmarks/bench_train.py [--repeats 3] [--threads 1] [--device cuda] [--workers 4]
    python benchmarks/bench_train.py --device cuda --slides 100 --repeats 1 --workers 2 --out X
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import pandas as pd
import torch

from extractors.devices import pick_device
from querent.data.cohort import CohortSettings, read_cohort
from querent.data.synthetic import write_synthetic_cohort
from querent.engine.experiment import match_features
from querent.engine.runs import model_run
from querent.engine.train import train_fold

HERE = Path(__file__).resolve().parent
SIZES = {"2k": (1900, 2100), "20k": (19000, 21000)}  # name -> patches per slide
DEFAULT_SLIDES = {"2k": 10, "20k": 3}
DISTINCT = 8  # distinct synthetic slides the cohort's files copy
MODELS = {
    "abmil": {"arch": "abmil"},
    "querent": {"arch": "querent", "region_size": 4, "top_k": 8},
}
GOAL = 1.10  # streamed epoch over in-memory epoch


def write_cohort(folder: Path, slides: int, patches: tuple[int, int], dtype: str) -> Path:
    """``slides`` feature files (``dtype``) of up to :data:`DISTINCT` sources and their sheet."""
    write_synthetic_cohort(
        folder / "source", n_cases=min(slides, DISTINCT), n_patches=patches, dim=1024, seed=1
    )
    sources = []
    for path in sorted((folder / "source" / "features").glob("*.h5"))[:DISTINCT]:
        with h5py.File(path) as h5:
            sources.append(
                (h5["features"][:].astype(dtype), h5["coords"][:], dict(h5["coords"].attrs))
            )
            feature_attrs = dict(h5["features"].attrs)
        path.unlink()
    (folder / "features").mkdir()
    rows = []
    for i in range(slides):
        features, coords, coords_attrs = sources[i % len(sources)]
        with h5py.File(folder / "features" / f"s{i:03d}.h5", "w") as h5:
            h5.create_dataset("features", data=features).attrs.update(feature_attrs)
            h5.create_dataset("coords", data=coords).attrs.update(coords_attrs)
        rows.append((f"s{i:03d}", f"c{i:03d}", ("neg", "pos")[i % 2]))
    sheet = folder / "cohort.csv"
    pd.DataFrame(rows, columns=["slide_id", "case_id", "label"]).to_csv(sheet, index=False)
    return sheet


def epoch_seconds(run, cohort, files, out: Path, in_memory: bool, args) -> float:
    """Median seconds of the epochs after the first (the first fills the memory cache)."""
    train_fold(
        run,
        cohort,
        files,
        cohort.slide_ids,
        [],
        out,
        encoder="bench",
        fold=0,
        device=args.device,
        workers=args.workers,
        in_memory=in_memory,
    )
    seconds = pd.read_csv(out / "history.csv")["seconds"].tolist()
    return statistics.median(seconds[1:])


def measure(size: str, args, rows: list[dict]) -> None:
    """Add the rows of one cohort size (each model's streamed and in-memory epochs) to ``rows``.

    The record is written after each row, so a run stopped by a time limit keeps its rows.
    """
    slides = args.slides or DEFAULT_SLIDES[size]
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        started = time.perf_counter()
        sheet = write_cohort(Path(tmp), slides, SIZES[size], args.dtype)
        written = time.perf_counter() - started
        cohort = read_cohort(sheet, CohortSettings())
        cohort, files = match_features(cohort, Path(tmp) / "features", "error")
        for name in args.models:
            training = {"epochs": args.epochs, "max_patches": None, "patience": None}
            run = model_run(name, MODELS[name], training)
            times = {"streamed": [], "in_memory": []}
            for repeat in range(args.repeats):
                for mode in times:
                    out = Path(tmp) / f"{name}_{mode}_{repeat}"
                    times[mode].append(
                        epoch_seconds(run, cohort, files, out, mode == "in_memory", args)
                    )
            streamed, memory = (statistics.median(times[m]) for m in ("streamed", "in_memory"))
            rows.append(
                {
                    "model": name,
                    "patches_per_slide": size,
                    "slides": len(files),
                    "dtype": args.dtype,
                    "workers": args.workers,
                    "runs": args.repeats,
                    "epochs_timed": args.epochs - 1,
                    "disk_s_per_epoch": round(streamed, 3),
                    "memory_s_per_epoch": round(memory, 3),
                    "disk_over_memory": round(streamed / memory, 3),
                    "cohort_write_s": round(written, 1),
                }
            )
            print(rows[-1], flush=True)
            write_record(rows, args)


def write_record(rows: list[dict], args) -> Path:
    """Write the JSON record of ``rows`` (atomic); its path."""
    device = pick_device(args.device)
    record = {
        "benchmark": "train_io",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "rows": rows,
        "goals": [
            {
                "goal": f"{r['model']} {r['patches_per_slide']}: epoch from disk <= "
                f"{GOAL:.2f} x from memory ({r['slides']} slides)",
                "met": r["disk_over_memory"] <= GOAL,
                "value": r["disk_over_memory"],
            }
            for r in rows
        ],
    }
    out = args.out or HERE / "results" / f"bench_train_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode (default: 3)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run, >= 2 (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--device", help="cuda or cpu (default: CUDA if available)")
    parser.add_argument(
        "--workers", type=int, default=1, help="loader processes when streaming (default: 1)"
    )
    parser.add_argument("--slides", type=int, help="slides per cohort (default: 10 / 3)")
    parser.add_argument("--sizes", default="2k,20k", help="patches per slide (default: 2k,20k)")
    parser.add_argument("--models", default="abmil,querent", help="(default: abmil,querent)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--scratch", help="folder of the cohorts (default: the system's temp)")
    parser.add_argument("--out", type=Path, help="JSON (default: results/bench_train_{dev}.json)")
    args = parser.parse_args()
    args.models = args.models.split(",")
    if args.epochs < 2 or not set(args.models) <= set(MODELS):
        parser.error(f"--epochs must be >= 2 and --models among {sorted(MODELS)}")
    torch.set_num_threads(args.threads)
    started, rows = time.perf_counter(), []
    for size in args.sizes.split(","):
        measure(size, args, rows)
    table = pd.DataFrame(rows).drop(columns=["dtype", "runs"])
    table[f"goal <= {GOAL:.2f}"] = table["disk_over_memory"] <= GOAL
    print(table.to_string(index=False))
    print(f"total {time.perf_counter() - started:.0f} s; written: {write_record(rows, args)}")


if __name__ == "__main__":
    main()

"""Training speed: features streamed from disk by a reader process vs held in memory.

Seconds per epoch of ``train_fold`` (the code the workflow runs) for ``abmil`` and ``querent``
on synthetic cohorts of about 2k and 20k patches per slide with 1024-d features (UNI's width),
whole bags (no ``max_patches``), one slide per step. Streamed epochs read every bag from its
HDF5 file in a loader worker while the model trains; in-memory epochs read each bag once. The
two modes alternate run by run and the table gives medians and their ratio (goal: streaming
within 10% of in memory, I/O hidden behind compute).

    python benchmarks/bench_train.py [--repeats 3] [--threads 1] [--device cuda] [--workers 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import pandas as pd
import torch

from extractors.devices import pick_device
from querent.data.cohort import CohortSettings, read_cohort
from querent.data.synthetic import write_synthetic_cohort
from querent.engine.experiment import match_features
from querent.engine.runs import model_run
from querent.engine.train import train_fold

HERE = Path(__file__).resolve().parent
SETTINGS = {  # name -> (cases, patches per slide)
    "2k": (8, (1900, 2100)),
    "20k": (3, (19000, 21000)),
}
MODELS = {
    "abmil": {"arch": "abmil"},
    "querent": {"arch": "querent", "region_size": 4, "top_k": 8},
}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode (default: 3)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--device", help="cuda or cpu (default: CUDA if available)")
    parser.add_argument(
        "--workers", type=int, default=1, help="reader processes when streaming (default: 1)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size, (cases, patches) in SETTINGS.items():
            sheet = write_synthetic_cohort(
                Path(tmp) / size, n_cases=cases, n_patches=patches, dim=1024, seed=1
            )
            cohort = read_cohort(sheet, CohortSettings())
            cohort, files = match_features(cohort, Path(tmp) / size / "features", "error")
            for name, spec in MODELS.items():
                training = {"epochs": args.epochs, "max_patches": None, "patience": None}
                run = model_run(name, spec, training)
                times = {"streamed": [], "in_memory": []}
                for repeat in range(args.repeats):
                    for mode in ("streamed", "in_memory"):
                        out = Path(tmp) / f"{size}_{name}_{mode}_{repeat}"
                        times[mode].append(
                            epoch_seconds(run, cohort, files, out, mode == "in_memory", args)
                        )
                streamed = statistics.median(times["streamed"])
                memory = statistics.median(times["in_memory"])
                rows.append(
                    {
                        "patches_per_slide": size,
                        "slides": len(files),
                        "model": name,
                        "streamed_s_per_epoch": round(streamed, 3),
                        "in_memory_s_per_epoch": round(memory, 3),
                        "streamed_over_in_memory": round(streamed / memory, 3),
                    }
                )
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    device = pick_device(args.device)
    record = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": args.threads,
        "workers": args.workers,
        "repeats": args.repeats,
        "rows": rows,
    }
    out = HERE / "results" / f"bench_train_{device.type}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()

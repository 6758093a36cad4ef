"""Training threads: seconds per epoch with 1 and 2 torch threads, on a quiet and a busy CPU.

``train_fold`` (the code the workflow runs) for ``abmil`` and ``querent`` on synthetic cohorts
of 8 slides with 1280-d features (the default encoder's width) at about 200 patches per slide
(the demo's bags), 2k and 8k (the default ``max_patches``). Each setting runs once with the
CPU otherwise idle and once beside a process that keeps one core busy (a shared laptop, or a
cluster node whose other job is running), which is where OpenMP threads that wait on each
other cost the most. ``chosen`` is what :func:`querent.engine.threads.intra_op_threads` picks
for a job granted 2 cores in that state.

    python benchmarks/bench_threads.py [--epochs 3] [--sizes 200 2000 8000]

Writes ``benchmarks/results/threads.csv`` (the table) and ``bench_threads.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from querent.data.cohort import CohortSettings, read_cohort
from querent.data.synthetic import write_synthetic_cohort
from querent.engine.experiment import match_features
from querent.engine.runs import model_run
from querent.engine.threads import intra_op_threads
from querent.engine.train import train_fold

HERE = Path(__file__).resolve().parent
MODELS = {
    "abmil": {"arch": "abmil"},
    "querent": {"arch": "querent", "region_size": 4, "top_k": 8},
}


def _spin(seconds: float) -> None:
    """Keep one core busy for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def epoch_seconds(run, cohort, files, out: Path) -> float:
    """Median seconds of the epochs after the first."""
    train_fold(
        run, cohort, files, cohort.slide_ids, [], out, encoder="synthetic", fold=0, workers=0
    )
    return statistics.median(pd.read_csv(out / "history.csv")["seconds"].tolist()[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default: 3)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000, 8000])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            patches = (int(size * 0.9), int(size * 1.1))
            sheet = write_synthetic_cohort(
                Path(tmp) / str(size), n_cases=8, n_patches=patches, dim=1280, seed=1
            )
            cohort = read_cohort(sheet, CohortSettings())
            cohort, files = match_features(cohort, Path(tmp) / str(size) / "features", "error")
            for name, spec in MODELS.items():
                run = model_run(name, spec, {"epochs": args.epochs, "patience": None})
                for busy in (False, True):
                    seconds, chosen = {}, []
                    for threads in (1, 2):
                        torch.set_num_threads(threads)
                        spinner = None
                        if busy:
                            spinner = multiprocessing.Process(target=_spin, args=(3600,))
                            spinner.start()
                            time.sleep(0.5)
                        try:
                            out = Path(tmp) / f"{size}_{name}_{busy}_{threads}"
                            chosen.append(intra_op_threads(2))
                            seconds[threads] = epoch_seconds(run, cohort, files, out)
                        finally:
                            if spinner is not None:
                                spinner.terminate()
                                spinner.join()
                    rows.append(
                        {
                            "patches": size,
                            "model": name,
                            "cpu": "busy" if busy else "quiet",
                            "s_1_thread": round(seconds[1], 3),
                            "s_2_threads": round(seconds[2], 3),
                            "2_over_1": round(seconds[2] / seconds[1], 2),
                            "chosen": max(chosen),
                        }
                    )
                    print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    table.to_csv(HERE / "results" / "threads.csv", index=False)
    record = {"cpu": os.cpu_count(), "processor": _processor(), "rows": rows}
    out = HERE / "results" / "bench_threads.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {out} and threads.csv")


def _processor() -> str:
    """The CPU model, where Linux says it."""
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()

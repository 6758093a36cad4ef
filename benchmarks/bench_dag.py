"""How long `snakemake -n` takes to plan a 500-slide cohort (DAG construction and its checks).

One small real pyramidal SVS (about 1,000 x 800 px) is generated and copied 500 times into a
slide folder, with a slide sheet and a cohort sheet for the same slides. Each scenario runs
`snakemake -n` in a fresh copy of the workflow:

- cold: nothing cached yet (the registries are read by a subprocess that imports torch, and
  every slide's header is read once for its MPP);
- warm: the same command again (registries and slide metadata from .snakemake/querent/).

    python benchmarks/bench_dag.py [--slides 500] [--repeats 3]

Prints a table and writes benchmarks/results/bench_dag.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from extractors.demo import random_tissue_map, write_synthetic_slide

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORKFLOW_FILES = ("Snakefile", "config.yaml", "environment.yml", "workflow", "profiles")


def make_cohort(folder: Path, n_slides: int) -> dict[str, Path]:
    """``n_slides`` copies of one small SVS, a slide sheet and a cohort sheet for them."""
    slides = folder / "slides"
    slides.mkdir(parents=True)
    first = slides / "slide_0000.svs"
    label_map = random_tissue_map(
        (25, 32), tissue_fraction=0.5, n_pieces=2, rng=np.random.default_rng(0)
    )
    write_synthetic_slide(first, label_map, level0_size=(1024, 800), downsamples=(1, 4))
    ids = [f"slide_{i:04d}" for i in range(n_slides)]
    for slide_id in ids[1:]:
        shutil.copy(first, slides / f"{slide_id}.svs")
    pd.DataFrame({"path": [str(slides / f"{s}.svs") for s in ids], "slide_id": ids}).to_csv(
        folder / "slides.csv", index=False
    )
    cases = [f"case_{i // 2:04d}" for i in range(n_slides)]  # two slides a case
    labels = ["A" if int(case[-4:]) % 2 else "B" for case in cases]
    pd.DataFrame({"slide_id": ids, "case_id": cases, "label": labels}).to_csv(
        folder / "cohort.csv", index=False
    )
    return {"dir": slides, "sheet": folder / "slides.csv", "cohort": folder / "cohort.csv"}


def project(folder: Path, config: dict) -> Path:
    """A copy of the workflow with ``config`` as bench.yaml."""
    folder.mkdir(parents=True)
    for name in WORKFLOW_FILES:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, folder / name)
    (folder / "bench.yaml").write_text(yaml.safe_dump(config))
    return folder


def dry_run(folder: Path) -> tuple[float, int]:
    """Seconds of one `snakemake -n` and the jobs it planned."""
    command = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile"]
    start = time.perf_counter()
    result = subprocess.run(
        [*command, "bench.yaml"], cwd=folder, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(result.stdout[-3000:] + result.stderr[-3000:])
    total = [line for line in result.stdout.splitlines() if line.startswith("total")]
    return seconds, int(total[-1].split()[1]) if total else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3, help="warm runs per scenario")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_dag_") as tmp:
        tmp = Path(tmp)
        inputs = make_cohort(tmp / "cohort", args.slides)
        own = {"demo": {"enabled": "auto"}}
        scenarios = {
            "slide folder, no cohort (stops at features)": {
                **own,
                "slides": {"dir": str(inputs["dir"])},
            },
            "slide folder + mpp_default": {
                **own,
                "slides": {"dir": str(inputs["dir"]), "mpp_default": 0.5},
            },
            "slide sheet + cohort sheet (5 folds x 2 models)": {
                **own,
                "slides": {"sheet": str(inputs["sheet"])},
                "cohort": {"sheet": str(inputs["cohort"])},
            },
        }
        rows = []
        for i, (name, config) in enumerate(scenarios.items()):
            folder = project(tmp / f"project_{i}", config)
            cold, jobs = dry_run(folder)
            warm = [dry_run(folder)[0] for _ in range(args.repeats)]
            rows.append(
                {
                    "scenario": name,
                    "slides": args.slides,
                    "jobs": jobs,
                    "cold_s": round(cold, 2),
                    "warm_median_s": round(statistics.median(warm), 2),
                    "warm_s": [round(w, 2) for w in warm],
                }
            )
            print(rows[-1], flush=True)

    table = pd.DataFrame(rows).drop(columns="warm_s")
    print(table.to_string(index=False))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "bench_dag.json"
    out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

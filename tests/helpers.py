"""Helpers shared by the tests that run the Snakemake workflow or the CLI for real."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
#: The real slides beside the checkout (see its README); tests skip without them.
SHARED_SLIDES = ROOT.parent / "shared" / "slides"
#: What a copy of the workflow needs.
WORKFLOW_FILES = ("Snakefile", "config.yaml", "environment.yml", "workflow", "profiles")
#: The committed tiny test config.
TINY_CONFIG = ROOT / "tests" / "workflow" / "config.yaml"


def shared_slide(name: str) -> Path:
    """A real slide from ../shared/slides, or skip when that folder is absent."""
    path = SHARED_SLIDES / name
    if not path.is_file():
        pytest.skip(f"real slide {path} not available (../shared/slides is absent)")
    return path


def workflow_copy(path: Path) -> Path:
    """A copy of the repository's workflow in ``path`` with the tiny test config beside it."""
    path.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, path / name)
    shutil.copy(TINY_CONFIG, path / "tiny.yaml")
    return path


def snakemake_command(*args: str, files: tuple[str, ...] = ("tiny.yaml",)) -> list[str]:
    """The command line of a Snakemake run with the tiny config (and ``files`` after it)."""
    # the arguments (targets included) go before --configfile, which takes every word after it
    return [sys.executable, "-m", "snakemake", "--cores", "2", *args, "--configfile", *files]


def snakemake(project: Path, *args: str, config: dict | None = None) -> tuple[int, str]:
    """Run Snakemake with the tiny config in ``project``: exit code and everything it printed.

    ``config`` is a second config file (``override.yaml``), merged into the tiny config key by
    key, as a user's extra ``--configfile`` would be.
    """
    files = ["tiny.yaml"]
    if config:
        (project / "override.yaml").write_text(yaml.safe_dump(config))
        files.append("override.yaml")
    result = subprocess.run(
        snakemake_command(*args, files=tuple(files)),
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    return result.returncode, result.stdout


def job_counts(output: str) -> dict[str, int]:
    """Jobs per rule from Snakemake's "Job stats" table."""
    counts, in_table = {}, False
    for line in output.splitlines():
        if line.startswith("job "):
            in_table = True
        elif in_table and line.strip() and not line.startswith("-"):
            name, count = line.split()
            if name == "total":
                break
            counts[name] = int(count)
    return counts


def default_config(**sections: dict) -> dict:
    """The shipped config.yaml with ``sections`` merged in key by key, defaults filled in and
    validated against the schema, as Snakemake hands it to the workflow."""
    from snakemake.utils import validate

    from querent.schemas import CONFIG_SCHEMA

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values} if isinstance(values, dict) else values
    validate(config, str(CONFIG_SCHEMA))
    return config


#: Small model runs that the trainer tests train on the synthetic cohort.
TRAIN_RUNS = {
    "abmil": {"arch": "abmil", "dim": 16, "attention_dim": 8},
    "querent": {"arch": "querent", "dim": 16, "heads": 2, "region_size": 2, "top_k": 3},
}


def synthetic_fold(synthetic_cohort, task: str = "classification"):
    """Fold 0 of 3 of the synthetic cohort: (cohort, files, train, val, evaluate)."""
    from querent.data.cohort import CohortSettings, read_cohort
    from querent.data.splits import SplitSettings, fold_slides, make_splits
    from querent.engine.experiment import match_features

    sheet, folder = synthetic_cohort
    cohort = read_cohort(sheet, CohortSettings(task=task))
    cohort, files = match_features(cohort, folder, "error")
    splits = make_splits(cohort, SplitSettings(folds=3))
    train, val, evaluate = fold_slides(splits, cohort, 0, val_fraction=0.2, seed=0)
    return cohort, files, train, val, evaluate


def train_synthetic(
    synthetic_cohort, out, arch: str = "abmil", task: str = "classification", **training
) -> Path:
    """Train one of :data:`TRAIN_RUNS` on :func:`synthetic_fold`; its ``model.pt``."""
    from querent.engine.runs import model_run
    from querent.engine.train import train_fold

    cohort, files, train, val, _ = synthetic_fold(synthetic_cohort, task)
    run = model_run(arch, TRAIN_RUNS[arch], {"epochs": 4, "max_patches": 50, **training})
    return train_fold(run, cohort, files, train, val, out, encoder="synthetic", fold=0)


def float16_copies(files: dict[str, Path], folder: Path) -> dict[str, Path]:
    """Copies of synthetic feature ``files`` in ``folder`` whose features are stored as float16."""
    import h5py
    import numpy as np

    from querent.data.synthetic import _write_bag

    halves = {}
    for slide, path in files.items():
        with h5py.File(path) as h5:
            features, coords = h5["features"][:], h5["coords"][:]
        halves[slide] = folder / f"{slide}.h5"
        _write_bag(halves[slide], features.astype(np.float16), coords // 256, "synthetic")
    return halves

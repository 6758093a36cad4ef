"""Kill the whole run (SIGKILL) mid-extraction and mid-training; the same command finishes it.

Finished slides and folds are not recomputed, nothing partial passes for complete, and the
outputs equal those of the uninterrupted tiny run (``tiny_run``).
"""

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.helpers import job_counts, snakemake, snakemake_command, workflow_copy

pytestmark = pytest.mark.integration

FEATURES = "results/features/efficientnet_lite0"
MODELS = "results/models/{model}/efficientnet_lite0/seed_0/fold_{fold}"
RUNS = [(model, fold) for model in ("querent", "abmil") for fold in (0, 1)]


def _run_until(project: Path, done, timeout: float = 900) -> None:
    """Start the tiny run and SIGKILL its whole process group as soon as ``done()`` holds."""
    process = subprocess.Popen(
        snakemake_command(),
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while not done():
            assert process.poll() is None, "the run ended before the moment to kill it"
            assert time.monotonic() < deadline, "the moment to kill the run never came"
            time.sleep(0.02)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _features(project: Path, slide: str) -> np.ndarray:
    with h5py.File(project / FEATURES / f"{slide}.h5") as h5:
        return h5["features"][:]


def _metrics(project: Path, model: str, fold: int) -> dict:
    path = project / f"results/eval/{model}/efficientnet_lite0/seed_0/fold_{fold}/metrics.json"
    return json.loads(path.read_text())


def test_killed_runs_resume_to_the_uninterrupted_outputs(tiny_run, tmp_path):
    reference, _ = tiny_run
    project = workflow_copy(tmp_path)
    features = project / FEATURES

    # 1. killed while extracting: a few seconds after the first slide's features were written
    # (Snakemake records a finished job just after its output appears; a job killed before
    # that counts as incomplete and is redone, rightly), before the last slide's
    def first_slide_done() -> bool:
        settled = time.time() - 5
        return features.is_dir() and any(p.stat().st_mtime < settled for p in features.glob("*.h5"))

    _run_until(project, first_slide_done)
    finished = {p.stem: p.stat().st_mtime_ns for p in features.glob("*.h5")}
    assert 1 <= len(finished) < 4
    code, output = snakemake(project, "features_only")
    assert code == 0, output
    assert job_counts(output)["extract_features"] == 4 - len(finished), output
    for slide, mtime in finished.items():  # not recomputed
        assert (features / f"{slide}.h5").stat().st_mtime_ns == mtime
    assert not list(project.glob("results/**/*.tmp"))  # no partial file left behind

    # 2. killed while training: one fold has written its resume state, no model is final yet
    def training_started() -> bool:  # a fold logged its first epoch, after saving resume.pt
        return any(
            "epoch 0:" in p.read_text() for p in project.glob("logs/models/*/*/seed_*/*.log")
        )

    _run_until(project, training_started)
    done = {
        run
        for run in RUNS
        if (project / MODELS.format(model=run[0], fold=run[1]) / "model.pt").exists()
    }
    code, output = snakemake(project)
    assert code == 0, output
    assert job_counts(output)["train_model"] == len(RUNS) - len(done), output
    assert "resuming after epoch" in "".join(
        p.read_text() for p in project.glob("logs/models/*/*/seed_*/fold_*.log")
    )
    # Snakemake deleted the job logs of the killed run; each fold's train.log keeps its lines
    resumed = [
        text.split("resuming after epoch")[0]
        for text in (
            p.read_text() for p in project.glob("results/models/*/*/seed_*/fold_*/train.log")
        )
        if "resuming after epoch" in text
    ]
    assert resumed and all("epoch 0:" in before for before in resumed)

    # 3. the same outputs as the uninterrupted run
    for slide in (f"demo_00{i}" for i in range(4)):
        np.testing.assert_array_equal(_features(project, slide), _features(reference, slide))
    for model, fold in RUNS:
        assert _metrics(project, model, fold) == _metrics(reference, model, fold)
    assert not list(project.glob("results/models/*/*/seed_*/fold_*/resume.pt"))

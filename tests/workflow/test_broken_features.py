"""A broken feature file in a finished project stops the run at plan time; no model is lost."""

import os
import shutil

import h5py
import numpy as np
import pytest

from tests.helpers import job_counts, snakemake

pytestmark = pytest.mark.integration

FEATURES = "results/features/efficientnet_lite0"


def test_a_broken_feature_file_stops_the_run_before_any_job(tiny_run, tmp_path):
    done, _ = tiny_run
    project = tmp_path / "project"
    shutil.copytree(done, project, symlinks=True)  # keeps modification times
    models = {
        path: path.read_bytes()
        for path in project.glob("results/models/*/*/seed_*/fold_*/model.pt")
    }
    assert len(models) == 4
    cut = project / FEATURES / "demo_001.h5"
    os.truncate(cut, cut.stat().st_size // 2)
    with h5py.File(project / FEATURES / "demo_002.h5", "r+") as h5:
        h5["features"][0] = np.nan

    code, output = snakemake(project)
    assert code != 0, output
    assert f"{FEATURES}/demo_001.h5: not a readable HDF5 file" in output
    assert f"{FEATURES}/demo_002.h5: `features` holds NaN or infinite values" in output
    assert output.count("Fix: delete it and rerun: that slide is re-extracted.") == 2
    assert job_counts(output) == {} and "Removing output files" not in output
    assert {path: path.read_bytes() for path in models} == models

    # the fix: delete them; the run then plans their extraction again
    for slide in ("demo_001", "demo_002"):
        (project / FEATURES / f"{slide}.h5").unlink()
    code, output = snakemake(project, "-n")
    assert code == 0, output
    assert job_counts(output)["extract_features"] == 2

"""Fixtures of every test: the real slides of ../shared/slides, made slides and cohorts."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # A worker per core (-n auto): one OpenMP thread in each worker and in the jobs it starts,
    # or the threads of two workers spin against each other. Set before numpy or torch loads.
    os.environ["OMP_NUM_THREADS"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.helpers import shared_slide  # noqa: E402


def pytest_collection_modifyitems(items):
    """Groups of pytest-xdist (``-n auto --dist loadgroup``): the tests of a file that builds a
    module fixture run on one worker, so it is built once; every other test goes to whichever
    worker is free. The files that run the workflow are handed out first, so the longest tests
    do not start last."""
    workflow_runs = ("tests/workflow/", "tests/hpc/")
    # stable: each file stays whole
    items.sort(key=lambda item: not item.nodeid.startswith(workflow_runs))
    for item in items:
        fixtures = item._fixtureinfo.name2fixturedefs.values()
        shared = any(d.scope in ("module", "class", "package") for defs in fixtures for d in defs)
        item.add_marker(
            pytest.mark.xdist_group(item.nodeid.split("::")[0] if shared else item.nodeid)
        )


@pytest.fixture
def cmu_slide() -> Path:
    return shared_slide("cmu-1-small-region.svs")


@pytest.fixture
def cmu_3level_slide() -> Path:
    return shared_slide("derived_cmu_small_region_3level.svs")


@pytest.fixture
def tcga_slide() -> Path:
    return shared_slide("tcga-cr-7395-01a-01-ts1.svs")


@pytest.fixture(scope="session")
def relabelled_40x_slide(tmp_path_factory) -> Path:
    """CMU-1-Small-Region relabelled as an Aperio GT450 40x scan (AppMag 40, MPP 0.2632).

    Only those two fields change, at the same byte length, so the TIFF stays valid. No level
    lies within 5% of 0.5 µm/px, so tiling at 20x reads level 0 and resizes.
    """
    data = shared_slide("cmu-1-small-region.svs").read_bytes()
    for old, new in ((b"AppMag = 20", b"AppMag = 40"), (b"MPP = 0.4990", b"MPP = 0.2632")):
        assert old in data
        data = data.replace(old, new)
    path = tmp_path_factory.mktemp("gt450") / "gt450-40x.svs"
    path.write_bytes(data)
    return path


@pytest.fixture
def blank_slide(tmp_path) -> Path:
    """A real pyramidal SVS with no tissue at all."""
    from extractors.demo import write_synthetic_slide

    path = tmp_path / "blank.svs"
    write_synthetic_slide(path, np.zeros((64, 96), np.uint8), level0_size=(3072, 2048))
    return path


@pytest.fixture(scope="session")
def synthetic_cohort(tmp_path_factory):
    """A small feature-level cohort (24 cases, 28 slides, 16-d features) and its sheet."""
    from querent.data.synthetic import write_synthetic_cohort

    out = tmp_path_factory.mktemp("synthetic")
    sheet = write_synthetic_cohort(out, n_cases=24, seed=0)
    return sheet, out / "features"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny demo workflow run locally to its end, once per session: (project, output).

    Tests that only read its results share it (workflow, resume, SLURM); a test that changes a
    setting runs Snakemake again in that project and says so.
    """
    from tests.helpers import snakemake, workflow_copy

    project = workflow_copy(tmp_path_factory.mktemp("tiny"))
    code, output = snakemake(project)
    assert code == 0, output
    return project, output

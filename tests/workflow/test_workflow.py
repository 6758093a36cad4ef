"""The Snakemake workflow, run for real on copies of the repository's workflow files."""

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from extractors.io import read_coords
from querent.data.grid import build_grid
from querent.data.grid_files import read_grid
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

WORKFLOW_FILES = ("Snakefile", "config.yaml", "environment.yml", "workflow", "profiles")


def _project(tmp_path: Path, **overrides) -> Path:
    """A copy of the workflow whose config.yaml has the given top-level sections updated."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = ROOT / name
        copy = shutil.copytree if source.is_dir() else shutil.copy
        copy(source, tmp_path / name)
    return _update_config(tmp_path, **overrides)


def _update_config(project: Path, **overrides) -> Path:
    config = yaml.safe_load((project / "config.yaml").read_text())
    for section, values in overrides.items():
        config[section] = {**config[section], **values}
    (project / "config.yaml").write_text(yaml.safe_dump(config))
    return project


def _snakemake(project: Path, *args: str) -> tuple[int, str]:
    """Exit code and everything Snakemake printed (it logs to stdout and stderr)."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    return result.returncode, result.stdout


def _job_counts(output: str) -> dict[str, int]:
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


def test_lint_is_clean(tmp_path):
    code, output = _snakemake(_project(tmp_path), "--lint")
    assert code == 0, output
    assert "Lints for" not in output


def test_default_config_plans_the_demo_cohort(tmp_path):
    code, output = _snakemake(_project(tmp_path), "-n")
    assert code == 0, output
    counts = _job_counts(output)
    per_slide = (
        "make_demo_slide",
        "segment_tissue",
        "tile_slide",
        "extract_features",
        "build_region_grid",
    )
    assert [counts[rule] for rule in per_slide] == [16] * 5
    assert counts["make_demo_cohort"] == 1


@pytest.mark.parametrize(
    ("section", "values", "named"),
    [
        ("tiling", {"patchsize": 256}, "patchsize"),
        ("tiling", {"min_tissue_fraction": 2}, "min_tissue_fraction"),
        ("tissue", {"params": {"min_area": 5}}, "min_area"),
        ("tissue", {"preset": "frozen"}, "frozen"),
        ("features", {"encoder": "uni_v3"}, "efficientnet_lite0"),
        ("features", {"on_decode_error": "ignore"}, "on_decode_error"),
        ("grids", {"region_size": 0}, "region_size"),
    ],
)
def test_config_errors_stop_before_any_job(tmp_path, section, values, named):
    project = _project(tmp_path, **{section: values})
    code, output = _snakemake(project, "-n")
    assert code != 0
    assert named in output
    assert not (project / "results").exists()


def test_tiny_demo_run_is_cached_and_reruns_only_what_changed(tmp_path):
    project = _project(tmp_path, demo={"n_slides": 2})
    code, output = _snakemake(project)
    assert code == 0, output
    for slide in ("demo_000", "demo_001"):
        with h5py.File(project / f"results/coords/{slide}.h5") as h5:
            assert h5["coords"].shape[0] > 0
            assert h5["coords"].attrs["name"] == slide
        assert (project / f"results/tissue/{slide}.geojson").exists()
        assert (project / f"results/coords/{slide}_qc.png").exists()
        assert (project / f"logs/coords/{slide}.benchmark.tsv").exists()
        with h5py.File(project / f"results/features/efficientnet_lite0/{slide}.h5") as h5:
            assert h5["features"].shape == (len(h5["coords"]), 1280)
            assert h5["features"].attrs["weights_source"] == "package:efficientnet_lite0"
        coords, attrs = read_coords(project / f"results/coords/{slide}.h5")
        grid = read_grid(project / f"results/grids/r4/{slide}.h5")
        expected = build_grid(coords, int(attrs["step_level0"]), 4)
        np.testing.assert_array_equal(grid.slots, expected.slots)
        assert (project / f"logs/grids/r4/{slide}.log").exists()
    assert (project / "resources/demo/cohort.csv").exists()

    assert "Nothing to be done" in _snakemake(project, "-n")[1]
    code, output = _snakemake(project, "--report", "report.html")
    assert code == 0, output
    assert "demo_001_qc.png" in (project / "report.html").read_text()

    # exports add only their own jobs, and CLAM's copy holds the same features
    exporting = _update_config(project, features={"export_clam": True, "export_stamp": True})
    code, output = _snakemake(exporting)
    assert code == 0, output
    counts = _job_counts(output)
    assert counts == {"export_clam": 2, "export_clam_patches": 2, "export_stamp": 2, "default": 1}
    with h5py.File(project / "results/features/efficientnet_lite0/demo_000.h5") as h5:
        features = h5["features"][:]
    clam = torch.load(project / "results/clam/efficientnet_lite0/pt_files/demo_000.pt")
    np.testing.assert_array_equal(clam.numpy(), features)
    with h5py.File(project / "results/stamp/efficientnet_lite0/demo_000.h5") as h5:
        assert h5.attrs["extractor"] == "efficientnet_lite0" and len(h5["feats"]) == len(features)
    assert (project / "results/clam/patches/demo_001.h5").exists()

    changed = _update_config(project, tiling={"patch_size": 128})
    counts = _job_counts(_snakemake(changed, "-n")[1])
    assert counts.get("tile_slide") == counts.get("extract_features") == 2
    assert counts.get("build_region_grid") == 2
    assert "segment_tissue" not in counts and "make_demo_slide" not in counts

    # another region size adds only grid jobs
    changed = _update_config(project, tiling={"patch_size": 256}, grids={"region_size": 2})
    counts = _job_counts(_snakemake(changed, "-n")[1])
    assert counts.get("build_region_grid") == 2 and "tile_slide" not in counts


def test_bad_slides_fail_alone_with_their_fix_in_the_log(tmp_path, cmu_slide, tcga_slide):
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(cmu_slide, slides / "good.svs")
    shutil.copy(tcga_slide, slides / "no_mpp.svs")
    (slides / "broken.svs").write_text("not a slide")
    project = _project(tmp_path / "project", demo={"enabled": False}, slides={"dir": str(slides)})
    code, output = _snakemake(project)
    assert code != 0
    assert (project / "results/coords/good.h5").exists()
    assert not (project / "results/coords/no_mpp.h5").exists()
    assert "slides.mpp_default" in (project / "logs/tissue/no_mpp.log").read_text()
    assert "not a readable TIFF" in (project / "logs/tissue/broken.log").read_text()
    assert "slides.mpp_default" in output  # failed logs are shown


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "holds no slide"),
        ({"a/x.svs": b"", "b/x.svs": b""}, "duplicate slide ids"),
        ({"bad name.svs": b""}, "unsafe"),
    ],
)
def test_slide_folder_problems_stop_before_any_job(tmp_path, layout, message):
    slides = tmp_path / "slides"
    slides.mkdir()
    for name, data in layout.items():
        (slides / name).parent.mkdir(parents=True, exist_ok=True)
        (slides / name).write_bytes(data)
    project = _project(tmp_path / "project", demo={"enabled": False}, slides={"dir": str(slides)})
    code, output = _snakemake(project, "-n")
    assert code != 0
    assert message in output

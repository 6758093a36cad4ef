"""Feature files checked at plan time: every broken one named with its fix, good ones cached."""

import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from extractors.wsi.discovery import SlideEntry
from querent.pipeline import feature_files
from querent.pipeline.feature_files import feature_file_problems, file_shapes
from querent.pipeline.plan import Inputs, Plan, slide_batches

EXTRACTED = "results/features/{encoder}"
FOLDER = Path("results/features/enc")


def _write(path: Path, features, coords=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    features = np.asarray(features, np.float32)
    with h5py.File(path, "w") as h5:
        h5["features"] = features
        h5["coords"] = np.zeros((len(features), 2), np.int64) if coords is None else coords
    return path


def _plan(slides, train, *, own_features=False, per_job=1) -> tuple[Plan, dict]:
    entries = {slide: SlideEntry(slide, Path(f"{slide}.svs")) for slide in slides}
    plan = Plan(
        inputs=Inputs(own_features=own_features, own_slides=True, demo=False),
        encoders=["enc"],
        demo_cohort=pd.DataFrame(),
        slide_files=entries,
        slides=entries,
        batches=slide_batches(entries, per_job),
        train_slides=train,
    )
    config = {"features": {"dir": "lab" if own_features else "", "slides_per_job": per_job}}
    return plan, config


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_broken_file_is_named_once_with_its_fix(project):
    rng = np.random.default_rng(0)
    _write(FOLDER / "good.h5", rng.normal(size=(5, 8)))
    _write(FOLDER / "other.h5", rng.normal(size=(3, 8)))
    _write(FOLDER / "nan.h5", np.where(np.eye(4, 8) > 0, np.nan, 1.0))
    _write(FOLDER / "inf.h5", np.full((2, 8), np.inf))
    _write(FOLDER / "coords.h5", np.ones((4, 8)), coords=np.zeros((3, 2), np.int64))
    _write(FOLDER / "flat.h5", np.ones(8))
    _write(FOLDER / "wide.h5", np.ones((4, 16)))
    (FOLDER / "garbage.h5").write_bytes(b"not an hdf5 file" * 100)
    cut = _write(FOLDER / "cut.h5", rng.normal(size=(4000, 8)))
    os.truncate(cut, cut.stat().st_size // 2)
    # a file still being written has only its temporary name
    (FOLDER / "missing.h5.node1.123.tmp").write_bytes(b"half written")
    slides = ["coords", "cut", "flat", "garbage", "good", "inf", "missing", "nan", "other", "wide"]

    problems = feature_file_problems(*_plan(slides, slides), EXTRACTED, project / "cache.json")

    named = {Path(line.split(": ", 1)[0]).stem: line for line in problems}
    assert sorted(named) == ["coords", "cut", "flat", "garbage", "inf", "nan", "wide"]
    assert len(problems) == len(named)
    assert all(
        line.endswith("Fix: delete it and rerun: that slide is re-extracted.") for line in problems
    )
    assert "NaN or infinite" in named["nan"] and "NaN or infinite" in named["inf"]
    assert "`coords` has shape (3, 2), not (4, 2)" in named["coords"]
    assert "not (N, D)" in named["flat"]
    assert "are 16 wide, enc's others 8" in named["wide"]
    assert "not a readable HDF5 file" in named["garbage"]
    assert "not a readable HDF5 file" in named["cut"]


def test_a_cached_verdict_costs_a_stat_and_a_changed_file_is_read_again(project, monkeypatch):
    path = _write(FOLDER / "a.h5", np.ones((3, 4)))
    cache = project / ".snakemake/querent/feature_files.json"
    assert file_shapes([path], cache) == {path: (3, 4)}

    def reopened(*args, **kwargs):
        raise AssertionError("the file was opened again")

    monkeypatch.setattr(feature_files.h5py, "File", reopened)
    assert file_shapes([path], cache) == {path: (3, 4)}
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    with pytest.raises(AssertionError, match="opened again"):
        file_shapes([path], cache)


def test_broken_files_are_never_cached(project):
    path = FOLDER / "a.h5"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage")
    cache = project / "cache.json"
    assert "not a readable" in file_shapes([path], cache)[path]
    assert "not a readable" in file_shapes([path], cache)[path]


def test_nan_in_the_last_block_of_a_big_file_is_found(project, monkeypatch):
    monkeypatch.setattr(feature_files, "BLOCK_BYTES", 4 * 8 * 10)  # 10 rows a block
    features = np.ones((95, 8))
    features[-1, -1] = np.nan
    path = _write(FOLDER / "a.h5", features)
    assert "NaN" in file_shapes([path], project / "cache.json")[path]


def test_no_patches_is_a_problem_only_for_a_slide_that_trains(project):
    for slide in ("blank", "trains"):
        _write(FOLDER / f"{slide}.h5", np.ones((0, 8)), coords=np.zeros((0, 2), np.int64))
    _write(FOLDER / "good.h5", np.ones((2, 8)))
    plan = _plan(["blank", "good", "trains"], ["good", "trains"])
    (problem,) = feature_file_problems(*plan, EXTRACTED, project / "cache.json")
    assert problem.startswith(f"{FOLDER / 'trains.h5'}: no patches")
    assert "drop the slide from the cohort sheet" in problem


def test_the_fix_names_the_batch_files_and_your_own_files_are_exported_again(project):
    (FOLDER / "b.h5").parent.mkdir(parents=True)
    (FOLDER / "b.h5").write_bytes(b"garbage")
    (problem,) = feature_file_problems(
        *_plan(["a", "b", "c"], [], per_job=2), EXTRACTED, project / "cache.json"
    )
    assert f"delete it, {FOLDER}/staged/b0000/b.h5 and {FOLDER}/batches/b0000.tsv" in problem

    Path("lab").mkdir()
    Path("lab/b.h5").write_bytes(b"garbage")
    (problem,) = feature_file_problems(
        *_plan(["a", "b"], ["a", "b"], own_features=True), EXTRACTED, project / "cache.json"
    )
    assert problem.startswith("lab/b.h5: not a readable HDF5 file")
    assert "export slide b's features again" in problem

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from querent.cli import main

pytestmark = pytest.mark.integration


def test_tile_writes_coords_geojson_and_qc(cmu_slide, tmp_path, capsys):
    assert main(["tile", str(cmu_slide), "-o", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "cmu-1-small-region.geojson",
        "cmu-1-small-region.h5",
        "cmu-1-small-region_qc.jpg",
        "cmu-1-small-region_tissue_qc.jpg",
    ]
    with h5py.File(tmp_path / "cmu-1-small-region.h5") as h5:
        assert h5["coords"].shape[0] > 0
    assert "patches" in capsys.readouterr().out


def test_version_is_the_installed_distributions():
    expected = f"querent {importlib.metadata.version('querent')}"
    console_script = Path(sys.executable).with_name("querent")
    for command in ([str(console_script)], [sys.executable, "-m", "querent"]):
        result = subprocess.run([*command, "--version"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected


def test_tile_without_tissue_keeps_the_tissue_and_the_tiling_picture(cmu_slide, tmp_path):
    assert main(["tile", str(cmu_slide), "-o", str(tmp_path / "tile")]) == 0
    tiled = cv2.imread(str(tmp_path / "tile/cmu-1-small-region_qc.jpg"))
    segmented = cv2.imread(str(tmp_path / "tile/cmu-1-small-region_tissue_qc.jpg"))
    assert tiled is not None and segmented is not None and tiled.shape == segmented.shape
    assert (tiled != segmented).any(axis=2).mean() > 0.01  # patches are drawn on one only

    # segment, then tile with its GeoJSON, in one folder: both pictures stay, the tissue one
    # the same as `tile` alone draws
    out = tmp_path / "steps"
    assert main(["segment", str(cmu_slide), "-o", str(out)]) == 0
    geojson = str(out / "cmu-1-small-region.geojson")
    assert main(["tile", str(cmu_slide), "-o", str(out), "--tissue", geojson]) == 0
    assert sorted(p.name for p in out.glob("*_qc.jpg")) == [
        "cmu-1-small-region_qc.jpg",
        "cmu-1-small-region_tissue_qc.jpg",
    ]
    alone = cv2.imread(str(out / "cmu-1-small-region_tissue_qc.jpg"))
    np.testing.assert_array_equal(segmented, alone)
    tiled_again = cv2.imread(str(out / "cmu-1-small-region_qc.jpg"))
    assert (tiled_again != alone).any(axis=2).mean() > 0.01


def test_extract_refuses_an_mpp_the_coords_were_not_tiled_at(cmu_slide, tmp_path):
    assert main(["tile", str(cmu_slide), "-o", str(tmp_path)]) == 0
    coords = tmp_path / "cmu-1-small-region.h5"
    result = subprocess.run(
        [sys.executable, "-m", "querent", "extract", str(cmu_slide), "--coords", str(coords),
         "--mpp", "0.25", "-o", str(tmp_path / "f")],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for part in ("'cmu-1-small-region'", "--mpp 0.25", "0.499 µm/px", "querent tile --mpp 0.25"):
        assert part in errors[0]
    assert not (tmp_path / "f").exists()
    help_text = subprocess.run(
        [sys.executable, "-m", "querent", "extract", "--help"], capture_output=True, text=True
    ).stdout
    assert "tiled at" in " ".join(help_text.split())


def test_extract_takes_the_mpp_the_coords_were_tiled_at(tcga_slide, tmp_path, capsys):
    # The TCGA frozen section has no MPP metadata: tiled with --mpp, extracted without it.
    tile = ["tile", str(tcga_slide), "--mpp", "0.5", "--target-mpp", "2", "--patch-size", "224"]
    assert main([*tile, "-o", str(tmp_path)]) == 0
    coords = tmp_path / "tcga-cr-7395-01a-01-ts1.h5"
    extract = ["extract", str(tcga_slide), "--coords", str(coords), "--allow-mpp-mismatch"]
    assert main([*extract, "-o", str(tmp_path / "f")]) == 0
    with h5py.File(tmp_path / "f" / coords.name) as features, h5py.File(coords) as tiled:
        assert features["features"].shape[0] == tiled["coords"].shape[0] > 0

    with h5py.File(coords, "r+") as h5:  # as another tool's coords: no MPP recorded
        del h5["coords"].attrs["level0_mpp"]
    capsys.readouterr()
    assert main([*extract, "-o", str(tmp_path / "g")]) == 1
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1
    for part in ("querent extract: error:", str(tcga_slide), "no microns-per-pixel", "--mpp"):
        assert part in error
    assert not (tmp_path / "g" / coords.name).exists()


def test_tile_reuses_a_given_tissue_geojson(cmu_slide, tmp_path):
    assert main(["segment", str(cmu_slide), "-o", str(tmp_path / "seg")]) == 0
    geojson = tmp_path / "seg" / "cmu-1-small-region.geojson"
    assert main(["tile", str(cmu_slide), "-o", str(tmp_path), "--tissue", str(geojson)]) == 0
    assert not (tmp_path / "cmu-1-small-region.geojson").exists()
    assert (tmp_path / "cmu-1-small-region.h5").exists()


def _bad_inputs(tmp_path, cmu_slide, tcga_slide):
    fake = tmp_path / "fake.svs"
    fake.write_text("not a slide")
    cut = tmp_path / "cut.svs"
    data = cmu_slide.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    unsafe = tmp_path / "bad name.svs"
    unsafe.write_bytes(data)
    return {
        "fake": ([str(fake)], "fake"),
        "truncated": ([str(cut)], "truncated"),
        "no mpp": ([str(tcga_slide)], "mpp"),
        "unsafe id": ([str(unsafe)], "unsafe"),
        "finer than level 0": ([str(cmu_slide), "--target-mpp", "0.2"], "finer than"),
        "overlap": ([str(cmu_slide), "--overlap", "300"], "overlap"),
    }


def test_bad_inputs_give_one_line_and_exit_1(tmp_path, cmu_slide, tcga_slide):
    for case, (args, expected) in _bad_inputs(tmp_path, cmu_slide, tcga_slide).items():
        result = subprocess.run(
            [sys.executable, "-m", "querent.cli", "tile", *args, "-o", str(tmp_path / "out")],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 1, case
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (case, result.stderr)
        assert expected in lines[0], (case, lines[0])
    assert not list(tmp_path.glob("out/*.h5"))


def test_help_documents_every_option():
    result = subprocess.run(
        [sys.executable, "-m", "querent.cli", "tile", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for option in (
        "--target-mpp",
        "--patch-size",
        "--overlap",
        "--min-tissue-fraction",
        "--preset",
        "--min-tissue-area-um2",
        "--keep-holes",
        "--remove-pen",
        "--mpp",
    ):
        assert option in result.stdout
    assert "default:" in result.stdout


def test_demo_writes_slides_and_cohort(tmp_path):
    assert main(["demo", "-o", str(tmp_path), "--n-slides", "2", "--seed", "3"]) == 0
    sheet = (tmp_path / "cohort.csv").read_text().splitlines()
    assert sheet[0] == "slide_id,case_id,label,time,event" and len(sheet) == 3
    assert sorted(p.name for p in (tmp_path / "slides").iterdir()) == [
        "demo_000.svs",
        "demo_001.svs",
    ]


def test_grid_round_trips_a_tiled_slide_and_skips_existing_outputs(cmu_slide, tmp_path, capsys):
    from extractors.io import read_coords
    from querent.data.grid import build_grid
    from querent.data.grid_files import read_grid

    assert main(["tile", str(cmu_slide), "-o", str(tmp_path)]) == 0
    coords_path = tmp_path / "cmu-1-small-region.h5"
    capsys.readouterr()
    args = ["grid", str(coords_path), "--region-size", "3", "-o", str(tmp_path / "grids")]
    assert main(args) == 0
    assert "regions\tmean fill" in capsys.readouterr().out
    out = tmp_path / "grids" / "cmu-1-small-region.h5"
    coords, attrs = read_coords(coords_path)
    expected = build_grid(coords, int(attrs["step_level0"]), 3)
    grid = read_grid(out)
    for name in ("region_of_patch", "region_cells", "offsets", "members", "slots"):
        np.testing.assert_array_equal(getattr(grid, name), getattr(expected, name))
    with h5py.File(out) as h5:
        assert h5.attrs["slide"] == "cmu-1-small-region"
        assert h5.attrs["region_size"] == 3
        assert h5.attrs["step_level0"] == attrs["step_level0"]
        assert h5.attrs["source"] == str(coords_path)

    assert main(args) == 0
    assert "skipped" in capsys.readouterr().out
    assert main([*args[:-2], "--region-size", "2", "-o", args[-1], "--overwrite"]) == 0
    assert read_grid(out).region_size == 2


def test_grid_errors_give_one_line_naming_the_file(tmp_path):
    no_coords = tmp_path / "no_coords.h5"
    with h5py.File(no_coords, "w") as h5:
        h5.create_dataset("features", data=np.zeros((2, 3)))
    for source in (no_coords, tmp_path / "missing.h5"):
        result = subprocess.run(
            [sys.executable, "-m", "querent.cli", "grid", str(source), "-o", str(tmp_path / "g")],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(source) in lines[0], result.stderr
    assert not (tmp_path / "g").exists()


def test_export_writes_clam_and_stamp_layouts(cmu_slide, tmp_path, capsys):
    assert main(["tile", str(cmu_slide), "-o", str(tmp_path)]) == 0
    coords = tmp_path / "cmu-1-small-region.h5"
    out = str(tmp_path / "f")
    assert main(["extract", str(cmu_slide), "--coords", str(coords), "-o", out]) == 0
    features = tmp_path / "f" / "cmu-1-small-region.h5"
    for fmt in ("clam", "stamp"):
        assert main(["export", "--format", fmt, str(features), "-o", str(tmp_path / fmt)]) == 0
    names = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert {
        "clam/pt_files/cmu-1-small-region.pt",
        "clam/h5_files/cmu-1-small-region.h5",
        "clam/patches/cmu-1-small-region.h5",
        "stamp/cmu-1-small-region.h5",
    } <= names

    result = subprocess.run(
        [sys.executable, "-m", "querent.cli", "export", "--format", "stamp", str(coords), "-o",
         str(tmp_path / "bad")],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(coords) in lines[0] and "extract" in lines[0], result.stderr


def _write_config(folder, synthetic_cohort, small: dict) -> dict:
    """Write ``folder/config.yaml``: the synthetic features, 3 folds, 2 epochs, run ``small``."""
    import yaml

    sheet, features = synthetic_cohort
    config = {
        "features": {"dir": str(features), "encoder": "synthetic"},
        "cohort": {"sheet": str(sheet)},
        "splits": {"folds": 3},
        "training": {"epochs": 2},
        "models": {"small": small},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return config


def test_splits_train_evaluate_predict_from_the_config(tmp_path, synthetic_cohort, monkeypatch):
    import pandas as pd

    features = synthetic_cohort[1]
    _write_config(tmp_path, synthetic_cohort, {"arch": "abmil", "dim": 16, "attention_dim": 8})
    monkeypatch.chdir(tmp_path)
    assert main(["splits"]) == 0
    splits = pd.read_csv("results/splits/splits.csv", dtype=str)
    assert set(splits["fold"]) == {"0", "1", "2"}
    assert main(["train", "--model", "small", "--fold", "1"]) == 0
    model = tmp_path / "results/models/small/synthetic/seed_0/fold_1/model.pt"
    assert model.exists()
    assert main(["evaluate", "--model", "small", "--fold", "1"]) == 0
    evaluated = pd.read_csv("results/eval/small/synthetic/seed_0/fold_1/predictions.csv")
    held_out = sorted(splits.loc[splits["fold"] == "1", "slide_id"])
    assert sorted(evaluated["slide_id"]) == held_out

    new = tmp_path / "new_slides"
    new.mkdir()
    for slide in held_out:
        (new / f"{slide}.h5").write_bytes((features / f"{slide}.h5").read_bytes())
    assert main(["predict", str(model.parent.parent), "--features", str(new), "-o", "out"]) == 0
    deployed = pd.read_csv("out/predictions.csv")
    assert sorted(deployed["slide_id"]) == held_out and "truth" not in deployed
    probs = ["prob_neg", "prob_pos"]  # one fold model: deployment equals the evaluation
    np.testing.assert_allclose(
        deployed.set_index("slide_id")[probs], evaluated.set_index("slide_id").loc[held_out, probs]
    )

    result = subprocess.run(
        [sys.executable, "-m", "querent.cli", "train", "--model", "big", "--fold", "0"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "no model run 'big'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_debug_shows_the_traceback_of_an_input_error(tmp_path):
    missing = tmp_path / "missing.h5"
    quiet = subprocess.run(
        [sys.executable, "-m", "querent.cli", "grid", str(missing), "-o", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    loud = subprocess.run(
        [sys.executable, "-m", "querent.cli", "grid", str(missing), "-o", str(tmp_path), "--debug"],
        capture_output=True,
        text=True,
    )
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "FileFormatError" in loud.stderr


def test_a_synthetic_context_cohort_trains_from_the_config(tmp_path, monkeypatch):
    import pandas as pd
    import yaml

    out = tmp_path / "ctx"
    assert main(["synthetic", str(out), "--slides", "12", "--patches", "80", "--dim", "8"]) == 0
    assert len(list((out / "features").glob("*.h5"))) == 12
    config = {
        "features": {"dir": str(out / "features"), "encoder": "synthetic"},
        "cohort": {"sheet": str(out / "cohort.csv")},
        "splits": {"folds": 3},
        "training": {"epochs": 1},
        "models": {"q": {"arch": "querent", "dim": 16, "heads": 2, "local": True}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    assert main(["splits"]) == 0 and main(["train", "--model", "q", "--fold", "0"]) == 0
    assert main(["evaluate", "--model", "q", "--fold", "0"]) == 0
    assert len(pd.read_csv("results/eval/q/synthetic/seed_0/fold_0/predictions.csv")) == 4
    with pytest.raises(SystemExit, match="2"):
        main(["synthetic", str(out), "--kind", "spiral"])
    with pytest.raises(SystemExit, match="0"):
        main(["synthetic", "--help"])


def test_the_cli_reads_the_config_as_planning_does(tmp_path, synthetic_cohort, monkeypatch, capsys):
    """Per-run overrides keep the training section's other keys; every problem at once."""
    import pandas as pd
    import yaml

    config = _write_config(
        tmp_path, synthetic_cohort, {"arch": "abmil", "dim": 16, "training": {"lr": 0.001}}
    )
    monkeypatch.chdir(tmp_path)
    assert main(["splits"]) == 0
    assert main(["train", "--model", "small", "--fold", "0"]) == 0
    history = pd.read_csv("results/models/small/synthetic/seed_0/fold_0/history.csv")
    assert len(history) == 2  # the section's epochs, not the schema's default 50

    config["training"] = {"epoch": 2, "patience": 0}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--model", "small", "--fold", "1"]) != 0
    err = capsys.readouterr().err
    assert "training.epoch: unknown setting; did you mean `epochs`?" in err
    assert "training.patience:" in err

"""The Snakemake workflow, run for real on copies of the repository's workflow files.

Every run uses the committed tiny config (tests/workflow/config.yaml) and varies single keys
with ``--config``, as a user would.
"""

import base64
import hashlib
import os
import re
import shutil
import subprocess

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib import image as plt_image

from extractors.io import read_coords
from querent.data.grid import build_grid
from querent.data.grid_files import read_grid
from tests.helpers import job_counts, snakemake, workflow_copy

pytestmark = pytest.mark.integration

PER_SLIDE = ("segment_tissue", "tile_slide", "extract_features")


#: The one lint we keep on purpose: the rules name no conda environment, as the docs say (run
#: Snakemake inside the project's environment; --use-conda would copy environment.yml away from
#: the checkout its `pip: -e .` installs).
NO_CONDA = "Specify a conda environment or container for each rule."


def test_lint_is_clean(tmp_path):
    code, output = snakemake(workflow_copy(tmp_path), "--lint")
    lints = re.findall(r"^\s+\* (.+?):?$", output, re.MULTILINE)
    assert code in (0, 1), output  # Snakemake exits 1 when it has any lint
    assert lints and set(lints) == {NO_CONDA}, output


def test_default_config_plans_the_demo_cohort_to_trained_models(tmp_path):
    project = workflow_copy(tmp_path)
    (project / "tiny.yaml").write_text("{}\n")  # the root config.yaml alone
    code, output = snakemake(project, "-n")
    assert code == 0, output
    counts = job_counts(output)
    assert [counts[rule] for rule in ("make_demo_slide", *PER_SLIDE)] == [16] * 4
    assert "build_region_grid" not in counts  # grid files only when grids.region_size is set
    assert counts["train_model"] == counts["evaluate_model"] == 10  # querent, abmil x 5 folds
    assert counts["make_splits"] == counts["aggregate_metrics"] == counts["make_demo_cohort"] == 1


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"tiling": {"patchsize": 256}}, "patchsize"),
        ({"tiling": {"min_tissue_fraction": 2}}, "min_tissue_fraction"),
        ({"tissue": {"params": {"min_area": 5}}}, "min_area"),
        ({"tissue": {"preset": "frozen"}}, "frozen"),
        ({"features": {"encoder": "uni_v3"}}, "efficientnet_lite0"),
        ({"features": {"on_decode_error": "ignore"}}, "on_decode_error"),
        ({"grids": {"region_size": 0}}, "region_size"),
        ({"models": {"big": {"arch": "resnet"}}}, "'abmil', 'camil'"),
        ({"models": {"querent": {"topk": 3}}}, "querent takes no argument topk"),
        ({"training": {"epochz": 3}}, "epochz"),
        ({"splits": {"folds": 3}}, "3 folds need at least 3 cases per class"),
    ],
)
def test_config_errors_stop_before_any_job(tmp_path, config, named):
    project = workflow_copy(tmp_path)
    code, output = snakemake(project, "-n", config=config)
    assert code != 0
    assert named in output
    assert not (project / "results").exists()


def test_tiny_demo_runs_to_summary_and_reruns_only_what_changed(tiny_run):
    project, output = tiny_run
    slides = [f"demo_00{i}" for i in range(4)]
    for slide in slides:
        coords, attrs = read_coords(project / f"results/coords/{slide}.h5")
        assert len(coords) > 0 and attrs["name"] == slide
        assert (project / f"logs/coords/{slide}.benchmark.tsv").exists()
        with h5py.File(project / f"results/features/efficientnet_lite0/{slide}.h5") as h5:
            assert h5["features"].shape == (len(h5["coords"]), 1280)
        grid = read_grid(project / f"results/grids/r4/{slide}.h5")
        expected = build_grid(coords, int(attrs["step_level0"]), 4)
        np.testing.assert_array_equal(grid.slots, expected.slots)

    splits = pd.read_csv(project / "results/splits/splits.csv", dtype=str)
    assert sorted(splits["slide_id"]) == slides and set(splits["fold"]) == {"0", "1"}
    for model in ("querent", "abmil"):
        for fold in (0, 1):
            ckpt = torch.load(
                project / f"results/models/{model}/efficientnet_lite0/seed_0/fold_{fold}/model.pt",
                weights_only=True,
            )
            assert ckpt["fold"] == fold and ckpt["in_dim"] == 1280
            held_out = splits.loc[splits["fold"] == str(fold), "slide_id"]
            eval_dir = project / f"results/eval/{model}/efficientnet_lite0/seed_0/fold_{fold}"
            predictions = pd.read_csv(eval_dir / "predictions.csv")
            assert sorted(predictions["slide_id"]) == sorted(held_out)
            assert (eval_dir / "metrics.json").exists() and (eval_dir / "attention.h5").exists()
    summary = pd.read_csv(project / "results/eval/summary.tsv", sep="\t")
    assert list(summary.columns[:4]) == ["model", "encoder", "task", "n_cases"]
    assert sorted(summary["model"]) == ["abmil", "querent"] and (summary["n_cases"] == 4).all()
    assert "auc" in output and "querent" in output.split("Complete log")[0][-2000:]
    comparisons = pd.read_csv(project / "results/eval/comparisons.tsv", sep="\t")
    assert comparisons[["model_a", "model_b", "metric"]].values.tolist() == [
        ["querent", "abmil", "auc"]
    ]
    assert "Paired comparisons" in output and "querent (efficientnet_lite0) vs abmil" in output

    for model in ("querent", "abmil"):
        plots = project / f"results/plots/{model}/efficientnet_lite0"
        assert {p.name for p in plots.iterdir()} >= {"roc.png", "roc.svg", "confusion.png"}
        heatmaps = project / f"results/heatmaps/{model}/efficientnet_lite0"
        index = pd.read_csv(heatmaps / "index.tsv", sep="\t")
        assert len(index) >= 2 and set(index["slide_id"]) <= set(slides)
        for slide in index["slide_id"]:
            assert (heatmaps / f"{slide}_attention.png").stat().st_size > 0
            assert (heatmaps / f"{slide}.geojson").exists()
            assert (project / f"results/top_patches/{model}/efficientnet_lite0/"
                    f"{slide}_top_patches.jpg").exists()  # fmt: skip
        assert (heatmaps / f"{index['slide_id'][0]}_query.png").exists() == (model == "querent")
    assert (project / "results/plots/summary.png").exists()

    assert "Nothing to be done" in snakemake(project, "-n")[1]

    # one model run's setting re-runs that run's training and evaluation only
    code, output = snakemake(project, "-n", config={"models": {"querent": {"top_k": 3}}})
    assert job_counts(output) == {
        "train_model": 2, "evaluate_model": 2, "plot_run": 1, "draw_heatmaps": 1,
        "top_patches": 1, "aggregate_metrics": 1, "plot_summary": 1, "record_provenance": 1,
        "default": 1,
    }, output  # fmt: skip
    plan = output.split("Job stats")[-1]
    assert "models/abmil" not in plan and "heatmaps/abmil" not in plan

    # a second seed trains and evaluates every run's folds once more, and re-trains nothing
    code, output = snakemake(project, "-n", config={"training": {"seeds": [0, 1]}})
    assert job_counts(output) == {
        "train_model": 4, "evaluate_model": 4, "aggregate_metrics": 1, "plot_summary": 1,
        "record_provenance": 1, "default": 1,
    }, output  # fmt: skip
    outputs = [line for line in output.splitlines() if line.strip().startswith("output:")]
    assert sum("seed_1/fold_" in line for line in outputs) == 8
    assert not any("seed_0" in line for line in outputs)

    # exports add only their own jobs, and CLAM's copy holds the same features
    exporting = {"features": {"export_clam": True, "export_stamp": True}}
    code, output = snakemake(project, config=exporting)
    assert code == 0, output
    assert job_counts(output) == {
        "export_clam": 4, "export_clam_patches": 4, "export_stamp": 4, "default": 1
    }  # fmt: skip
    with h5py.File(project / "results/features/efficientnet_lite0/demo_000.h5") as h5:
        features = h5["features"][:]
    clam = torch.load(project / "results/clam/efficientnet_lite0/pt_files/demo_000.pt")
    np.testing.assert_array_equal(clam.numpy(), features)

    # a tiling setting re-runs tiling and everything downstream, not segmentation
    counts = job_counts(snakemake(project, "-n", config={"tiling": {"patch_size": 224}})[1])
    assert counts["tile_slide"] == counts["extract_features"] == 4
    assert counts["train_model"] == 4 and "segment_tissue" not in counts


CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=20000", "--window-size=1400,1000",
)  # fmt: skip


def _embedded(dom: str, suffix: str) -> list[bytes]:
    """The files whose name ends in ``suffix`` embedded in a Snakemake report, decoded."""
    pattern = r"data:[^;]+;charset=utf8;filename=([^;]+);base64,([A-Za-z0-9+/=]+)"
    return [
        base64.b64decode(data) for name, data in re.findall(pattern, dom) if name.endswith(suffix)
    ]


def test_report_renders_in_a_browser(tiny_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have chromium (.ci/run installs Debian's package)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    project, _ = tiny_run
    code, output = snakemake(project, "--report", "report.html")
    assert code == 0, output
    url = (project / "report.html").as_uri()
    shot = tmp_path / "report.png"
    run = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([*run, f"--screenshot={shot}", url], capture_output=True, timeout=180)
    pixels = plt_image.imread(shot)
    assert pixels.shape[:2] == (1000, 1400) and pixels[..., :3].std() > 0.05  # not blank
    dom = subprocess.run(
        [*run, "--dump-dom", url], capture_output=True, text=True, timeout=180
    ).stdout
    assert "Results" in dom and "Tissue and patches" in dom
    tables = _embedded(dom, "summary.html")
    assert tables and b"<table" in tables[0] and b"querent" in tables[0] and b"abmil" in tables[0]
    heatmaps = _embedded(dom, "_attention_preview.jpg")
    assert heatmaps and all(jpg.startswith(b"\xff\xd8") for jpg in heatmaps)
    assert not _embedded(dom, "_attention.png")  # full size stays in results/heatmaps/
    assert _embedded(dom, "roc.png") and _embedded(dom, "_top_patches.jpg")
    previews = _embedded(dom, "_qc_preview.jpg")
    assert len(previews) == 4 and all(jpg.startswith(b"\xff\xd8") for jpg in previews)
    assert not _embedded(dom, "_qc.jpg")  # full-size QC pictures stay in results/coords/


def test_own_feature_files_train_without_slides(tmp_path, synthetic_cohort):
    sheet, features = synthetic_cohort
    project = workflow_copy(tmp_path)
    shutil.copytree(features, project / "lab/features")
    shutil.copy(sheet, project / "lab/cohort.csv")
    config = {
        "features": {"dir": "lab/features", "encoder": "my_lab_encoder"},
        "cohort": {"sheet": "lab/cohort.csv"},
        "splits": {"folds": 3},
    }
    code, output = snakemake(project, config=config)
    assert code == 0, output
    counts = job_counts(output)
    assert not set(counts) & {"make_demo_slide", "build_region_grid", *PER_SLIDE}
    assert counts["train_model"] == 6
    summary = pd.read_csv(project / "results/eval/summary.tsv", sep="\t")
    assert set(summary["encoder"]) == {"my_lab_encoder"} and (summary["n_cases"] == 24).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: pd.concat([t, t.iloc[:1]]), "duplicate"),
        (lambda t: t.assign(label="neg"), "one class"),
        (lambda t: t.iloc[1:], "feature files without a sheet row"),
    ],
)
def test_cohort_problems_stop_before_any_job(tmp_path, synthetic_cohort, change, message):
    sheet, features = synthetic_cohort
    project = workflow_copy(tmp_path)
    shutil.copytree(features, project / "lab/features")
    change(pd.read_csv(sheet)).to_csv(project / "lab/cohort.csv", index=False)
    config = {"features": {"dir": "lab/features"}, "cohort": {"sheet": "lab/cohort.csv"}}
    code, output = snakemake(project, "-n", config=config)
    assert code != 0 and message in output, output
    assert "lab/cohort.csv" in output


def test_bad_slides_fail_alone_with_their_fix_in_the_log(tmp_path, cmu_slide, tcga_slide):
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(cmu_slide, slides / "good.svs")
    shutil.copy(tcga_slide, slides / "no_mpp.svs")
    (slides / "broken.svs").write_text("not a slide")
    project = workflow_copy(tmp_path / "project")
    config = {"demo": {"enabled": False}, "slides": {"dir": str(slides)}}
    code, output = snakemake(project, config=config)
    assert code != 0
    assert (project / "results/coords/good.h5").exists()
    assert not (project / "results/coords/no_mpp.h5").exists()
    assert "slides.mpp_default" in (project / "logs/tissue/no_mpp.log").read_text()
    assert "not a readable TIFF" in (project / "logs/tissue/broken.log").read_text()
    assert "slides.mpp_default" in output  # each failed job's one line, and the QC summary
    assert "Traceback" not in output  # user errors: one line each, the traceback in the log
    assert "train_model" not in output  # no cohort sheet: the workflow stops at features
    assert "cohort.sheet is not set, so this run stops after the features" in output


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
    project = workflow_copy(tmp_path / "project")
    config = {"demo": {"enabled": False}, "slides": {"dir": str(slides)}}
    code, output = snakemake(project, "-n", config=config)
    assert code != 0
    assert message in output


@pytest.mark.parametrize(
    ("target", "planned", "not_planned"),
    [
        ("features_only", {"extract_features": 4, "build_region_grid": 4}, ["train_model"]),
        ("train_only", {"train_model": 4, "record_provenance": 1}, ["draw_heatmaps"]),
        ("report_only", {"draw_heatmaps": 2, "qc_summary": 1}, ["record_provenance"]),
    ],
)
def test_target_rules_plan_their_part_only(tmp_path, target, planned, not_planned):
    code, output = snakemake(workflow_copy(tmp_path), "-n", target)
    assert code == 0, output
    counts = job_counts(output)
    assert {rule: counts.get(rule) for rule in planned} == planned
    assert not set(not_planned) & set(counts)


def test_provenance_is_recorded_with_every_model_and_for_the_report(tiny_run):
    project, _ = tiny_run
    table = pd.read_csv(project / "results/provenance.tsv", sep="\t", dtype=str)
    record = dict(zip(table["key"], table["value"], strict=True))
    sheet = (project / "resources/demo/cohort.csv").read_bytes()
    assert record["cohort_sheet_sha256"] == hashlib.sha256(sheet).hexdigest()
    assert record["config.training.epochs"] == "2" and record["packages.torch"]
    ckpt = torch.load(
        project / "results/models/querent/efficientnet_lite0/seed_0/fold_0/model.pt",
        weights_only=True,
    )
    assert ckpt["provenance"]["cohort_sheet_sha256"] == record["cohort_sheet_sha256"]
    assert ckpt["provenance"]["config"]["models"]["querent"]["top_k"] == 2

"""Several encoders in one run: each gets its features, its model runs and its summary rows."""

import shutil

import h5py
import pandas as pd
import pytest
import timm
from safetensors.torch import save_file

from tests.helpers import job_counts, snakemake

pytestmark = pytest.mark.integration

ENCODERS = ["efficientnet_lite0", "resnet50_trunc"]


def test_adding_an_encoder_runs_only_its_own_jobs(tiny_run, tmp_path):
    """The tiny run (efficientnet_lite0) gets a second encoder, resnet50_trunc from a local
    weight file (random weights in the published layout: the hub is out of reach here)."""
    done, _ = tiny_run
    project = tmp_path / "project"
    shutil.copytree(done, project, symlinks=True)
    weights = tmp_path / "resnet50.safetensors"
    save_file(timm.create_model("resnet50", pretrained=False).state_dict(), str(weights))
    first_model = project / "results/models/querent/efficientnet_lite0/seed_0/fold_0/model.pt"
    kept = first_model.read_bytes()

    config = {"features": {"encoder": ENCODERS, "checkpoint": {"resnet50_trunc": str(weights)}}}
    code, output = snakemake(project, config=config)
    assert code == 0, output
    counts = job_counts(output)
    assert "segment_tissue" not in counts and "tile_slide" not in counts
    assert counts["extract_features"] == 4  # the new encoder's, on every slide
    assert counts["train_model"] == counts["evaluate_model"] == 2 * 2  # 2 runs x 2 folds
    assert first_model.read_bytes() == kept

    for encoder, width in zip(ENCODERS, (1280, 1024), strict=True):
        files = sorted((project / "results/features" / encoder).glob("*.h5"))
        assert len(files) == 4
        with h5py.File(files[0]) as h5:
            assert h5["features"].shape[1] == width
            assert h5["features"].attrs["encoder"] == encoder
        assert (project / "results/plots/abmil" / encoder).is_dir()
    summary = pd.read_csv(project / "results/eval/summary.tsv", sep="\t")
    assert sorted(zip(summary["model"], summary["encoder"], strict=True)) == sorted(
        (model, encoder) for model in ("abmil", "querent") for encoder in ENCODERS
    )
    qc = pd.read_csv(project / "results/qc/summary.tsv", sep="\t")
    assert (qc["status"] == "ok").all()
    assert all(cell.count(",") == 1 and "resnet50_trunc" in cell for cell in qc["features"])

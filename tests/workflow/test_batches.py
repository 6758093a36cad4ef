"""Feature extraction in batches of slides (features.slides_per_job), as on a GPU cluster.

One encoder load per batch must give the same feature files as one job per slide, a bad slide
must fail alone (its batch's other slides go on), and a rerun must encode nothing twice.
"""

import os

import pandas as pd
import pytest

from extractors.io import read_features
from tests.helpers import job_counts, snakemake, workflow_copy

pytestmark = pytest.mark.integration

SLIDES = [f"demo_00{i}" for i in range(4)]
FEATURES = "results/features/efficientnet_lite0"
#: Coarse patches (a quarter of the default's) so extraction is quick.
COARSE = {"tiling": {"target_mpp": 1.0}, "features": {"allow_mpp_mismatch": True}}
BATCHED = {**COARSE, "features": {**COARSE["features"], "slides_per_job": 3}}


def _features(project):
    return {
        path.stem: read_features(path)[:2] for path in sorted((project / FEATURES).glob("*.h5"))
    }


def _manifest(project, batch):
    table = pd.read_csv(project / FEATURES / f"batches/{batch}.tsv", sep="\t", dtype=str)
    outcomes = zip(table["status"], table["reason"], strict=True)
    return dict(zip(table["slide_id"], outcomes, strict=True))


def test_batches_equal_one_job_per_slide_and_a_bad_slide_fails_alone(tmp_path):
    project = workflow_copy(tmp_path / "project")
    code, output = snakemake(project, "features_only", config=COARSE)
    assert code == 0, output
    per_slide = _features(project)
    assert sorted(per_slide) == SLIDES

    for path in (project / FEATURES).glob("*.h5"):
        path.unlink()
    broken = project / "resources/demo/slides/demo_001.svs"
    stat = broken.stat()
    broken.write_text("not a slide")
    # with its old time, its tissue and coords stand: the broken slide fails in extraction
    os.utime(broken, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    code, output = snakemake(project, "features_only", config=BATCHED)
    assert code != 0
    counts = job_counts(output)
    assert counts["extract_feature_batch"] == 2 and counts["extract_features"] == 4
    assert "segment_tissue" not in counts and "tile_slide" not in counts
    batched = _features(project)
    assert sorted(batched) == ["demo_000", "demo_002", "demo_003"]
    for slide, (features, coords) in batched.items():
        assert (features == per_slide[slide][0]).all() and (coords == per_slide[slide][1]).all()
    first = _manifest(project, "b0000")
    assert [status for status, _ in first.values()] == ["ok", "failed", "ok"]
    log = (project / "logs/features/efficientnet_lite0/demo_001.log").read_text()
    assert "slide 'demo_001': feature extraction failed" in log and "on_missing: skip" in log
    assert "failed  demo_001  extract_features: slide 'demo_001'" in output  # the QC summary

    code, output = snakemake(project, "features_only", config=BATCHED)
    assert code != 0
    assert job_counts(output) == {"extract_features": 1, "features_only": 1}, output

    (project / FEATURES / "batches/b0000.tsv").unlink()  # as if the batch job was killed
    code, output = snakemake(project, "features_only", config=BATCHED)
    assert code != 0 and job_counts(output)["extract_feature_batch"] == 1
    assert _manifest(project, "b0000") == {
        "demo_000": ("ok", "reused"),
        "demo_001": first["demo_001"],
        "demo_002": ("ok", "reused"),
    }

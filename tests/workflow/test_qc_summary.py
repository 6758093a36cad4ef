"""The per-slide QC table and the summary every run ends with, on the tiny demo workflow.

One run of the slide stages (to rule qc_summary, coarse patches so extraction is quick) is
shared: the good run's table is checked as is, and a copy of it with one slide broken is run
again, so only that slide's jobs run (and fail).
"""

import shutil

import pandas as pd
import pytest

from extractors.io import read_coords
from tests.helpers import job_counts, snakemake, workflow_copy

pytestmark = pytest.mark.integration

SLIDES = [f"demo_00{i}" for i in range(4)]
#: The slide stages only, at 1 µm/px (a quarter of the patches of the default 0.5).
UNTIL_QC = ("--until", "qc_summary")
COARSE = {"tiling": {"target_mpp": 1.0}, "features": {"allow_mpp_mismatch": True}}


def read_table(project, name="summary"):
    """A QC table: ``summary`` (rule qc_summary's) or ``last_run`` (the end-of-run handlers')."""
    return pd.read_csv(
        project / f"results/qc/{name}.tsv", sep="\t", dtype={"slide_id": str}, keep_default_na=False
    )


def summary_lines(output):
    """The QC summary printed at the end of a run."""
    return output[output.rindex("Slide QC:") :].splitlines()


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    project = workflow_copy(tmp_path_factory.mktemp("qc"))
    code, output = snakemake(project, *UNTIL_QC, config=COARSE)
    assert code == 0, output
    return project, output


def test_good_run_has_one_ok_row_per_slide_with_its_patches(good_run):
    project, output = good_run
    assert job_counts(output)["qc_summary"] == 1
    table = read_table(project)
    assert list(table["slide_id"]) == SLIDES
    assert set(table["status"]) == {"ok"} and set(table["reason"]) == {""}
    for row in table.itertuples():
        coords, attrs = read_coords(project / f"results/coords/{row.slide_id}.h5")
        assert row.patches == len(coords) > 0 and row.skipped_patches == 0
        assert (row.mpp, row.mpp_source) == (attrs["level0_mpp"], attrs["mpp_source"])
        assert row.level == attrs["patch_level"] and row.tissue_mm2 > 0
        assert (project / row.features).is_file()
    assert summary_lines(output)[0] == (
        "Slide QC: 4 slides: 4 ok, 0 failed, 0 skipped. Table: results/qc/last_run.tsv"
    )
    assert read_table(project, "last_run").equals(table)
    assert output.rindex("Slide QC:") > output.rindex("Finished jobid")


def test_a_broken_slide_fails_alone_and_the_run_ends_with_its_reason(good_run, tmp_path):
    project = tmp_path / "broken"
    shutil.copytree(good_run[0], project)  # keeps modification times: the rest is up to date
    (project / "resources/demo/slides/demo_003.svs").write_text("not a slide")
    code, output = snakemake(project, *UNTIL_QC, config=COARSE)
    assert code != 0
    assert "Rule: qc_summary" not in output  # an input failed: the handler wrote the table

    table = read_table(project, "last_run").set_index("slide_id")
    assert table["status"].to_dict() == {**dict.fromkeys(SLIDES[:3], "ok"), "demo_003": "failed"}
    failed = table.loc["demo_003"]
    assert (failed["stage"], failed["log"]) == ("segment_tissue", "logs/tissue/demo_003.log")
    assert f"ERROR querent: {failed['reason']}\n" in (project / failed["log"]).read_text()

    summary = summary_lines(output)
    assert summary[0] == (
        "Slide QC: 4 slides: 3 ok, 1 failed, 0 skipped. Table: results/qc/last_run.tsv"
    )
    assert summary[1] == f"  failed  demo_003  segment_tissue: {failed['reason']}"
    assert "not a readable TIFF" in summary[1] and "replace it" in summary[1]
    assert output.rindex("Slide QC:") > output.rindex("Error in rule segment_tissue")
    assert f"querent: error: {failed['reason']}\n" in output  # the job's one line


def test_a_run_of_part_of_the_workflow_leaves_the_qc_table_to_its_rule(tmp_path, cmu_slide):
    """The handlers never write the rule's table: a table Snakemake did not make has no
    metadata, and every later run would say so ("missing provenance/metadata")."""
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(cmu_slide, slides / "cmu.svs")
    project = workflow_copy(tmp_path / "project")
    config = {"demo": {"enabled": False}, "slides": {"dir": str(slides)}}
    code, output = snakemake(project, "features_only", config=config)
    assert code == 0, output
    assert read_table(project, "last_run")["status"].tolist() == ["ok"]
    code, output = snakemake(project, config=config)  # all: the QC table too
    assert code == 0 and job_counts(output) == {"qc_summary": 1, "default": 1}, output
    code, output = snakemake(project, "-n", config=config)  # a dry run lists missing metadata
    assert code == 0 and "Nothing to be done" in output, output
    assert "missing provenance" not in output

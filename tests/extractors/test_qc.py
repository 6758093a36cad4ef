import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from extractors import io
from extractors.qc import (
    COLUMNS,
    MAX_LINES,
    Layout,
    SlideQC,
    format_summary,
    last_error,
    qc_table,
    summarize,
    write_table,
)
from extractors.wsi.tissue import TissuePolygon, write_geojson

MPP = 0.5
LAYOUT = Layout(
    tissue="results/tissue/{slide}.geojson",
    tissue_log="logs/tissue/{slide}.log",
    coords="results/coords/{slide}.h5",
    coords_log="logs/coords/{slide}.log",
    features="results/features/lite/{slide}.h5",
    features_log="logs/features/lite/{slide}.log",
)
SQUARE = np.array([[0, 0], [2000, 0], [2000, 2000], [0, 2000]], float)  # 1 mm² at 0.5 µm/px
HOLE = np.array([[100, 100], [1100, 100], [1100, 1100], [100, 1100]], float)  # 0.25 mm²


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def write_slide(slide, *, stages=3, patches=10, skipped=0, mpp_source="aperio.MPP", level=1):
    """A slide's stage outputs written by the real writers, the first ``stages`` of them."""
    if stages >= 1:
        write_geojson(
            LAYOUT.tissue.format(slide=slide),
            [TissuePolygon(SQUARE, [HOLE])],
            slide_id=slide,
            level0_mpp=MPP,
            mpp_source=mpp_source,
        )
    coords = np.stack([np.arange(patches) * 256, np.zeros(patches)], axis=1).astype(np.int64)
    attrs = {"level0_mpp": MPP, "mpp_source": mpp_source, "patch_level": level, "name": slide}
    if stages >= 2:
        io.write_coords(LAYOUT.coords.format(slide=slide), coords, np.ones(patches), attrs)
    if stages >= 3:
        keep = np.arange(patches) >= skipped
        io.write_features(
            LAYOUT.features.format(slide=slide),
            np.zeros((keep.sum(), 4), np.float32),
            coords[keep],
            attrs,
            {"encoder": "lite", "n_skipped": skipped},
            coords[~keep],
        )


@pytest.fixture(scope="module")
def error_log(tmp_path_factory):
    """The log of a job whose script raised a user error, written by extractors.logs."""
    path = tmp_path_factory.mktemp("logs") / "failed.log"
    code = (
        "import logging\n"
        "from extractors.logs import log_to_file\n"
        "from extractors.errors import SlideError\n"
        f"log_to_file({str(path)!r})\n"
        "logging.getLogger('querent').info('starting')\n"
        "raise SlideError(\"slide 'bad' (bad.svs): not a readable TIFF; replace it.\")\n"
    )
    subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    return path.read_text()


def write_log(field, slide, text):
    path = LAYOUT.path(field, slide)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def by_slide(rows):
    return {row.slide_id: row for row in rows}


def test_a_finished_slide_reports_its_stages():
    write_slide("a", patches=10, skipped=2, level=1)
    (row,) = qc_table(["a"], LAYOUT)
    assert (row.status, row.stage, row.reason, row.log) == ("ok", "", "", "")
    assert (row.mpp, row.mpp_source, row.level) == (MPP, "aperio.MPP", 1)
    assert row.tissue_mm2 == pytest.approx(0.75)  # hole subtracted
    assert (row.patches, row.skipped_patches) == (10, 2)  # patches: tiled, skipped: not encoded
    assert row.features == LAYOUT.features.format(slide="a")
    assert row.flags == "decode_errors"


def test_a_failed_stage_gives_the_one_line_error_of_its_log(error_log):
    assert error_log.count("\n") > 2  # the traceback follows the record
    write_slide("a", stages=1)
    write_log("coords_log", "a", error_log)
    write_log("features_log", "a", error_log.replace("TIFF", "nothing"))  # never reached
    (row,) = qc_table(["a"], LAYOUT)
    assert (row.status, row.stage, row.log) == ("failed", "tile_slide", "logs/coords/a.log")
    assert row.reason == "slide 'bad' (bad.svs): not a readable TIFF; replace it."
    assert (row.mpp, row.mpp_source) == (MPP, "aperio.MPP")  # from the GeoJSON
    assert row.tissue_mm2 == pytest.approx(0.75)
    assert row.patches == row.level == row.features == ""


def test_failed_at_segmentation_has_nothing_else(error_log):
    write_log("tissue_log", "a", error_log)
    (row,) = qc_table(["a"], LAYOUT)
    assert (row.status, row.stage) == ("failed", "segment_tissue")
    assert row.mpp == row.tissue_mm2 == row.patches == row.flags == ""


def test_only_the_last_record_counts(error_log):
    rerun = "2025-01-02 10:00:00,000 INFO extractors.wsi.tiling: a: 10 patches\n"
    assert last_error(_written("x.log", error_log)) is not None
    assert last_error(_written("y.log", error_log + rerun)) is None
    assert last_error(_written("z.log", "")) is None
    assert last_error(LAYOUT.path("tissue_log", "nobody")) is None


def _written(name, text):
    path = LAYOUT.path("tissue_log", name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_job_that_stopped_without_an_error_failed_and_one_never_run_is_pending():
    write_slide("killed", stages=2)
    write_log("features_log", "killed", "2025-01-02 10:00:00,000 INFO x: loading\n")
    rows = by_slide(qc_table(["killed", "later"], LAYOUT))
    assert (rows["killed"].status, rows["killed"].stage) == ("failed", "extract_features")
    assert "without an error" in rows["killed"].reason
    assert (rows["later"].status, rows["later"].stage) == ("pending", "segment_tissue")


def test_an_unreadable_file_fails_its_stage():
    write_slide("a", stages=2)
    LAYOUT.path("features", "a").parent.mkdir(parents=True)
    LAYOUT.path("features", "a").write_text("not hdf5")
    (row,) = qc_table(["a"], LAYOUT)
    assert (row.status, row.stage) == ("failed", "extract_features")
    assert "not a readable feature file" in row.reason


def test_slides_left_out_of_training_are_skipped():
    write_slide("in")
    write_slide("out")
    rows = by_slide(qc_table(["in", "out"], LAYOUT, trained=["in"]))
    assert rows["in"].status == "ok"
    assert rows["out"].status == "skipped" and "cohort.on_missing" in rows["out"].reason
    assert {row.status for row in qc_table(["in", "out"], LAYOUT, trained=[])} == {"ok"}


def test_slides_this_run_leaves_out_are_skipped_without_reading_their_old_files():
    write_slide("old", patches=0)  # of an earlier config
    (row,) = qc_table(["old"], LAYOUT, left_out={"old": "target finer than level 0"})
    assert (row.status, row.reason, row.patches, row.flags) == (
        "skipped",
        "target finer than level 0",
        "",
        "",
    )


def test_the_layout_may_be_given_as_a_mapping():
    write_slide("a")
    (row,) = qc_table(["a"], vars(LAYOUT))
    assert row.status == "ok"


def test_outliers_are_flagged():
    for slide, patches in (("a", 10), ("b", 12), ("c", 11), ("big", 40), ("empty", 0)):
        write_slide(slide, patches=patches)
    write_slide("guessed", patches=10, mpp_source="config_default")
    rows = by_slide(qc_table(["a", "b", "c", "big", "empty", "guessed"], LAYOUT))
    flags = {slide: row.flags for slide, row in rows.items()}
    assert flags == {
        "a": "",
        "b": "",
        "c": "",
        "big": "many_patches",  # > 3 x the median of 10.5
        "empty": "no_patches",
        "guessed": "mpp_default",
    }


def test_the_table_is_tsv_and_unchanged_tables_are_left_alone(error_log):
    write_slide("a")
    write_log("tissue_log", "b", error_log)
    rows = qc_table(["a", "b"], LAYOUT)
    path = "results/qc/summary.tsv"
    assert write_table(rows, path)
    with open(path, newline="") as f:
        table = list(csv.DictReader(f, delimiter="\t"))
    assert tuple(table[0]) == COLUMNS
    assert [(r["slide_id"], r["status"], r["patches"]) for r in table] == [
        ("a", "ok", "10"),
        ("b", "failed", ""),
    ]
    os.utime(path, (0, 0))
    assert not write_table(qc_table(["a", "b"], LAYOUT), path)
    assert os.stat(path).st_mtime == 0


def test_summary_is_short(error_log):
    write_slide("a")
    write_slide("guessed", mpp_source="config_default")
    write_log("tissue_log", "b", error_log)
    text = summarize(["a", "b", "c", "guessed"], LAYOUT, "qc.tsv")
    assert text.splitlines() == [
        "Slide QC: 4 slides: 2 ok, 1 failed, 0 skipped, 1 pending. Table: qc.tsv",
        "  failed  b        segment_tissue: slide 'bad' (bad.svs): not a readable TIFF; "
        "replace it.",
        "  flagged guessed  mpp_default",
    ]
    assert os.path.exists("qc.tsv")
    assert "later stage" in summarize(["a"], LAYOUT, "qc.tsv", run_failed=True)


def test_long_lists_are_cut():
    rows = [SlideQC(f"s{i}", status="failed", stage="tile_slide", reason="x") for i in range(30)]
    lines = format_summary(rows, "qc.tsv").splitlines()
    assert len(lines) == 1 + MAX_LINES + 1
    assert lines[-1] == f"  ... and {30 - MAX_LINES} more failed slides"

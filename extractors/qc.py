"""Per-slide quality control: one row per slide from the files the slide stages wrote.

Reads only what segmentation, tiling and extraction left on disk (tissue GeoJSON, coords file,
feature file, and their logs), so it runs as well after a failed run as after a good one:

- ``status``: ``ok`` (features written), ``failed`` (a stage's output is missing and its log
  says why), ``skipped`` (in the input, but left out: not processed by this run, e.g. a
  ``tiling.target_mpp`` finer than its level 0, or not in the cohort sheet with
  ``cohort.on_missing: skip``, so it does not train) or ``pending`` (no failure recorded: the
  run stopped before the slide's turn, or only part of the workflow was requested).
- ``reason``: for a failure, the last error record of the stage's log, which for every user
  error is one line naming the slide and the fix (:mod:`extractors.errors`).
- ``flags``: outliers worth a look even when the slide went through.
"""

from __future__ import annotations

import csv
import io as text_io
import json
import logging
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import h5py

from extractors.errors import FileFormatError
from extractors.io import atomic_path, read_coords
from extractors.logs import LOG_RECORD
from extractors.wsi.tissue import polygon_area, read_geojson

logger = logging.getLogger(__name__)

#: A slide with more patches than this multiple of the cohort median is flagged.
MANY_PATCHES = 3.0
#: mpp_source of an MPP taken from ``slides.mpp_default`` (see extractors.wsi.reader).
DEFAULT_MPP_SOURCE = "config_default"
#: Printed lines per kind (failed, flagged) before the rest is left to the table.
MAX_LINES = 20


@dataclass(frozen=True)
class Layout:
    """Where the slide stages write, as path patterns with ``{slide}`` (and ``{encoder}``).

    Attributes:
        tissue: Tissue GeoJSON (rule segment_tissue).
        tissue_log: Its log.
        coords: Coords file (rule tile_slide).
        coords_log: Its log.
        features: Feature file (rule extract_features), with ``{encoder}`` for several.
        features_log: Its log.
        encoders: The encoders of ``{encoder}``, each a stage of its own; empty: one feature
            file without ``{encoder}``.
    """

    tissue: str
    tissue_log: str
    coords: str
    coords_log: str
    features: str
    features_log: str
    encoders: tuple[str, ...] = ()

    def path(self, field: str, slide_id: str, encoder: str = "") -> Path:
        """The file ``field`` (e.g. ``coords``, ``features_log``) of one slide."""
        return Path(getattr(self, field).format(slide=slide_id, encoder=encoder))

    def stages(self) -> list[tuple[str, str, str]]:
        """(rule, :class:`Layout` field of its output, encoder) in the order a slide runs them."""
        extraction = [("extract_features", "features", name) for name in self.encoders or ("",)]
        return [("segment_tissue", "tissue", ""), ("tile_slide", "coords", ""), *extraction]


@dataclass
class SlideQC:
    """One row of the QC table (empty strings where a value is unknown).

    Attributes:
        slide_id: The slide.
        status: ``ok``, ``failed``, ``skipped`` or ``pending``.
        stage: The rule that failed (failed) or is next (pending).
        reason: One line: the error of a failed stage, or why a slide is skipped or pending.
        mpp: Level-0 microns per pixel used.
        mpp_source: Where it came from: ``slide_sheet``, a metadata key (``openslide.mpp-x``,
            ``aperio.MPP``, ``tiff.resolution``) or ``config_default`` (slides.mpp_default).
        level: Pyramid level patches are read from.
        tissue_mm2: Tissue area of the GeoJSON polygons (holes subtracted), in mm².
        patches: Patches of the coords file.
        skipped_patches: Patches left out after decode errors (features.on_decode_error: skip).
        features: The feature file (several: comma-separated, in the order of the encoders).
        flags: Comma-separated outliers: ``no_patches``, ``many_patches`` (more than
            :data:`MANY_PATCHES` x the cohort median), ``mpp_default``, ``decode_errors``.
        log: The log of the failed stage.
    """

    slide_id: str
    status: str = ""
    stage: str = ""
    reason: str = ""
    mpp: float | str = ""
    mpp_source: str = ""
    level: int | str = ""
    tissue_mm2: float | str = ""
    patches: int | str = ""
    skipped_patches: int | str = ""
    features: str = ""
    flags: str = ""
    log: str = ""


COLUMNS = tuple(f.name for f in fields(SlideQC))


def last_error(log: Path) -> str | None:
    """The message of the last record of ``log`` if it is an error, else None.

    A log whose last record is not an error belongs to a job that stopped without raising
    (killed, out of memory or time) or is still running; None then, and for a missing log.
    """
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    records = [match for line in text.splitlines() if (match := LOG_RECORD.match(line))]
    if records and records[-1]["level"] in ("ERROR", "CRITICAL"):
        return records[-1]["message"].strip()
    return None


def tissue_area_mm2(polygons: Iterable, mpp: float) -> float:
    """Area of tissue polygons in level-0 pixels (holes subtracted) at ``mpp``, in mm²."""
    area_px = sum(
        polygon_area(p.exterior) - sum(polygon_area(h) for h in p.holes) for p in polygons
    )
    return area_px * mpp**2 / 1e6


def _tissue(row: SlideQC, path: Path) -> None:
    """MPP (when tiling left none) and tissue area from the tissue GeoJSON."""
    try:
        provenance = json.loads(path.read_text()).get("querent", {})
        polygons = read_geojson(path)
    except (OSError, ValueError, AttributeError, FileFormatError) as err:
        logger.warning("%s: unreadable tissue GeoJSON (%s)", path, err)
        return
    if row.mpp == "" and "level0_mpp" in provenance:
        row.mpp = float(provenance["level0_mpp"])
        row.mpp_source = str(provenance.get("mpp_source", ""))
    if row.mpp != "":
        row.tissue_mm2 = round(tissue_area_mm2(polygons, float(row.mpp)), 4)


def _coords(row: SlideQC, path: Path) -> None:
    coords, attrs = read_coords(path)
    row.patches = len(coords)
    if "level0_mpp" in attrs:
        row.mpp = float(attrs["level0_mpp"])
        row.mpp_source = _text(attrs.get("mpp_source", ""))
    if "patch_level" in attrs:
        row.level = int(attrs["patch_level"])


def _features(row: SlideQC, path: Path) -> None:
    try:
        with h5py.File(path, "r") as h5:
            n, attrs = h5["features"].shape[0], h5["features"].attrs
            skipped = h5["skipped_coords"].shape[0] if "skipped_coords" in h5 else 0
            skipped = int(attrs.get("n_skipped", skipped))
            row.skipped_patches = max(skipped, row.skipped_patches or 0)  # of every encoder
    except (OSError, KeyError) as err:
        raise FileFormatError(f"{path}: not a readable feature file ({err})") from err
    if row.patches == "":
        row.patches = int(n) + int(row.skipped_patches)
    row.features = ",".join(filter(None, [row.features, str(path)]))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def slide_qc(slide_id: str, layout: Layout, *, trained: set[str] | None = None) -> SlideQC:
    """The QC row of one slide (flags not set: they need the cohort, see :func:`qc_table`).

    Args:
        slide_id: The slide.
        layout: Where the stages write.
        trained: Slides that train; None when nothing trains (the workflow stops at features).
            A slide with features outside this set is ``skipped``.
    """
    row = SlideQC(slide_id)
    readers = {"tissue": lambda *_: None, "coords": _coords, "features": _features}
    for rule, field, encoder in layout.stages():
        path = layout.path(field, slide_id, encoder)
        if not path.exists():
            log = layout.path(f"{field}_log", slide_id, encoder)
            error = last_error(log)
            if error is not None:
                row.status, row.reason, row.log = "failed", error, str(log)
            elif log.exists():
                row.status, row.log = "failed", str(log)
                row.reason = "stopped without an error message (killed, out of memory or time?)"
            else:
                row.status, row.reason = "pending", "not run yet"
            row.stage = rule
            break
        try:
            readers[field](row, path)
        except FileFormatError as err:
            row.status, row.stage, row.reason = "failed", rule, str(err)
            break
    else:
        if trained is not None and slide_id not in trained:
            row.status = "skipped"
            row.reason = "not in the cohort sheet: left out of training (cohort.on_missing: skip)"
        else:
            row.status = "ok"
    tissue = layout.path("tissue", slide_id)
    if tissue.exists():
        _tissue(row, tissue)
    return row


def flag_outliers(rows: Sequence[SlideQC]) -> None:
    """Set each row's ``flags`` from its own values and the cohort's median patch count."""
    counts = [row.patches for row in rows if row.patches != ""]
    median = statistics.median(counts) if counts else 0
    for row in rows:
        flags = []
        if row.patches == 0:
            flags.append("no_patches")
        elif row.patches != "" and median > 0 and row.patches > MANY_PATCHES * median:
            flags.append("many_patches")
        if row.mpp_source == DEFAULT_MPP_SOURCE:
            flags.append("mpp_default")
        if row.skipped_patches not in ("", 0):
            flags.append("decode_errors")
        row.flags = ",".join(flags)


def qc_table(
    slides: Iterable[str],
    layout: Layout | Mapping[str, str],
    *,
    trained: Iterable[str] | None = None,
    left_out: Mapping[str, str] | None = None,
) -> list[SlideQC]:
    """The QC rows of ``slides``, in their order, with outliers flagged.

    Args:
        slides: Slide ids of the input.
        layout: Where the stages write (or the keyword arguments of :class:`Layout`).
        trained: Slides that train; None (or empty) when nothing trains.
        left_out: Slides of the input this run does not process, with the reason: ``skipped``,
            and their files (of an earlier run, if any) are not read.
    """
    layout = layout if isinstance(layout, Layout) else Layout(**layout)
    trained = set(trained) if trained else None
    left_out = left_out or {}
    rows = [
        SlideQC(slide_id, status="skipped", reason=left_out[slide_id])
        if slide_id in left_out
        else slide_qc(slide_id, layout, trained=trained)
        for slide_id in slides
    ]
    flag_outliers(rows)
    return rows


def format_table(rows: Sequence[SlideQC]) -> str:
    """The rows as TSV text with a header (unknown values empty)."""
    out = text_io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([getattr(row, column) for column in COLUMNS])
    return out.getvalue()


def write_table(rows: Sequence[SlideQC], path: str | Path) -> bool:
    """Write the QC table as TSV (atomic), unless the file already holds the same text.

    Leaving an unchanged file alone keeps its modification time, so writing the table again at
    the end of a run does not make Snakemake think it is newer than it is.

    Returns:
        Whether the file was written.
    """
    text = format_table(rows)
    path = Path(path)
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return True


def _more(lines: list[str], what: str) -> list[str]:
    if len(lines) <= MAX_LINES:
        return lines
    return [*lines[:MAX_LINES], f"  ... and {len(lines) - MAX_LINES} more {what}"]


def format_summary(rows: Sequence[SlideQC], table: str | Path, *, run_failed: bool = False) -> str:
    """A short end-of-run summary: counts, one line per failed slide, flagged slides, table.

    Args:
        rows: The QC table.
        table: Where it is written.
        run_failed: The run ended with a failed job (some jobs may be after the slide stages).
    """
    by_status = {status: 0 for status in ("ok", "failed", "skipped", "pending")}
    for row in rows:
        by_status[row.status] = by_status.get(row.status, 0) + 1
    counts = ", ".join(
        f"{n} {status}" for status, n in by_status.items() if n or status != "pending"
    )
    width = max((len(row.slide_id) for row in rows), default=0)
    lines = [f"Slide QC: {len(rows)} slides: {counts}. Table: {table}"]
    lines += _more(
        [
            f"  failed  {row.slide_id:<{width}}  {row.stage}: {row.reason}"
            for row in rows
            if row.status == "failed"
        ],
        "failed slides",
    )
    lines += _more(
        [f"  flagged {row.slide_id:<{width}}  {row.flags}" for row in rows if row.flags],
        "flagged slides",
    )
    if run_failed and not by_status["failed"]:
        lines.append("  No slide failed: the failed job is a later stage; its log is shown above.")
    return "\n".join(lines)


def summarize(
    slides: Iterable[str],
    layout: Layout | Mapping[str, str],
    table: str | Path,
    *,
    trained: Iterable[str] | None = None,
    left_out: Mapping[str, str] | None = None,
    run_failed: bool = False,
) -> str:
    """Build the QC table of ``slides``, write it to ``table`` and return the printed summary.

    What the workflow's ``onsuccess`` and ``onerror`` handlers call, so every run ends with it
    and a failed run still leaves the table.
    """
    rows = qc_table(slides, layout, trained=trained, left_out=left_out)
    write_table(rows, table)
    return format_summary(rows, table, run_failed=run_failed)

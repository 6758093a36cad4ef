"""Feature extraction of many slides per job: the encoder loads once, and one bad slide fails alone.

:func:`extract_batch` writes each slide's features to a staged path, with a recipe beside it
(``{staged}.json``, written after the features) that lets a rerun skip slides whose inputs did not
change, and a manifest TSV with one row per slide (``ok`` or ``failed`` and why).
:func:`publish_features` then links one slide's staged file to its final path, or raises the
recorded failure for that slide alone.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from extractors.encoders import Encoder
from extractors.errors import FileFormatError, SlideError
from extractors.extract import ExtractionOptions, extract_slide
from extractors.io import atomic_path, feature_shape
from extractors.stain_norm import StainNormaliser

logger = logging.getLogger(__name__)

#: Columns of the manifest, one row per slide of the batch.
MANIFEST_COLUMNS = ("slide_id", "status", "patches", "reason", "staged", "log")


@dataclass(frozen=True)
class BatchSlide:
    """One slide of a batch.

    Attributes:
        slide_id: Its id (wins over any ``slide_id`` in ``slide_kwargs``).
        slide: The slide file.
        coords: Its coords file.
        staged: Where its features go.
        slide_kwargs: Keyword arguments of :class:`~extractors.wsi.reader.Slide` (mpp_override,
            mpp_default).
    """

    slide_id: str
    slide: Path
    coords: Path
    staged: Path
    slide_kwargs: dict


def recipe_path(staged: str | Path) -> Path:
    """The recipe file beside a staged feature file."""
    staged = Path(staged)
    return staged.with_name(staged.name + ".json")


def slide_recipe(
    item: BatchSlide,
    encoder: Encoder,
    options: ExtractionOptions,
    normaliser: StainNormaliser | None = None,
) -> dict:
    """Everything the features of ``item`` depend on: equal recipes give equal features.

    The slide file counts by path, size and modification time; the coords file and a stain
    reference image by content. Batch size, workers, device and block size change no feature
    and are left out.
    """
    stat = Path(item.slide).stat()
    stain = {} if normaliser is None else {"stain": normaliser.recipe()}
    return {
        **stain,
        "encoder": encoder.spec.name,
        "weights_source": encoder.weights_source,
        "slide": str(item.slide),
        "slide_size": stat.st_size,
        "slide_mtime_ns": stat.st_mtime_ns,
        "coords_sha256": hashlib.sha256(Path(item.coords).read_bytes()).hexdigest(),
        "slide_kwargs": {**item.slide_kwargs, "slide_id": item.slide_id},
        "skip_errors": options.skip_errors,
        "allow_mpp_mismatch": options.allow_mpp_mismatch,
    }


def reusable_patches(staged: Path, recipe: dict) -> int | None:
    """Patches of the staged file if it was made from ``recipe``, else None."""
    try:
        if json.loads(recipe_path(staged).read_text()) != recipe:
            return None
        return feature_shape(staged)[0]
    except (OSError, ValueError, FileFormatError):
        return None


def extract_or_reuse(
    item: BatchSlide,
    encoder: Encoder,
    options: ExtractionOptions,
    normaliser: StainNormaliser | None = None,
) -> dict:
    """Extract one slide unless its staged features are up to date; its ``ok`` manifest row."""
    recipe = slide_recipe(item, encoder, options, normaliser)
    patches = reusable_patches(item.staged, recipe)
    if patches is not None:
        logger.info("%s: staged features are up to date (%s)", item.slide_id, item.staged)
        return {"status": "ok", "patches": patches, "reason": "reused"}
    # A stale recipe beside newer features would let a later rerun with the old inputs reuse them.
    recipe_path(item.staged).unlink(missing_ok=True)
    patches = extract_slide(
        item.slide,
        item.coords,
        encoder,
        item.staged,
        slide_kwargs=recipe["slide_kwargs"],
        options=options,
        normaliser=normaliser,
    )
    with atomic_path(recipe_path(item.staged)) as tmp:
        tmp.write_text(json.dumps(recipe, indent=1, sort_keys=True))
    return {"status": "ok", "patches": patches, "reason": "encoded"}


def extract_batch(
    slides: Sequence[BatchSlide],
    encoder: Encoder,
    manifest: str | Path,
    *,
    options: ExtractionOptions | None = None,
    normaliser: StainNormaliser | None = None,
    log: str | None = None,
) -> list[dict]:
    """Extract the features of several slides with one encoder; record each outcome.

    A slide that fails (unreadable, mismatched coords, decode errors, ...) is logged with its
    traceback and recorded as ``failed``; the others go on. A slide whose staged features match
    its recipe is not encoded again.

    Args:
        slides: The slides of the batch.
        encoder: A loaded encoder on its device.
        manifest: Output TSV (written last, atomically) with :data:`MANIFEST_COLUMNS`.
        options: Batch size, workers, error handling (default: :class:`ExtractionOptions`).
        normaliser: Stain normalisation of the patches before the encoder; None: none.
        log: This job's log file, recorded in the manifest for :func:`publish_features`.

    Returns:
        The manifest rows.
    """
    options = options or ExtractionOptions()
    rows = []
    for item in slides:
        try:
            outcome = extract_or_reuse(item, encoder, options, normaliser)
        except Exception as err:  # one slide's failure must not fail the batch
            logger.exception("slide %r (%s) failed", item.slide_id, item.slide)
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            outcome = {"status": "failed", "patches": None, "reason": reason}
        rows.append({"slide_id": item.slide_id, **outcome, "staged": str(item.staged), "log": log})
    failed = [row["slide_id"] for row in rows if row["status"] == "failed"]
    logger.info("%d of %d slides ok; failed: %s", len(rows) - len(failed), len(rows), failed)
    with atomic_path(manifest) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, MANIFEST_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return rows


def publish_features(
    manifest: str | Path, slide_id: str, out: str | Path, *, log: str | None = None
) -> None:
    """Make ``out`` the staged features of ``slide_id``, or raise its recorded failure.

    ``out`` becomes a hard link of the staged file (a copy where linking fails, e.g. across
    file systems), put in place atomically.

    Args:
        manifest: The manifest of the slide's batch (from :func:`extract_batch`).
        slide_id: The slide.
        out: Its final feature file.
        log: The batch job's log, named in the error; default: the one the manifest records.

    Raises:
        SlideError: The slide failed in its batch; the message gives the reason and the fix.
        FileFormatError: The manifest has no row for the slide, or its staged file is gone.
    """
    with open(manifest, newline="") as handle:
        rows = {row["slide_id"]: row for row in csv.DictReader(handle, delimiter="\t")}
    if slide_id not in rows:
        raise FileFormatError(
            f"{manifest}: no row for slide {slide_id!r}; the batch that should extract it "
            "did not include it. Delete this manifest and run the workflow again."
        )
    row = rows[slide_id]
    if row["status"] != "ok":
        where = log or row["log"] or "the log of its batch job"
        raise SlideError(
            f"slide {slide_id!r}: feature extraction failed: {row['reason']} (traceback in "
            f"{where}). Fix: repair or replace the slide file (or tile it again) and rerun, "
            "which encodes only this slide of its batch again; or set cohort.on_missing: skip "
            "to train without it."
        )
    staged = Path(row["staged"])
    if not staged.is_file():
        raise FileFormatError(
            f"{manifest}: the staged features of slide {slide_id!r} ({staged}) are gone; "
            "delete this manifest and run the workflow again."
        )
    with atomic_path(out) as tmp:
        tmp.unlink(missing_ok=True)
        try:
            os.link(staged, tmp)
        except OSError:
            shutil.copy2(staged, tmp)
    logger.info("%s: %s -> %s", slide_id, staged, out)

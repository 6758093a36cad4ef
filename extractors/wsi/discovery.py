"""Find the slides of a cohort: a folder scanned for OpenSlide files, or a slide sheet.

Problems that concern the whole input (an empty folder, duplicate or unsafe slide ids, a sheet
pointing at missing files) are raised here, before any job runs, as one
:class:`SlideDiscoveryError` that lists every problem, one line each, with its file and fix.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from extractors.errors import SlideDiscoveryError, SlideError
from extractors.io import SLIDE_ID_PATTERN, atomic_path
from extractors.wsi.dicom import DicomFolder, dicom_folder, is_dicom_file
from extractors.wsi.formats import SLIDE_EXTENSIONS, slide_id_from_path


@dataclass(frozen=True)
class SlideEntry:
    """One slide of the cohort.

    Attributes:
        slide_id: Unique, path-safe name used for every output of the slide.
        path: The slide file.
        mpp: Per-slide microns-per-pixel override from the slide sheet, or None.
    """

    slide_id: str
    path: Path
    mpp: float | None = None


def _id_problem(slide_id: str, what: str = "file") -> str | None:
    """Why a slide id is unsafe as a file name and workflow wildcard, or None.

    ``what`` is what the id comes from: a ``file``, or a DICOM slide's ``folder``.
    """
    if re.fullmatch(SLIDE_ID_PATTERN, slide_id):
        return None
    return (
        f"slide id {slide_id!r} has characters that are unsafe in paths (allowed: letters, "
        f"digits, '.', '_', '-'; first a letter or digit). Fix: rename the {what}, or list it in "
        "a slide sheet with a 'slide_id' column."
    )


#: The fix for a folder under slides.dir that holds several DICOM series.
_SPLIT_FOLDER = (
    "move each series' files into a folder of its own under slides.dir (the folder name is the "
    "slide id), or list one .dcm file of each series in a slide sheet (slides.sheet) with a "
    "'slide_id' column."
)
#: The fix for a slide sheet row naming a folder that holds several DICOM series.
_SPLIT_ROW = (
    "give one .dcm file of a series as the path (OpenSlide opens that file's series), one row "
    "per series, each with its own 'slide_id'."
)


def check_slide_id(slide_id: str, source: str) -> None:
    """Raise if a slide id is not safe as a file name and workflow wildcard."""
    problem = _id_problem(slide_id)
    if problem:
        raise SlideDiscoveryError(f"{source}: {problem}")


def _raise_all(where: str, problems: list[str]) -> None:
    """Raise one error that lists every problem, one line each (nothing if there is none)."""
    if len(problems) == 1:
        raise SlideDiscoveryError(f"{where}: {problems[0]}")
    if problems:
        lines = "\n".join(f"  {problem}" for problem in problems)
        raise SlideDiscoveryError(f"{where}: {len(problems)} problems, fix them all:\n{lines}")


def _duplicates(entries: list[SlideEntry]) -> list[str]:
    by_id: dict[str, list[Path]] = {}
    for entry in entries:
        by_id.setdefault(entry.slide_id, []).append(entry.path)
    return [
        f"duplicate slide ids ({sid}: {', '.join(map(str, paths))}). Fix: rename the files, or "
        "use a slide sheet with a unique 'slide_id' per row."
        for sid, paths in sorted(by_id.items())
        if len(paths) > 1
    ]


def _walk_slides(root: Path) -> tuple[list[Path], list[Path]]:
    """Slide files, and folders holding ``.dcm`` files, under ``root``.

    Symlinked folders are followed once each (loops are cut).
    """
    found, dicom, seen = [], [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen:  # a link back up or a second link to a folder
            subfolders.clear()
            continue
        seen.add((info.st_dev, info.st_ino))
        subfolders.sort()
        has_dicom = False
        for name in files:
            path = Path(folder, name)
            if name.startswith(".") or not path.is_file():
                continue
            if is_dicom_file(name):
                has_dicom = True
            elif name.lower().endswith(SLIDE_EXTENSIONS):
                found.append(path)
        if has_dicom:
            dicom.append(Path(folder))
    return sorted(found), sorted(dicom)


def _series_problem(found: DicomFolder, fix: str) -> str | None:
    """Why a folder of ``.dcm`` files is not one slide (several series in it), or None."""
    if len(found.series) < 2:
        return None
    names = ", ".join(f"...{uid[-12:]}" for uid in found.series)
    return (
        f"DICOM folder {found.folder} holds {len(found.series)} slides (series {names}), but a "
        f"folder of .dcm files is one slide. Fix: {fix}"
    )


def discover_slides(folder: str | Path) -> list[SlideEntry]:
    """All slides under a folder (recursively, symlinked files and folders too), by slide id.

    A folder holding ``.dcm`` files is one DICOM slide, named by the folder; its entry's path is
    the file OpenSlide opens it by (:func:`~extractors.wsi.dicom.dicom_folder`).

    Raises:
        SlideDiscoveryError: Missing folder, no slide, unsafe or duplicate slide ids (every
            problem of the folder, one line each).
    """
    root = Path(folder)
    if not root.is_dir():
        raise SlideDiscoveryError(
            f"slide folder {root} does not exist; set slides.dir in config.yaml to the folder "
            "that holds your slides."
        )
    paths, dicom_folders = _walk_slides(root)
    if not paths and not dicom_folders:
        raise SlideDiscoveryError(
            f"slide folder {root} holds no slide (looked for {', '.join(SLIDE_EXTENSIONS)}, "
            "recursively; a folder of .dcm files is one DICOM slide). Fix: point slides.dir at "
            "the folder with your slides, or use a slide sheet (slides.sheet)."
        )
    entries = [SlideEntry(slide_id_from_path(p), p) for p in paths]
    problems = [
        f"{entry.path}: {problem}" for entry in entries if (problem := _id_problem(entry.slide_id))
    ]
    for found in filter(None, map(dicom_folder, dicom_folders)):  # None: gone since the walk
        entry = SlideEntry(slide_id_from_path(found.folder), found.file)
        if problem := _series_problem(found, _SPLIT_FOLDER):
            problems.append(problem)
        elif problem := _id_problem(entry.slide_id, "folder"):
            problems.append(f"{found.folder}: {problem}")
        else:
            entries.append(entry)
    _raise_all(f"slide folder {root}", problems + _duplicates(entries))
    return sorted(entries, key=lambda e: e.slide_id)


def read_slide_sheet(sheet: str | Path) -> list[SlideEntry]:
    """Slides listed in a CSV sheet (tab-separated if named ``*.tsv``).

    Columns: ``path`` (required; relative paths are taken from the sheet's folder; a DICOM
    slide is one of its ``.dcm`` files or their folder), ``slide_id`` (optional; default: file
    name without extension, a DICOM slide's folder name), ``mpp`` (optional per-slide
    microns-per-pixel override; empty cells mean "use the slide's metadata").

    Raises:
        SlideDiscoveryError: Missing or unreadable sheet, missing column; every bad row (missing
            file, bad id or mpp) and duplicate id, one line each.
    """
    sheet = Path(sheet)
    if not sheet.is_file():
        raise SlideDiscoveryError(
            f"slide sheet {sheet} does not exist; set slides.sheet in config.yaml to your CSV "
            "(or TSV) with a 'path' column."
        )
    try:
        separator = "\t" if sheet.suffix.lower() in (".tsv", ".tab") else ","
        table = pd.read_csv(sheet, sep=separator, dtype={"slide_id": str})
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise SlideDiscoveryError(
            f"slide sheet {sheet}: cannot read it ({err}). Fix: save it as UTF-8 text with a "
            "header line (path[, slide_id, mpp])."
        ) from err
    if "path" not in table.columns:
        raise SlideDiscoveryError(
            f"slide sheet {sheet}: no 'path' column (columns: {list(table.columns)}); add one "
            "with the slide files (optional columns: slide_id, mpp)."
        )
    if table.empty:
        raise SlideDiscoveryError(f"slide sheet {sheet} lists no slide; add one row per slide.")
    entries, problems = [], []
    for row_number, row in enumerate(table.to_dict("records"), start=2):
        where = f"line {row_number}"
        if pd.isna(row["path"]) or not str(row["path"]).strip():
            problems.append(f"{where}: empty path. Fix: fill in the slide file or drop the row.")
            continue
        path = Path(str(row["path"]).strip())
        path = path if path.is_absolute() else sheet.parent / path
        slide_id = row.get("slide_id")
        slide_id = slide_id_from_path(path) if pd.isna(slide_id) else str(slide_id).strip()
        id_problem = _id_problem(slide_id, "folder" if path.is_dir() else "file")
        if id_problem:
            problems.append(f"{where}: {id_problem}")
        if path.is_dir():  # a DICOM slide: the folder of its .dcm files
            found = dicom_folder(path)
            if found is None:
                problems.append(
                    f"{where}: slide {slide_id!r}: {path} is a folder without .dcm files. Fix: "
                    "give the slide file, or a folder of one DICOM slide's .dcm files."
                )
            elif problem := _series_problem(found, _SPLIT_ROW):
                problems.append(f"{where}: {problem}")
            else:
                path = found.file
        elif not path.is_file():
            problems.append(
                f"{where}: slide {slide_id!r}: file {path} not found. Fix: correct the path "
                "(relative paths start at the sheet's folder) or drop the row."
            )
        cell = row.get("mpp")
        mpp = None if cell is None or pd.isna(cell) or not str(cell).strip() else cell
        if mpp is not None:
            mpp = pd.to_numeric(str(mpp).strip(), errors="coerce")
            if not mpp > 0:  # NaN (not a number) fails too
                problems.append(
                    f"{where}: slide {slide_id!r}: mpp {cell!r} is not a positive number of "
                    "microns per pixel (e.g. 0.25 for 40x, 0.5 for 20x); fix it or leave it empty."
                )
                mpp = None
        entries.append(SlideEntry(slide_id, path, None if mpp is None else float(mpp)))
    _raise_all(f"slide sheet {sheet}", problems + _duplicates(entries))
    return entries


def metadata_mpps(
    slides: dict[str, Path], cache: str | Path | None = None
) -> dict[str, float | None]:
    """Level-0 microns per pixel each slide's own metadata gives, read without decoding pixels.

    OpenSlide reads only the slide's header (milliseconds a slide); with ``cache`` (a JSON file)
    a slide is read again only when its size or modification time changed, so a 500-slide
    cohort costs a few file stats per run. A slide that does not exist or that OpenSlide cannot
    open is left out (its own jobs report why); one without usable MPP maps to None.

    Args:
        slides: Slide id -> slide file.
        cache: JSON file that keeps the answers between runs; None: no cache.
    """
    from extractors.wsi.reader import resolve_mpp  # keeps OpenSlide and OpenCV out of planning

    stored = {}
    cache = Path(cache) if cache else None
    if cache is not None and cache.is_file():
        try:
            stored = json.loads(cache.read_text())
        except (OSError, ValueError):
            stored = {}
    found: dict[str, float | None] = {}
    changed = False
    for slide_id, path in slides.items():
        try:
            info = path.stat()
        except OSError:
            continue
        key = str(path.resolve())
        stamp = [info.st_size, info.st_mtime_ns]
        record = stored.get(key)
        if record is None or record[:2] != stamp:
            import openslide

            try:
                with openslide.OpenSlide(str(path)) as osr:
                    properties = dict(osr.properties)
            except (openslide.OpenSlideError, OSError, ValueError):
                record = [*stamp, False, None]
            else:
                try:
                    mpp, _ = resolve_mpp(properties, name=slide_id)
                except SlideError:
                    mpp = None
                record = [*stamp, True, mpp]
            stored[key] = record
            changed = True
        if record[2]:
            found[slide_id] = record[3]
    if cache is not None and changed:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            tmp.write_text(json.dumps(stored))
    return found

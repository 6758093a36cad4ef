"""Find the slides of a cohort: a folder scanned for OpenSlide files, or a slide sheet.

Problems that concern the whole input (an empty folder, duplicate or unsafe slide ids, a sheet
pointing at missing files) are raised here, before any job runs, as
:class:`SlideDiscoveryError` with a message that names the files and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from extractors.errors import SlideDiscoveryError

#: Extensions of single-file or index-file formats that OpenSlide reads.
SLIDE_EXTENSIONS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
)
#: Slide ids become file names and wildcards: letters, digits, '.', '_' and '-' only.
SLIDE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"


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


def slide_id_from_path(path: str | Path) -> str:
    """The slide id a file gets by default: its name without the slide extension."""
    name = Path(path).name
    for extension in (".ome.tiff", ".ome.tif", *SLIDE_EXTENSIONS):
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return Path(name).stem


def check_slide_id(slide_id: str, source: str) -> None:
    """Raise if a slide id is not safe as a file name and workflow wildcard."""
    if not re.fullmatch(SLIDE_ID_PATTERN, slide_id):
        raise SlideDiscoveryError(
            f"{source}: slide id {slide_id!r} has characters that are unsafe in paths (allowed: "
            "letters, digits, '.', '_', '-'; first a letter or digit). Fix: rename the file, or "
            "list it in a slide sheet with a 'slide_id' column."
        )


def _check_unique(entries: list[SlideEntry], where: str) -> None:
    by_id: dict[str, list[Path]] = {}
    for entry in entries:
        by_id.setdefault(entry.slide_id, []).append(entry.path)
    duplicates = {sid: paths for sid, paths in by_id.items() if len(paths) > 1}
    if duplicates:
        listing = "; ".join(
            f"{sid}: {', '.join(map(str, paths))}" for sid, paths in sorted(duplicates.items())
        )
        raise SlideDiscoveryError(
            f"{where}: duplicate slide ids ({listing}). Fix: rename the files, or use a slide "
            "sheet with a unique 'slide_id' per row."
        )


def discover_slides(folder: str | Path) -> list[SlideEntry]:
    """All slides under a folder (recursively), sorted by slide id.

    Raises:
        SlideDiscoveryError: Missing folder, no slide, unsafe or duplicate slide ids.
    """
    root = Path(folder)
    if not root.is_dir():
        raise SlideDiscoveryError(
            f"slide folder {root} does not exist; set slides.dir in config.yaml to the folder "
            "that holds your slides."
        )
    paths = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(SLIDE_EXTENSIONS)
    )
    if not paths:
        raise SlideDiscoveryError(
            f"slide folder {root} holds no slide (looked for {', '.join(SLIDE_EXTENSIONS)}, "
            "recursively). Fix: point slides.dir at the folder with your slides, or use a "
            "slide sheet (slides.sheet)."
        )
    entries = [SlideEntry(slide_id_from_path(p), p) for p in paths]
    for entry in entries:
        check_slide_id(entry.slide_id, str(entry.path))
    _check_unique(entries, f"slide folder {root}")
    return sorted(entries, key=lambda e: e.slide_id)


def read_slide_sheet(sheet: str | Path) -> list[SlideEntry]:
    """Slides listed in a CSV sheet (tab-separated if named ``*.tsv``).

    Columns: ``path`` (required; relative paths are taken from the sheet's folder),
    ``slide_id`` (optional; default: file name without extension), ``mpp`` (optional per-slide
    microns-per-pixel override; empty cells mean "use the slide's metadata").

    Raises:
        SlideDiscoveryError: Unreadable sheet, missing column or file, bad id or mpp.
    """
    sheet = Path(sheet)
    try:
        separator = "\t" if sheet.suffix.lower() in (".tsv", ".tab") else ","
        table = pd.read_csv(sheet, sep=separator, dtype={"slide_id": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise SlideDiscoveryError(f"slide sheet {sheet}: cannot read it ({err})") from err
    if "path" not in table.columns:
        raise SlideDiscoveryError(
            f"slide sheet {sheet}: no 'path' column (columns: {list(table.columns)}); add one "
            "with the slide files (optional columns: slide_id, mpp)."
        )
    if table.empty:
        raise SlideDiscoveryError(f"slide sheet {sheet} lists no slide; add one row per slide.")
    entries = []
    for row_number, row in enumerate(table.to_dict("records"), start=2):
        where = f"slide sheet {sheet}, line {row_number}"
        path = Path(str(row["path"]))
        path = path if path.is_absolute() else sheet.parent / path
        slide_id = row.get("slide_id")
        slide_id = slide_id_from_path(path) if pd.isna(slide_id) else str(slide_id)
        check_slide_id(slide_id, where)
        if not path.is_file():
            raise SlideDiscoveryError(f"{where}: slide {slide_id!r}: file {path} not found.")
        mpp = row.get("mpp")
        mpp = None if mpp is None or pd.isna(mpp) else mpp
        if mpp is not None and not (isinstance(mpp, (int, float)) and mpp > 0):
            raise SlideDiscoveryError(
                f"{where}: slide {slide_id!r}: mpp {mpp!r} is not a positive number of microns "
                "per pixel (e.g. 0.25 for 40x, 0.5 for 20x); fix it or leave it empty."
            )
        entries.append(SlideEntry(slide_id, path, None if mpp is None else float(mpp)))
    _check_unique(entries, f"slide sheet {sheet}")
    return entries

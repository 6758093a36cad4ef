"""Slide files: the extensions OpenSlide reads, those in a TIFF container, and default ids."""

from __future__ import annotations

from pathlib import Path

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
#: Slide extensions whose files are TIFF containers that tifffile reads (Aperio, generic and
#: Philips TIFF, Hamamatsu NDPI, Ventana BIF); Sakura's ``.svslide`` is an SQLite database.
TIFF_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".bif")


def slide_id_from_path(path: str | Path) -> str:
    """The slide id a file gets by default: its name without the slide extension."""
    name = Path(path).name
    for extension in (".ome.tiff", ".ome.tif", *SLIDE_EXTENSIONS):
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return Path(name).stem

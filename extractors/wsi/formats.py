"""Slide files: the extensions OpenSlide reads, those in a TIFF container, and default ids."""

from __future__ import annotations

import os
from pathlib import Path

from extractors.wsi.dicom import DICOM_EXTENSION

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
    DICOM_EXTENSION,  # a DICOM WSI: a folder of .dcm files (one series) is one slide
)
#: Slide extensions whose files are TIFF containers that tifffile reads (Aperio, generic and
#: Philips TIFF, Hamamatsu NDPI, Ventana BIF); Sakura's ``.svslide`` is an SQLite database.
TIFF_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".bif")


def slide_id_from_path(path: str | Path) -> str:
    """The slide id a file gets by default: its name without the slide extension.

    A DICOM slide (a folder of ``.dcm`` files, or one file of it) is named by its folder.
    """
    if str(path).lower().endswith(DICOM_EXTENSION) or Path(path).is_dir():
        folder = Path(os.path.abspath(path))
        return (folder if folder.is_dir() else folder.parent).name
    name = Path(path).name
    for extension in (".ome.tiff", ".ome.tif", *SLIDE_EXTENSIONS):
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return Path(name).stem

"""DICOM whole-slide images: a folder of ``.dcm`` files, one series, is one slide.

OpenSlide (4.0 and later) opens a DICOM WSI from any file of its series and finds the other
files (pyramid levels, label, overview) in the same folder by their SeriesInstanceUID. A
folder that holds two series would silently open as whichever series the chosen file belongs
to, so planning reads three attributes of each file's header (SOP class, image type, series)
without any DICOM library: the few top-level elements before (0020,000E) SeriesInstanceUID,
a few hundred bytes a file.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

#: Extension of the files of a DICOM slide (a folder of them is one slide).
DICOM_EXTENSION = ".dcm"
#: SOP class of VL Whole Slide Microscopy Image Storage.
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"

_IMAGE_TYPE = (0x0008, 0x0008)
_SOP_CLASS = (0x0008, 0x0016)
_SERIES_UID = (0x0020, 0x000E)
_ITEM, _ITEM_END, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
#: Explicit VRs whose length takes 4 bytes (after 2 reserved ones).
_LONG_VRS = frozenset(vr.encode() for vr in "OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_UNDEFINED = 0xFFFFFFFF
_IMPLICIT_LITTLE = "1.2.840.10008.1.2"
#: Deflated and big-endian datasets: not read here (OpenSlide decides at job time).
_UNREADABLE_SYNTAXES = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"}
#: Nesting of sequences skipped before giving up on a header (a corrupt file, not a slide).
_MAX_DEPTH = 16


class _Unreadable(Exception):
    """The header is not a DICOM Part-10 header this reader understands."""


@dataclass(frozen=True)
class DicomHeader:
    """What a DICOM file's header says about the image in it.

    Attributes:
        sop_class: SOP Class UID (:data:`WSI_SOP_CLASS` for a whole-slide image).
        series_uid: Series Instance UID ("" where the file has none).
        image_type: Values of Image Type, e.g. ``("ORIGINAL", "PRIMARY", "VOLUME", "NONE")``.
    """

    sop_class: str
    series_uid: str
    image_type: tuple[str, ...]

    @property
    def is_wsi_volume(self) -> bool:
        """A pyramid level of a whole-slide image (not its label, overview or thumbnail)."""
        flavour = self.image_type[2] if len(self.image_type) > 2 else ""
        return self.sop_class == WSI_SOP_CLASS and flavour == "VOLUME"


def _read(handle: BinaryIO, size: int) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise _Unreadable("truncated header")
    return data


def _element(handle: BinaryIO, explicit: bool) -> tuple[tuple[int, int], bytes, int]:
    """The next element's tag, VR (b"" where implicit or an item) and value length."""
    group, number = struct.unpack("<HH", _read(handle, 4))
    if group == 0xFFFE or not explicit:  # items and delimiters never carry a VR
        return (group, number), b"", struct.unpack("<I", _read(handle, 4))[0]
    vr = _read(handle, 2)
    if vr in _LONG_VRS:
        _read(handle, 2)
        return (group, number), vr, struct.unpack("<I", _read(handle, 4))[0]
    if not vr.isalpha():
        raise _Unreadable(f"bad VR {vr!r}")
    return (group, number), vr, struct.unpack("<H", _read(handle, 2))[0]


def _skip_sequence(handle: BinaryIO, explicit: bool, depth: int) -> None:
    """Skip the items of a sequence of undefined length, up to its delimiter."""
    if depth > _MAX_DEPTH:
        raise _Unreadable("sequences nested too deep")
    while True:
        tag, _, length = _element(handle, explicit)
        if tag == _SEQUENCE_END:
            return
        if tag != _ITEM:
            raise _Unreadable(f"expected an item, found {tag}")
        if length != _UNDEFINED:
            handle.seek(length, os.SEEK_CUR)
            continue
        while True:  # an item of undefined length: elements up to the item delimiter
            tag, vr, length = _element(handle, explicit)
            if tag == _ITEM_END:
                break
            _skip_value(handle, vr, length, explicit, depth + 1)


def _skip_value(handle: BinaryIO, vr: bytes, length: int, explicit: bool, depth: int) -> None:
    if length != _UNDEFINED:
        handle.seek(length, os.SEEK_CUR)
    elif vr in (b"SQ", b"UN", b""):  # UN of undefined length: a sequence in implicit VR
        _skip_sequence(handle, explicit and vr != b"UN", depth)
    else:
        raise _Unreadable("undefined length outside a sequence")


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace").rstrip("\0 ").strip()


def read_dicom_header(path: str | os.PathLike) -> DicomHeader | None:
    """SOP class, series and image type of a DICOM Part-10 file; None if it is not one.

    Reads only the top-level elements up to SeriesInstanceUID (0020,000E). Returns None for a
    file without the ``DICM`` prefix and for one this reader cannot follow (deflated or
    big-endian datasets, a corrupt header): OpenSlide gets the last word on those.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            if handle.read(4) != b"DICM":
                return None
            syntax = ""
            while True:  # file meta information: explicit VR little endian, group 0002
                start = handle.tell()
                head = handle.read(2)
                if len(head) < 2 or struct.unpack("<H", head)[0] != 0x0002:
                    handle.seek(start)
                    break
                handle.seek(start)
                tag, vr, length = _element(handle, explicit=True)
                if length == _UNDEFINED:
                    raise _Unreadable("undefined length in the file meta information")
                value = _read(handle, length)
                if tag == (0x0002, 0x0010):
                    syntax = _text(value)
            if syntax in _UNREADABLE_SYNTAXES:
                return None
            explicit = syntax != _IMPLICIT_LITTLE
            found: dict[tuple[int, int], str] = {}
            size = os.fstat(handle.fileno()).st_size
            while True:
                head = handle.read(4)
                if len(head) < 4:
                    if head or handle.tell() > size:  # a value skipped past the end: truncated
                        raise _Unreadable("truncated dataset")
                    break
                handle.seek(-4, os.SEEK_CUR)
                tag, vr, length = _element(handle, explicit)
                if tag > _SERIES_UID:
                    break
                if tag in (_IMAGE_TYPE, _SOP_CLASS, _SERIES_UID) and length != _UNDEFINED:
                    found[tag] = _text(_read(handle, length))
                    if tag == _SERIES_UID:
                        break
                else:
                    _skip_value(handle, vr, length, explicit, 0)
    except (OSError, _Unreadable, struct.error):
        return None
    image_type = tuple(part.strip() for part in found.get(_IMAGE_TYPE, "").split("\\") if part)
    return DicomHeader(found.get(_SOP_CLASS, ""), found.get(_SERIES_UID, ""), image_type)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A visible file named ``*.dcm`` (any case)."""
    name = os.path.basename(path)
    return name.lower().endswith(DICOM_EXTENSION) and not name.startswith(".")


def dicom_files(folder: str | os.PathLike) -> list[Path]:
    """The ``.dcm`` files directly in ``folder`` (not below it), sorted by name."""
    folder = Path(folder)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(
        folder / name for name in names if is_dicom_file(name) and (folder / name).is_file()
    )


@dataclass(frozen=True)
class DicomFolder:
    """A folder of ``.dcm`` files as one slide.

    Attributes:
        folder: The folder.
        file: The file to open it by: the largest pyramid-level file (level 0, as a rule), or
            the largest ``.dcm`` file where no header says which files are levels.
        series: Series Instance UIDs of the pyramid-level files (more than one: the folder
            holds several slides).
    """

    folder: Path
    file: Path
    series: tuple[str, ...]


def dicom_folder(folder: str | os.PathLike) -> DicomFolder | None:
    """The DICOM slide of the ``.dcm`` files in ``folder``; None if it holds none."""
    folder = Path(folder)
    files = dicom_files(folder)
    if not files:
        return None
    headers = {path: read_dicom_header(path) for path in files}
    volumes = [path for path, header in headers.items() if header and header.is_wsi_volume]
    series = sorted({headers[path].series_uid for path in volumes})
    sizes = {path: path.stat().st_size for path in volumes or files}
    chosen = min(sizes, key=lambda path: (-sizes[path], path.name))
    return DicomFolder(folder, chosen, tuple(series))

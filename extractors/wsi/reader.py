"""Open whole-slide images, resolve their microns per pixel, and read them at a target MPP.

Every OpenSlide format is supported. Errors are raised as :class:`SlideError` with a message
that names the slide and says what to do, so one bad slide never hides behind a traceback.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import cv2
import numpy as np
import openslide
import tifffile
from openslide import lowlevel

from extractors.errors import SlideError
from extractors.wsi.dicom import dicom_folder
from extractors.wsi.formats import TIFF_EXTENSIONS, slide_id_from_path

logger = logging.getLogger(__name__)

#: A pyramid level whose MPP is within this relative distance of the target is read as is.
MPP_TOLERANCE = 0.05
#: MPP values outside this range are treated as absent (e.g. a 72-dpi default in TIFF tags).
PLAUSIBLE_MPP = (0.05, 20.0)
#: Whole-slide reads are done in chunks of this many pixels per side at the read level.
READ_CHUNK = 4096
#: Read regions straight into a numpy buffer (OpenSlide's premultiplied ARGB, one uint32 per
#: pixel, i.e. B, G, R, A bytes on a little-endian machine) instead of through a PIL image, which
#: costs two more full copies; a whole-level thumbnail read takes about half the time. Falls back
#: to the public PIL path where openslide-python's low-level names are not there.
_DIRECT_READ = (
    sys.byteorder == "little"
    and hasattr(lowlevel, "_read_region")
    and hasattr(getattr(lowlevel, "_convert", None), "argb2rgba")
)
_OPAQUE = np.uint32(0xFF000000)
#: OpenSlide's default tile cache of a slide handle (32 MiB), restored after a whole-level read.
_TILE_CACHE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class LevelChoice:
    """Where to read a target resolution from.

    Attributes:
        level: Pyramid level to read.
        downsample: That level's downsample relative to level 0.
        mpp: That level's microns per pixel.
        scale: Resize factor from the level's pixels to target pixels (1.0: read as is).
    """

    level: int
    downsample: float
    mpp: float
    scale: float


def _plausible(mpp: float) -> bool:
    return PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]


def _mpp_from_tiff_tags(properties: dict[str, str]) -> float | None:
    """Microns per pixel from the TIFF XResolution and ResolutionUnit tags, if meaningful."""
    per_unit_um = {"centimeter": 1e4, "inch": 25400.0}.get(
        properties.get("tiff.ResolutionUnit", "")
    )
    try:
        xres = float(properties.get("tiff.XResolution", "nan"))
    except ValueError:
        return None
    if per_unit_um is None or not xres > 0:
        return None
    return per_unit_um / xres


#: OpenSlide properties of a DICOM WSI's level-0 pixel spacing in mm (DICOM: row spacing, then
#: column spacing), in the order they are tried; the column spacing is the x pixel size.
DICOM_PIXEL_SPACING = (
    "dicom.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing[1]",
    "dicom.PerFrameFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing[1]",
    "dicom.PixelSpacing[1]",
)


def _mpp_from_dicom(properties: dict[str, str]) -> float | None:
    """Microns per pixel from a DICOM WSI's PixelSpacing (mm), if there is one."""
    for key in DICOM_PIXEL_SPACING:
        try:  # decimal arithmetic: "0.000499" mm gives 0.499 µm exactly, as openslide.mpp-x does
            value = float(Decimal(properties[key].strip()) * 1000)
        except (KeyError, InvalidOperation):
            continue
        if value > 0:
            return value
    return None


def resolve_mpp(
    properties: dict[str, str],
    *,
    name: str,
    slide_id: str = "SLIDE",
    override: float | None = None,
    default: float | None = None,
) -> tuple[float, str]:
    """Resolve a slide's level-0 microns per pixel and say where it came from.

    An explicit per-slide ``override`` (the slide sheet's ``mpp`` column) wins; then the slide's
    own metadata (a DICOM WSI's PixelSpacing, ``openslide.mpp-x``, ``aperio.MPP``, TIFF
    resolution tags); then the config ``default``, which must be set explicitly and is logged
    as a warning.

    Args:
        properties: OpenSlide properties of the slide.
        name: Slide name used in messages.
        slide_id: Slide id, for the ``slides.per_slide`` example of the missing-MPP message.
        override: Per-slide MPP from the slide sheet, or None.
        default: Fallback MPP from the config (``slides.mpp_default``), or None.

    Returns:
        ``(mpp, source)`` where source is one of ``slide_sheet``, ``dicom.PixelSpacing``,
        ``openslide.mpp-x``, ``aperio.MPP``, ``tiff.resolution`` or ``config_default``.

    Raises:
        SlideError: No usable MPP anywhere.
    """
    from_metadata: list[tuple[float, str]] = []
    dicom_mpp = _mpp_from_dicom(properties)
    if dicom_mpp is not None and _plausible(dicom_mpp):
        from_metadata.append((dicom_mpp, "dicom.PixelSpacing"))
    for key in ("openslide.mpp-x", "aperio.MPP"):
        try:
            value = float(properties.get(key, "nan"))
        except ValueError:
            continue
        if _plausible(value):
            from_metadata.append((value, key))
    tiff_mpp = _mpp_from_tiff_tags(properties)
    if tiff_mpp is not None and _plausible(tiff_mpp):
        from_metadata.append((tiff_mpp, "tiff.resolution"))

    if override is not None:
        if not (override > 0 and _plausible(override)):
            raise SlideError(
                f"{name}: mpp override {override} is not a plausible microns-per-pixel value; "
                f"fix the 'mpp' column of the slide sheet (expected {PLAUSIBLE_MPP[0]}"
                f"-{PLAUSIBLE_MPP[1]}, e.g. 0.25 for 40x, 0.5 for 20x)."
            )
        if from_metadata and abs(from_metadata[0][0] / override - 1) > MPP_TOLERANCE:
            logger.warning(
                "%s: slide sheet mpp %.4f overrides %s = %.4f from the slide",
                name,
                override,
                from_metadata[0][1],
                from_metadata[0][0],
            )
        return float(override), "slide_sheet"
    if from_metadata:
        return from_metadata[0]
    if default is not None:
        logger.warning(
            "%s: no microns-per-pixel in the slide metadata; using slides.mpp_default = %s",
            name,
            default,
        )
        return float(default), "config_default"
    raise SlideError(
        f"{name}: the slide has no microns-per-pixel metadata (openslide.mpp-x, aperio.MPP, TIFF "
        "resolution, DICOM PixelSpacing). Fix: give its level-0 µm/px (0.25 at 40x, 0.5 at 20x) "
        f"in the slide sheet's 'mpp' column (slides.sheet), or in config.yaml as slides.per_slide: "
        f"{{{slide_id}: {{mpp: 0.25}}}}, or as slides.mpp_default: 0.25 for every slide "
        "without it (CLI: --mpp, --mpp-default)."
    )


def check_tiff_complete(path: Path, name: str) -> None:
    """Raise if a TIFF-based slide is truncated: some tile or strip lies past the end of file."""
    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) == 0:
                raise SlideError(
                    f"{name}: file is truncated or corrupt ({size} bytes, no readable image "
                    f"directory); copy or download {path} again."
                )
            for page in tif.pages:
                offsets = np.asarray(page.dataoffsets, dtype=np.int64)
                counts = np.asarray(page.databytecounts, dtype=np.int64)
                if offsets.size and int((offsets + counts).max()) > size:
                    raise SlideError(
                        f"{name}: file is truncated ({size} bytes, image data expected up to "
                        f"{int((offsets + counts).max())}); copy or download {path} again."
                    )
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as err:
        raise SlideError(
            f"{name}: {path} has a slide extension but is not a readable TIFF ({err}); replace "
            "it with an intact copy or remove it from the slide folder/sheet."
        ) from err


class Slide:
    """An open whole-slide image with a resolved level-0 MPP.

    Args:
        path: Slide file in any OpenSlide format; for a DICOM slide, one of its ``.dcm`` files
            or their folder (opened by :func:`~extractors.wsi.dicom.dicom_folder`'s file).
        slide_id: Name used in messages and outputs; defaults to the file name without the
            slide extension (a DICOM slide: its folder's name).
        mpp_override: Per-slide MPP (slide sheet ``mpp`` column); wins over the metadata.
        mpp_default: Config fallback for slides without MPP metadata.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        slide_id: str | None = None,
        mpp_override: float | None = None,
        mpp_default: float | None = None,
    ) -> None:
        self.path = Path(path)
        self.slide_id = slide_id or slide_id_from_path(self.path)
        if self.path.is_dir():
            self.path = self._dicom_file(self.path, self.slide_id)
        name = f"slide {self.slide_id!r} ({self.path})"
        self.name = name
        if not self.path.is_file():
            raise SlideError(f"{name}: file not found; check the slide folder or sheet path.")
        if self.path.suffix.lower() in TIFF_EXTENSIONS:
            check_tiff_complete(self.path, name)
        try:
            self._osr = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as err:
            raise SlideError(
                f"{name}: OpenSlide cannot open it ({err or type(err).__name__}); it is not a "
                "whole-slide image or is corrupt. Replace it or remove it from the slide input."
            ) from err
        self.properties = dict(self._osr.properties)
        self.mpp, self.mpp_source = resolve_mpp(
            self.properties,
            name=name,
            slide_id=self.slide_id,
            override=mpp_override,
            default=mpp_default,
        )
        self.dimensions: tuple[int, int] = self._osr.dimensions
        self.level_dimensions: tuple[tuple[int, int], ...] = self._osr.level_dimensions
        self.level_downsamples: tuple[float, ...] = self._osr.level_downsamples

    @staticmethod
    def _dicom_file(folder: Path, slide_id: str) -> Path:
        """The file to open the DICOM slide in ``folder`` by (one series: one slide)."""
        found = dicom_folder(folder)
        name = f"slide {slide_id!r} ({folder})"
        if found is None:
            raise SlideError(
                f"{name}: a folder without .dcm files; give the slide file, or the folder of one "
                "DICOM slide's .dcm files."
            )
        if len(found.series) > 1:
            raise SlideError(
                f"{name}: the folder holds {len(found.series)} DICOM series, and a folder is one "
                "slide. Fix: move each series' files into a folder of its own, or give one .dcm "
                "file of the series you want (OpenSlide opens that file's series)."
            )
        return found.file

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the OpenSlide handle."""
        self._osr.close()

    @property
    def objective_power(self) -> float | None:
        """The scanner's recorded objective power (``openslide.objective-power``), if any.

        Only a label: patch geometry comes from the MPP, never from this (a "40x" GT450 scans at
        0.2632 µm/px, not 0.25).
        """
        try:
            return float(self.properties["openslide.objective-power"])
        except (KeyError, ValueError):
            return None

    def level_mpp(self, level: int) -> float:
        """Microns per pixel of a pyramid level."""
        return self.mpp * self.level_downsamples[level]

    def pick_level(self, target_mpp: float) -> LevelChoice:
        """Choose the level to read ``target_mpp`` from.

        The coarsest level within :data:`MPP_TOLERANCE` of the target is read as is; otherwise
        the next finer level is read and resized by ``scale``.

        Raises:
            SlideError: The target is finer than level 0 (it would invent resolution).
        """
        if target_mpp < self.mpp * (1 - MPP_TOLERANCE):
            raise SlideError(
                f"{self.name}: target {target_mpp} µm/px is finer than the slide's level 0 "
                f"({self.mpp:.4f} µm/px, from {self.mpp_source}); choose a target_mpp of at "
                f"least {self.mpp:.4f}, or fix the slide's mpp if it is wrong."
            )
        candidates = [
            level
            for level in range(len(self.level_downsamples))
            if self.level_mpp(level) <= target_mpp * (1 + MPP_TOLERANCE)
        ]
        level = max(candidates, key=self.level_mpp)
        mpp = self.level_mpp(level)
        scale = 1.0 if abs(mpp / target_mpp - 1) <= MPP_TOLERANCE else mpp / target_mpp
        return LevelChoice(level, self.level_downsamples[level], mpp, scale)

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Read an RGB region (transparent areas composited on white).

        Args:
            location: Top-left (x, y) in level-0 pixels.
            level: Pyramid level.
            size: (width, height) in that level's pixels.

        Returns:
            uint8 array of shape (height, width, 3).
        """
        width, height = size
        if not _DIRECT_READ or width <= 0 or height <= 0:
            return self._read_region_pil(location, level, size)
        argb = np.empty((height, width), np.uint32)
        try:
            lowlevel._read_region(
                self._osr._osr,
                argb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)),
                location[0],
                location[1],
                level,
                width,
                height,
            )
        except openslide.OpenSlideError as err:
            raise self._read_error(location, level, size, err) from err
        if argb.min() >= _OPAQUE:  # premultiplied equals straight colour where alpha is 255
            return cv2.cvtColor(argb.view(np.uint8).reshape(height, width, 4), cv2.COLOR_BGRA2RGB)
        lowlevel._convert.argb2rgba(argb)  # in place, exactly as openslide-python's PIL path
        return _on_white(argb.view(np.uint8).reshape(height, width, 4))

    def _read_region_pil(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """:meth:`read_region` through openslide-python's public API (a PIL image)."""
        try:
            rgba = np.asarray(self._osr.read_region(location, level, size))
        except openslide.OpenSlideError as err:
            raise self._read_error(location, level, size, err) from err
        return _on_white(rgba)

    def _read_error(
        self, location: tuple[int, int], level: int, size: tuple[int, int], err: Exception
    ) -> SlideError:
        return SlideError(
            f"{self.name}: cannot decode the region at level-0 (x, y) = {location}, level "
            f"{level}, size {size} ({err}); the file is corrupt or truncated: copy it again."
        )

    def read_at_mpp(self, mpp: float) -> np.ndarray:
        """Read the whole slide at ``mpp`` (a thumbnail), in bounded chunks.

        Reads the level chosen by :meth:`pick_level` (never a finer one than needed) in
        :data:`READ_CHUNK`-sized pieces and resizes each, so memory stays bounded even for a
        slide without a pyramid.

        Returns:
            uint8 RGB array whose size is the level-0 size scaled by ``self.mpp / mpp``.
        """
        choice = self.pick_level(max(mpp, self.mpp))
        out_w = max(1, round(self.dimensions[0] * self.mpp / mpp))
        out_h = max(1, round(self.dimensions[1] * self.mpp / mpp))
        out = np.empty((out_h, out_w, 3), np.uint8)
        with self._no_tile_cache():
            self._read_chunks(choice, out)
        return out

    def _read_chunks(self, choice: LevelChoice, out: np.ndarray) -> None:
        """Fill ``out`` with the whole of level ``choice.level``, chunk by chunk, resized."""
        level_w, level_h = self.level_dimensions[choice.level]
        out_h, out_w = out.shape[:2]
        for y0 in range(0, level_h, READ_CHUNK):
            y1 = min(y0 + READ_CHUNK, level_h)
            ty0, ty1 = round(y0 * out_h / level_h), round(y1 * out_h / level_h)
            for x0 in range(0, level_w, READ_CHUNK):
                x1 = min(x0 + READ_CHUNK, level_w)
                tx0, tx1 = round(x0 * out_w / level_w), round(x1 * out_w / level_w)
                if tx1 <= tx0 or ty1 <= ty0:
                    continue
                origin = (math.floor(x0 * choice.downsample), math.floor(y0 * choice.downsample))
                chunk = self.read_region(origin, choice.level, (x1 - x0, y1 - y0))
                if chunk.shape[:2] != (ty1 - ty0, tx1 - tx0):
                    chunk = cv2.resize(chunk, (tx1 - tx0, ty1 - ty0), interpolation=cv2.INTER_AREA)
                out[ty0:ty1, tx0:tx1] = chunk

    @contextmanager
    def _no_tile_cache(self) -> Iterator[None]:
        """Read without a tile cache inside the block, with OpenSlide's default one after.

        A whole-level read decodes each tile once: caching the tiles only costs (~15% of the
        read) and leaves the cache full of tiles no patch read wants.
        """
        try:
            self._osr.set_cache(openslide.OpenSlideCache(0))
        except (AttributeError, openslide.OpenSlideError):  # OpenSlide < 4: no cache API
            swapped = False
        else:
            swapped = True
        try:
            yield
        finally:
            if swapped:
                self._osr.set_cache(openslide.OpenSlideCache(_TILE_CACHE_BYTES))


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """RGB of a straight-alpha RGBA image composited on white."""
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    blended = rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha.astype(np.uint16))
    return (blended // 255).astype(np.uint8)

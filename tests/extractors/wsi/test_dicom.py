"""DICOM whole-slide images: discovery, MPP, and the same tissue and patches as the SVS.

The DICOM slide is CMU-1-Small-Region (../shared/slides) converted by wsidicomizer once per
session. It converts through OpenSlide (openslide-bin, always installed) with lossless JPEG 2000
tiles, so the DICOM copy holds the SVS's decoded pixels: any difference in tissue or patches is
querent's doing, not the codec's. (wsidicomizer's default source, opentile, copies the JPEG
tiles as they are but needs the libturbojpeg system library.)
"""

import shutil
import time
import warnings
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from extractors.errors import SlideDiscoveryError, SlideError
from extractors.wsi import tiling, tissue
from extractors.wsi.dicom import WSI_SOP_CLASS, dicom_folder, read_dicom_header
from extractors.wsi.discovery import discover_slides, metadata_mpps, read_slide_sheet
from extractors.wsi.formats import slide_id_from_path
from extractors.wsi.reader import Slide, resolve_mpp
from extractors.wsi.resources import level0_dimensions
from tests.helpers import shared_slide

CMU = "cmu-1-small-region.svs"
VOLUME = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]


def _dicomize(source: Path, out: Path, *, lossless: bool) -> float:
    """Convert ``source`` into the folder ``out`` with wsidicomizer; seconds taken (or skip).

    ``lossless``: JPEG 2000 lossless tiles (the SVS's decoded pixels); else wsidicomizer's
    default JPEG.
    """
    with warnings.catch_warnings():  # pydicom deprecations inside wsidicom's imports: not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        wsidicomizer = pytest.importorskip("wsidicomizer", reason="wsidicomizer (dev extra) absent")
        from wsidicom.codec import Jpeg2kSettings
        from wsidicomizer.wsidicomizer import SourceIdentifier

    options = {"encoding": Jpeg2kSettings(levels=[0])} if lossless else {}
    started = time.perf_counter()
    try:
        wsidicomizer.WsiDicomizer.convert(
            source, out, preferred_source=SourceIdentifier.OPENSLIDE, workers=1, **options
        )
    except Exception as err:  # any failure of the converter is a skip, never a querent failure
        pytest.skip(f"wsidicomizer cannot convert {source.name} to DICOM here: {err!r}")
    return time.perf_counter() - started


@pytest.fixture(scope="session")
def dicom_cmu(tmp_path_factory) -> Path:
    """CMU-1-Small-Region as a DICOM WSI: ``{tmp}/slides/cmu-dicom/*.dcm`` (lossless tiles)."""
    source = shared_slide(CMU)
    folder = tmp_path_factory.mktemp("dicom") / "slides" / "cmu-dicom"
    folder.parent.mkdir()
    seconds = _dicomize(source, folder, lossless=True)
    print(f"wsidicomizer converted {source.name} in {seconds:.2f} s")
    return folder


def _header_file(path: Path, series: str, image_type=VOLUME, *, implicit=False, undefined=False):
    """A DICOM file with only a header (no pixels), written by pydicom, for the header reader.

    A ReferencedSeriesSequence before SeriesInstanceUID names another series: the reader must
    skip it (nested elements are not the file's own).
    """
    pydicom = pytest.importorskip("pydicom", reason="pydicom (with wsidicomizer) absent")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.ImageType = list(image_type)
    ds.SOPClassUID = WSI_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    referenced = Dataset()
    referenced.SeriesInstanceUID = "1.2.3.999"
    referenced.ReferencedInstanceSequence = [Dataset()]
    ds.ReferencedSeriesSequence = [referenced]
    ds.PatientName = "Anonymous"
    ds.SeriesInstanceUID = series
    ds.BitsAllocated = 8
    ds.PixelData = b"\0" * 16
    if undefined:
        ds["ReferencedSeriesSequence"].is_undefined_length = True
        referenced.is_undefined_length_sequence_item = True
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


# --- the header reader ----------------------------------------------------------------------


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("undefined", [False, True])
def test_header_reader_skips_nested_series_in_both_vr_encodings(tmp_path, implicit, undefined):
    path = _header_file(tmp_path / "a.dcm", "1.2.3.4", implicit=implicit, undefined=undefined)
    if undefined:
        assert b"\xff\xff\xff\xff" in path.read_bytes()
    header = read_dicom_header(path)
    assert (header.sop_class, header.series_uid, header.image_type) == (
        WSI_SOP_CLASS,
        "1.2.3.4",
        tuple(VOLUME),
    )
    assert header.is_wsi_volume


def test_header_reader_gives_none_for_what_it_cannot_read(tmp_path):
    plain = tmp_path / "plain.dcm"
    plain.write_bytes(b"not a DICOM file at all" * 20)
    assert read_dicom_header(plain) is None
    whole = _header_file(tmp_path / "whole.dcm", "1.2.3.4").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole[: whole.index(b"1.2.3.999")])  # ends inside the nested sequence
    assert read_dicom_header(cut) is None
    assert read_dicom_header(tmp_path / "missing.dcm") is None


def test_header_reader_agrees_with_pydicom_on_the_converted_slide(dicom_cmu):
    pydicom = pytest.importorskip("pydicom")
    files = sorted(dicom_cmu.glob("*.dcm"))
    assert len(files) >= 2  # level 0 and at least the label or overview
    for path in files:
        ours = read_dicom_header(path)
        theirs = pydicom.dcmread(path, stop_before_pixels=True)
        assert ours.sop_class == theirs.SOPClassUID
        assert ours.series_uid == theirs.SeriesInstanceUID
        assert list(ours.image_type) == list(theirs.ImageType)


# --- discovery and the slide sheet ------------------------------------------------------------


def test_a_folder_of_dcm_files_is_one_slide_named_by_the_folder(dicom_cmu):
    """Fails before DICOM support: discovery found no slide in a folder of only .dcm files."""
    entries = discover_slides(dicom_cmu.parent)
    assert [entry.slide_id for entry in entries] == ["cmu-dicom"]
    chosen = entries[0].path
    assert chosen.parent == dicom_cmu and chosen.suffix == ".dcm"
    assert read_dicom_header(chosen).is_wsi_volume  # level 0, not the label or overview
    assert all(slide_id_from_path(path) == "cmu-dicom" for path in dicom_cmu.glob("*.dcm"))


def test_dicom_folders_sit_beside_other_slides(dicom_cmu, tmp_path):
    root = tmp_path / "cohort"
    (root / "site2").mkdir(parents=True)
    (root / "site1").symlink_to(dicom_cmu.parent, target_is_directory=True)
    (root / "site2" / "cmu.svs").symlink_to(shared_slide(CMU))
    entries = {entry.slide_id: entry.path for entry in discover_slides(root)}
    assert set(entries) == {"cmu", "cmu-dicom"}
    assert entries["cmu-dicom"].suffix == ".dcm"


def test_a_folder_with_two_series_is_refused_with_the_fix(tmp_path):
    folder = tmp_path / "slides" / "mixed"
    for series in ("1.2.3.1", "1.2.3.2"):
        _header_file(folder / f"{series}.dcm", series)
        _header_file(folder / f"{series}-label.dcm", series, ["ORIGINAL", "PRIMARY", "LABEL"])
    with pytest.raises(SlideDiscoveryError) as err:
        discover_slides(tmp_path / "slides")
    message = str(err.value)
    for part in ("holds 2 slides", str(folder), "slides.dir", "folder of its own", "slides.sheet"):
        assert part in message
    with pytest.raises(SlideError, match="2 DICOM series"):
        Slide(folder)


def test_the_plan_refuses_a_two_series_folder_before_any_job(tmp_path):
    from querent.pipeline.plan import Findings, Inputs, load_slides

    folder = tmp_path / "slides" / "mixed"
    for series in ("1.2.3.1", "1.2.3.2"):
        _header_file(folder / f"{series}.dcm", series)
    findings = Findings()
    config = {"slides": {"dir": str(tmp_path / "slides"), "sheet": ""}}
    assert load_slides(config, Inputs(False, True, False), {}, findings) == {}
    assert "slides.dir" in findings.message() and "holds 2 slides" in findings.message()


def test_labels_and_other_files_of_one_series_do_not_count_as_slides(tmp_path):
    folder = tmp_path / "slides" / "one"
    _header_file(folder / "level0.dcm", "1.2.3.1")
    _header_file(folder / "label.dcm", "1.2.3.1", ["ORIGINAL", "PRIMARY", "LABEL"])
    _header_file(folder / "other-label.dcm", "1.2.3.9", ["ORIGINAL", "PRIMARY", "LABEL"])
    (folder / "notes.dcm").write_text("not DICOM")
    found = dicom_folder(folder)
    assert found.series == ("1.2.3.1",) and found.file == folder / "level0.dcm"
    assert [entry.slide_id for entry in discover_slides(tmp_path / "slides")] == ["one"]


def test_sheet_takes_a_dcm_file_or_its_folder(dicom_cmu, tmp_path):
    any_file = sorted(dicom_cmu.glob("*.dcm"))[0]
    sheet = tmp_path / "slides.csv"
    sheet.write_text(f"path,slide_id\n{any_file},\n{dicom_cmu},by-folder\n")
    entries = read_slide_sheet(sheet)
    assert [(entry.slide_id, entry.path) for entry in entries] == [
        ("cmu-dicom", any_file),
        ("by-folder", dicom_folder(dicom_cmu).file),
    ]


def test_sheet_refuses_a_folder_without_dcm_files_and_a_two_series_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    for series in ("1.2.3.1", "1.2.3.2"):
        _header_file(tmp_path / "mixed" / f"{series}.dcm", series)
    sheet = tmp_path / "slides.csv"
    sheet.write_text("path\nempty\nmixed\n")
    with pytest.raises(SlideDiscoveryError) as err:
        read_slide_sheet(sheet)
    message = str(err.value)
    assert "line 2: slide 'empty'" in message and "folder without .dcm files" in message
    assert "line 3: DICOM folder" in message and "one .dcm file of a series" in message


# --- MPP from the DICOM metadata ----------------------------------------------------------------


def test_mpp_comes_from_the_dicom_pixel_spacing(dicom_cmu):
    with Slide(shared_slide(CMU)) as svs, Slide(dicom_cmu) as dicom:
        assert svs.mpp == 0.499
        assert (dicom.mpp, dicom.mpp_source) == (svs.mpp, "dicom.PixelSpacing")
        assert dicom.slide_id == "cmu-dicom"
        assert dicom.dimensions == svs.dimensions
        properties = dicom.properties
    assert properties["openslide.vendor"] == "dicom"
    assert not any(key.startswith(("aperio.", "tiff.")) for key in properties)
    spacing = "dicom.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing"
    assert float(properties[f"{spacing}[1]"]) == pytest.approx(0.000499)
    # without OpenSlide's own mpp-x the cascade still reads the DICOM spacing
    bare = {k: v for k, v in properties.items() if not k.startswith("openslide.mpp")}
    assert resolve_mpp(bare, name="s") == (0.499, "dicom.PixelSpacing")
    # the plan reads the same from the header, and sizes jobs from it
    assert metadata_mpps({"cmu-dicom": dicom_folder(dicom_cmu).file}) == {"cmu-dicom": 0.499}
    assert level0_dimensions(dicom_folder(dicom_cmu).file) == (2220, 2967)


def test_every_file_of_the_series_opens_the_same_slide(dicom_cmu):
    for path in sorted(dicom_cmu.glob("*.dcm")):
        with Slide(path) as slide:
            assert (slide.slide_id, slide.dimensions, slide.mpp) == (
                "cmu-dicom",
                (2220, 2967),
                0.499,
            )


def test_mpp_of_a_three_level_dicom_pyramid_is_level_0s(tmp_path):
    source = shared_slide("derived_cmu_small_region_3level.svs")
    _dicomize(source, tmp_path / "pyramid", lossless=False)  # JPEG tiles: geometry only
    with Slide(source) as svs, Slide(tmp_path / "pyramid") as dicom:
        assert dicom.mpp == svs.mpp == 0.499
        assert dicom.level_dimensions == svs.level_dimensions
        assert dicom.level_downsamples == pytest.approx(svs.level_downsamples)
        assert dicom.pick_level(2.0) == svs.pick_level(2.0)


# --- the same tissue and patches as the SVS -----------------------------------------------------


def _mask(polygons, level0_size, shape):
    canvas = np.zeros(shape, np.uint8)
    scale = np.array([shape[1] / level0_size[0], shape[0] / level0_size[1]])
    rings = [np.round((r * scale - 0.5) * 16).astype(np.int32) for p in polygons for r in p.rings()]
    if rings:
        cv2.fillPoly(canvas, rings, 255, shift=4)
    return canvas > 0


def _segment_and_tile(path: Path, out: Path):
    """What the workflow's segment_tissue.py and tile_slide.py do, into ``out``."""
    out.mkdir()
    params = tissue.tissue_params()
    with Slide(path) as slide:
        result = tissue.segment_slide(
            slide, params, out / "t.geojson", out / "t_qc.jpg", out / "thumb.jpg"
        )
        polygons = tissue.read_geojson(out / "t.geojson")
        coords, lattice = tiling.tile_slide(
            slide, polygons, tiling.TilingParams(), out / "c.h5", out / "c_qc.jpg"
        )
        size, mpp = slide.dimensions, slide.mpp
    with h5py.File(out / "c.h5") as handle:
        attrs = dict(handle["coords"].attrs)
    shape = (round(size[1] * mpp / params.seg_mpp), round(size[0] * mpp / params.seg_mpp))
    return result, _mask(polygons, size, shape), coords, lattice, attrs


def test_dicom_copy_gives_the_svs_tissue_and_patches(dicom_cmu, tmp_path):
    svs = _segment_and_tile(shared_slide(CMU), tmp_path / "svs")
    dicom = _segment_and_tile(dicom_cmu, tmp_path / "dicom")
    (svs_result, svs_mask, svs_coords, svs_lattice, svs_attrs) = svs
    (dicom_result, dicom_mask, dicom_coords, dicom_lattice, dicom_attrs) = dicom
    assert svs_mask.any()
    iou = (svs_mask & dicom_mask).sum() / (svs_mask | dicom_mask).sum()
    assert iou >= 0.999, iou
    assert dicom_result.tissue_area_um2 == pytest.approx(svs_result.tissue_area_um2, rel=1e-3)
    assert dicom_lattice == svs_lattice
    assert len(svs_coords) > 10 and dicom_coords.shape == svs_coords.shape
    assert np.abs(dicom_coords - svs_coords).max() <= 1  # within a pixel
    assert (dicom_attrs["level0_mpp"], dicom_attrs["mpp_source"]) == (0.499, "dicom.PixelSpacing")
    assert dicom_attrs["name"] == "cmu-dicom"


def test_a_dicom_folder_copied_elsewhere_keeps_working(dicom_cmu, tmp_path):
    """The chosen file is found again from the folder alone (no index file, no absolute path)."""
    copy = shutil.copytree(dicom_cmu, tmp_path / "moved")
    with Slide(copy) as slide:
        assert slide.path.parent == copy and slide.slide_id == "moved"
        region = slide.read_region((1000, 1000), 0, (64, 64))
    with Slide(dicom_cmu) as original:
        assert np.array_equal(region, original.read_region((1000, 1000), 0, (64, 64)))

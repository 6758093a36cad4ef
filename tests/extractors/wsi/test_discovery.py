import pytest

from extractors.errors import SlideDiscoveryError
from extractors.wsi.discovery import (
    discover_slides,
    read_slide_sheet,
    slide_id_from_path,
)


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_folder_is_scanned_recursively_for_slide_extensions(tmp_path):
    _touch(tmp_path / "a.svs")
    _touch(tmp_path / "sub" / "b.NDPI")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / ".hidden.svs")
    entries = discover_slides(tmp_path)
    assert [e.slide_id for e in entries] == ["a", "b"]


def test_empty_folder(tmp_path):
    _touch(tmp_path / "readme.txt")
    with pytest.raises(SlideDiscoveryError, match="holds no slide") as err:
        discover_slides(tmp_path)
    assert "slides.dir" in str(err.value)


def test_missing_folder(tmp_path):
    with pytest.raises(SlideDiscoveryError, match="does not exist"):
        discover_slides(tmp_path / "nope")


def test_duplicate_ids_name_both_files(tmp_path):
    first = _touch(tmp_path / "site1" / "case7.svs")
    second = _touch(tmp_path / "site2" / "case7.svs")
    with pytest.raises(SlideDiscoveryError, match="duplicate slide ids") as err:
        discover_slides(tmp_path)
    assert str(first) in str(err.value) and str(second) in str(err.value)


def test_unsafe_id(tmp_path):
    _touch(tmp_path / "case 7 (re-cut).svs")
    with pytest.raises(SlideDiscoveryError, match="unsafe") as err:
        discover_slides(tmp_path)
    assert "slide_id" in str(err.value)


def test_slide_id_strips_known_extensions():
    assert slide_id_from_path("/x/TCGA-AB.1234.svs") == "TCGA-AB.1234"
    assert slide_id_from_path("y.ome.tiff") == "y"


def test_sheet_with_ids_and_mpp(tmp_path):
    _touch(tmp_path / "slides" / "a.svs")
    _touch(tmp_path / "slides" / "b.tif")
    sheet = tmp_path / "slides.tsv"
    sheet.write_text("slide_id\tpath\tmpp\nA1\tslides/a.svs\t0.25\nB1\tslides/b.tif\t\n")
    entries = read_slide_sheet(sheet)
    assert [(e.slide_id, e.mpp) for e in entries] == [("A1", 0.25), ("B1", None)]
    assert entries[0].path == tmp_path / "slides" / "a.svs"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("path\nmissing.svs\n", "not found"),
        ("file\na.svs\n", "no 'path' column"),
        ("path,mpp\na.svs,-1\n", "positive"),
        ("path,slide_id\na.svs,x/y\n", "unsafe"),
        ("path,slide_id\na.svs,s\na.svs,s\n", "duplicate"),
    ],
)
def test_bad_sheets(tmp_path, rows, message):
    _touch(tmp_path / "a.svs")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(rows)
    with pytest.raises(SlideDiscoveryError, match=message) as err:
        read_slide_sheet(sheet)
    assert str(sheet) in str(err.value)

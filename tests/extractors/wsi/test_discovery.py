import pytest

from extractors.errors import SlideDiscoveryError
from extractors.wsi.discovery import discover_slides, metadata_mpps, read_slide_sheet
from extractors.wsi.formats import slide_id_from_path


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


def test_every_folder_problem_is_reported_at_once(tmp_path):
    _touch(tmp_path / "bad name.svs")
    _touch(tmp_path / "also bad!.tif")
    _touch(tmp_path / "site1" / "x.svs")
    _touch(tmp_path / "site2" / "x.svs")
    with pytest.raises(SlideDiscoveryError) as err:
        discover_slides(tmp_path)
    lines = str(err.value).splitlines()
    assert "3 problems" in lines[0]
    assert len(lines) == 4
    assert "'bad name'" in lines[2] or "'bad name'" in lines[1]
    assert any("'also bad!'" in line for line in lines)
    assert any("duplicate slide ids (x:" in line for line in lines)


def test_every_sheet_row_problem_is_reported_at_once(tmp_path):
    _touch(tmp_path / "a.svs")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(
        "path,slide_id,mpp\na.svs,ok,0.5\nmissing.svs,m,\na.svs,bad id,\na.svs,z,abc\na.svs,ok,\n"
    )
    with pytest.raises(SlideDiscoveryError) as err:
        read_slide_sheet(sheet)
    message = str(err.value)
    assert "4 problems" in message
    for expected in ("line 3: slide 'm'", "line 4: slide id 'bad id'", "line 5", "'abc'", "ok:"):
        assert expected in message, expected


def test_mpp_column_with_text_keeps_the_numbers(tmp_path):
    _touch(tmp_path / "a.svs")
    _touch(tmp_path / "b.svs")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("path,mpp\na.svs,0.25\nb.svs, \n")
    assert [e.mpp for e in read_slide_sheet(sheet)] == [0.25, None]


def test_missing_sheet_names_the_setting(tmp_path):
    with pytest.raises(SlideDiscoveryError, match="slides.sheet"):
        read_slide_sheet(tmp_path / "nope.csv")


def test_symlinked_folders_are_followed_once_and_loops_are_cut(tmp_path):
    root, elsewhere = tmp_path / "slides", tmp_path / "elsewhere"
    _touch(root / "a.svs")
    _touch(elsewhere / "deep" / "b.svs")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "linked_again").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "deep" / "up").symlink_to(root, target_is_directory=True)
    (root / "c.svs").symlink_to(elsewhere / "deep" / "b.svs")
    entries = discover_slides(root)
    assert [e.slide_id for e in entries] == ["a", "b", "c"]
    assert entries[1].path == root / "linked" / "deep" / "b.svs"


def test_metadata_mpps_reads_headers_once_per_file_version(tmp_path, cmu_slide, monkeypatch):
    import openslide

    broken = _touch(tmp_path / "broken.svs")
    slides = {"cmu": cmu_slide, "broken": broken, "gone": tmp_path / "gone.svs"}
    cache = tmp_path / "cache" / "mpp.json"
    first = metadata_mpps(slides, cache=cache)
    assert first == {"cmu": pytest.approx(0.499)}  # unreadable and missing files are left out

    def no_reading(*args, **kwargs):
        raise AssertionError("read a slide whose answer was cached")

    monkeypatch.setattr(openslide, "OpenSlide", no_reading)
    assert metadata_mpps(slides, cache=cache) == first
    broken.write_bytes(b"changed")  # a new file version is read again
    with pytest.raises(AssertionError, match="cached"):
        metadata_mpps(slides, cache=cache)


def test_metadata_mpps_says_none_for_a_slide_without_mpp(tcga_slide):
    assert metadata_mpps({"tcga": tcga_slide}) == {"tcga": None}

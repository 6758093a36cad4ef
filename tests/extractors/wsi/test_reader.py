import numpy as np
import pytest

from extractors.errors import SlideError
from extractors.wsi.reader import Slide, resolve_mpp


def test_cmu_mpp_from_openslide_metadata(cmu_slide):
    with Slide(cmu_slide) as slide:
        assert slide.mpp == pytest.approx(0.499)
        assert slide.mpp_source == "openslide.mpp-x"
        assert slide.objective_power == 20


def test_missing_mpp_names_the_slide_and_the_fix(tcga_slide):
    with pytest.raises(SlideError) as err:
        Slide(tcga_slide)
    message = str(err.value)
    assert "tcga-cr-7395-01a-01-ts1" in message
    assert "'mpp' column" in message and "slides.mpp_default" in message
    assert "slides.per_slide: {tcga-cr-7395-01a-01-ts1: {mpp: 0.25}}" in message


def test_missing_mpp_resolved_by_override_or_default(tcga_slide, caplog):
    with Slide(tcga_slide, mpp_override=0.25) as slide:
        assert (slide.mpp, slide.mpp_source) == (0.25, "slide_sheet")
        assert slide.objective_power is None
    with Slide(tcga_slide, mpp_default=0.5) as slide:
        assert (slide.mpp, slide.mpp_source) == (0.5, "config_default")
    assert "slides.mpp_default" in caplog.text


def test_mpp_cascade_order():
    props = {"openslide.mpp-x": "0.25", "aperio.MPP": "0.5"}
    assert resolve_mpp(props, name="s") == (0.25, "openslide.mpp-x")
    assert resolve_mpp({"aperio.MPP": "0.5"}, name="s") == (0.5, "aperio.MPP")
    tiff = {"tiff.ResolutionUnit": "centimeter", "tiff.XResolution": "40000"}
    assert resolve_mpp(tiff, name="s") == (pytest.approx(0.25), "tiff.resolution")
    inch = {"tiff.ResolutionUnit": "inch", "tiff.XResolution": "72"}  # a screen default
    with pytest.raises(SlideError):
        resolve_mpp(inch, name="s")
    assert resolve_mpp(props, name="s", override=0.3) == (0.3, "slide_sheet")
    assert resolve_mpp({}, name="s", default=0.5) == (0.5, "config_default")
    with pytest.raises(SlideError, match="mpp override"):
        resolve_mpp(props, name="s", override=-1.0)


def test_pick_level_uses_native_level_within_tolerance(cmu_3level_slide):
    with Slide(cmu_3level_slide) as slide:
        at_1um = slide.pick_level(1.0)
        assert (at_1um.level, at_1um.scale) == (1, 1.0)
        assert at_1um.downsample == pytest.approx(2.0, rel=1e-3)
        at_half = slide.pick_level(0.5)
        assert (at_half.level, at_half.scale) == (0, 1.0)
        between = slide.pick_level(0.75)  # no level within 5%: next finer, resized
        assert between.level == 0 and between.scale == pytest.approx(0.499 / 0.75)
        assert slide.pick_level(8.0).level == 2


def test_target_finer_than_level0_is_refused(cmu_slide):
    with Slide(cmu_slide) as slide, pytest.raises(SlideError, match="finer than"):
        slide.pick_level(0.25)


def test_read_at_mpp_matches_level_read(cmu_3level_slide):
    with Slide(cmu_3level_slide) as slide:
        thumbnail = slide.read_at_mpp(slide.level_mpp(2))
        level2 = slide.read_region((0, 0), 2, slide.level_dimensions[2])
        assert thumbnail.shape == level2.shape
        assert np.abs(thumbnail.astype(int) - level2).mean() < 1.0
        coarse = slide.read_at_mpp(8.0)
        assert coarse.shape[:2] == (round(2967 * 0.499 / 8), round(2220 * 0.499 / 8))


def test_read_at_mpp_in_chunks_equals_one_read(cmu_slide, monkeypatch):
    with Slide(cmu_slide) as slide:
        whole = slide.read_at_mpp(2.0)
        monkeypatch.setattr("extractors.wsi.reader.READ_CHUNK", 512)
        chunked = slide.read_at_mpp(2.0)
    assert chunked.shape == whole.shape
    # Chunk seams may shift content by under a pixel; no row or column may be left unfilled.
    diff = np.abs(chunked.astype(int) - whole)
    assert diff.mean() < 6.0
    assert diff.mean(axis=(1, 2)).max() < 25 and diff.mean(axis=(0, 2)).max() < 25


def test_not_a_slide(tmp_path):
    fake = tmp_path / "notes.svs"
    fake.write_text("this is not a slide")
    with pytest.raises(SlideError, match="notes") as err:
        Slide(fake)
    assert "remove it" in str(err.value)


def test_truncated_slide(tmp_path, cmu_slide):
    data = cmu_slide.read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError, match="truncated") as err:
        Slide(cut)
    assert "cut" in str(err.value) and "again" in str(err.value)


def test_truncated_tile_data(tmp_path, cmu_3level_slide):
    # Keep the directories, lose the tail of the image data.
    import tifffile

    data = cmu_3level_slide.read_bytes()
    with tifffile.TiffFile(cmu_3level_slide) as tif:
        ends = [int(max(np.add(p.dataoffsets, p.databytecounts))) for p in tif.pages]
    cut = tmp_path / "tail.svs"
    cut.write_bytes(data[: max(ends) - 1000])
    with pytest.raises(SlideError, match="truncated"):
        Slide(cut)


def test_missing_file(tmp_path):
    with pytest.raises(SlideError, match="not found"):
        Slide(tmp_path / "absent.svs")


@pytest.mark.parametrize(
    ("location", "level", "size"),
    [
        ((0, 0), 0, (2220, 2967)),  # the whole slide
        ((1000, 1200), 1, (300, 200)),
        ((2000, 2800), 0, (400, 300)),  # runs past the slide: transparent, composited on white
        ((-50, -30), 2, (100, 80)),
    ],
)
def test_direct_read_equals_the_pil_read(cmu_3level_slide, location, level, size):
    with Slide(cmu_3level_slide) as slide:
        direct = slide.read_region(location, level, size)
        through_pil = slide._read_region_pil(location, level, size)
    assert direct.dtype == np.uint8 and direct.shape == (size[1], size[0], 3)
    np.testing.assert_array_equal(direct, through_pil)
    if location[0] + size[0] * slide.level_downsamples[level] > 2220:
        assert (direct[-1, -1] == 255).all()


def test_read_without_the_direct_path_is_the_same(cmu_slide, monkeypatch):
    with Slide(cmu_slide) as slide:
        direct = slide.read_at_mpp(2.0)
        monkeypatch.setattr("extractors.wsi.reader._DIRECT_READ", False)
        fallback = slide.read_at_mpp(2.0)
    np.testing.assert_array_equal(direct, fallback)

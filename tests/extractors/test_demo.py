import cv2
import numpy as np
import openslide
import pandas as pd
import pytest

from extractors.demo import (
    DEMO_MPP,
    LABELS,
    demo_cohort,
    demo_slide_ids,
    random_tissue_map,
    write_demo_cohort,
    write_demo_slide,
    write_synthetic_slide,
)

SLIDES = {"demo_000": "A", "demo_001": "A", "demo_002": "B", "demo_003": "B"}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    for slide_id, label in SLIDES.items():
        write_demo_slide(folder / f"{slide_id}.svs", slide_id=slide_id, label=label)
    return folder


def read_level(path, level):
    with openslide.OpenSlide(path) as slide:
        image = slide.read_region((0, 0), level, slide.level_dimensions[level])
    return np.asarray(image.convert("RGB"))


def tissue_mask(rgb):
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1] > 40


def tumour_share(rgb):
    """Share of tissue pixels as dark as densely packed nuclei (stroma stays above R = 210)."""
    tissue = tissue_mask(rgb)
    return (tissue & (rgb[..., 0] < 200)).sum() / tissue.sum()


def test_demo_slide_is_pyramidal_aperio(demo_dir):
    with openslide.OpenSlide(demo_dir / "demo_000.svs") as slide:
        assert slide.properties["openslide.vendor"] == "aperio"
        assert float(slide.properties["openslide.mpp-x"]) == DEMO_MPP
        assert float(slide.properties["openslide.mpp-y"]) == DEMO_MPP
        assert slide.properties["aperio.AppMag"] == "20"
        assert slide.level_count == 3
        np.testing.assert_allclose(slide.level_downsamples, (1, 4, 16), rtol=1e-3)
        width, height = slide.dimensions
    assert 5000 <= width <= 7000
    assert 4000 <= height <= 5000


def test_demo_slide_sizes_vary_between_slides(demo_dir):
    sizes = set()
    for slide_id in SLIDES:
        with openslide.OpenSlide(demo_dir / f"{slide_id}.svs") as slide:
            sizes.add(slide.dimensions)
    assert len(sizes) > 1


def test_demo_slide_is_deterministic(demo_dir, tmp_path):
    again = tmp_path / "again.svs"
    write_demo_slide(again, slide_id="demo_002", label="B")
    assert again.read_bytes() == (demo_dir / "demo_002.svs").read_bytes()
    assert not list(tmp_path.glob("*.tmp"))


def test_seed_and_label_change_the_slide(demo_dir, tmp_path):
    reference = (demo_dir / "demo_002.svs").read_bytes()
    write_demo_slide(tmp_path / "seed.svs", slide_id="demo_002", label="B", seed=1)
    write_demo_slide(tmp_path / "label.svs", slide_id="demo_002", label="A")
    assert (tmp_path / "seed.svs").read_bytes() != reference
    assert (tmp_path / "label.svs").read_bytes() != reference


def test_only_label_b_slides_show_tumour(demo_dir):
    for slide_id, label in SLIDES.items():
        share = tumour_share(read_level(demo_dir / f"{slide_id}.svs", 2))
        if label == "B":
            assert 0.08 < share < 0.4, (slide_id, share)
        else:
            assert share < 0.01, (slide_id, share)


def test_tissue_covers_designed_share(demo_dir):
    for slide_id in SLIDES:
        rgb = read_level(demo_dir / f"{slide_id}.svs", 2)
        tissue = tissue_mask(rgb)
        assert 0.25 < tissue.mean() < 0.55, (slide_id, tissue.mean())
        n_pieces, _ = cv2.connectedComponents(tissue.astype(np.uint8))
        assert 2 <= n_pieces - 1 <= 8, slide_id  # small holes may split no piece, specks are few
        background = rgb[~tissue]
        assert background.mean() > 230


def test_level_2_matches_downsampled_level_0(demo_dir):
    path = demo_dir / "demo_003.svs"
    level0 = read_level(path, 0)
    level2 = read_level(path, 2)
    height, width = level2.shape[:2]
    shrunk = cv2.resize(
        level0[: height * 16, : width * 16], (width, height), interpolation=cv2.INTER_AREA
    )
    difference = np.abs(shrunk.astype(int) - level2.astype(int))
    assert difference.mean() < 3.0
    assert np.percentile(difference, 99) < 20


def test_cohort_sheet_is_balanced_and_grouped_by_case():
    sheet = demo_cohort(16, seed=0)
    assert list(sheet.columns) == ["slide_id", "case_id", "label", "time", "event"]
    assert sheet["slide_id"].tolist() == demo_slide_ids(16)
    counts = sheet["label"].value_counts()
    assert set(counts.index) == set(LABELS)
    assert abs(counts["A"] - counts["B"]) <= 1
    per_case = sheet.groupby("case_id")
    assert (per_case.size() == 2).sum() >= 3
    assert (per_case[["label", "time", "event"]].nunique() == 1).all().all()
    assert (sheet["time"] > 0).all()
    assert set(sheet["event"]) <= {0, 1}
    assert sheet["event"].dtype.kind == "i"


@pytest.mark.parametrize("n_slides", [1, 2, 5, 9, 31])
def test_cohort_labels_balanced_for_any_size(n_slides):
    sheet = demo_cohort(n_slides, seed=3)
    assert len(sheet) == n_slides
    counts = sheet["label"].value_counts().reindex(list(LABELS), fill_value=0)
    assert abs(counts["A"] - counts["B"]) <= 1


def test_cohort_is_deterministic_and_seeded():
    pd.testing.assert_frame_equal(demo_cohort(24, seed=5), demo_cohort(24, seed=5))
    assert not demo_cohort(24, seed=5).equals(demo_cohort(24, seed=6))


def test_cohort_survival_is_shorter_for_label_b():
    cases = demo_cohort(400, seed=0).drop_duplicates("case_id")
    means = cases.groupby("label")["time"].mean()
    assert means["B"] < means["A"]
    assert 0.6 < cases["event"].mean() < 0.8


def test_write_demo_cohort_writes_slides_and_sheet(tmp_path):
    sheet = write_demo_cohort(tmp_path, n_slides=2, seed=0)
    written = pd.read_csv(tmp_path / "cohort.csv")
    pd.testing.assert_frame_equal(written, sheet)
    for slide_id in sheet["slide_id"]:
        with openslide.OpenSlide(tmp_path / "slides" / f"{slide_id}.svs") as slide:
            assert slide.properties["openslide.vendor"] == "aperio"


def test_random_tissue_map_hits_fractions():
    rng = np.random.default_rng(0)
    label_map = random_tissue_map(
        (300, 400), tissue_fraction=0.6, n_pieces=3, tumour_fraction=0.25, rng=rng
    )
    tissue = label_map > 0
    assert label_map.dtype == np.uint8
    assert set(np.unique(label_map)) == {0, 1, 2}
    assert 0.5 < tissue.mean() <= 0.6
    assert 0.2 < (label_map == 2).sum() / tissue.sum() < 0.3


def test_ink_is_blue_green(tmp_path):
    label_map = np.zeros((64, 96), dtype=np.uint8)
    label_map[10:50, 10:60] = 1
    ink_map = np.zeros_like(label_map, dtype=bool)
    ink_map[30:34, 5:90] = True  # a horizontal stroke across tissue and glass
    path = tmp_path / "ink.svs"
    write_synthetic_slide(path, label_map, level0_size=(3000, 2000), ink_map=ink_map)
    rgb = read_level(path, 0).astype(int)
    scale = 3000 / 96  # level-0 pixels per map pixel
    band = rgb[int(31 * scale) : int(33 * scale), int(15 * scale) : int(85 * scale)]
    red, green, blue = band[..., 0], band[..., 1], band[..., 2]
    assert (blue > red + 40).mean() > 0.95
    assert (green > red + 20).mean() > 0.95
    clean = rgb[int(20 * scale) : int(25 * scale), int(20 * scale) : int(50 * scale)]
    assert (clean[..., 0] > clean[..., 2]).mean() > 0.9  # stroma away from the ink stays pink


def test_synthetic_slide_honours_size_mpp_and_downsamples(tmp_path):
    label_map = np.ones((20, 30), dtype=np.uint8)
    path = tmp_path / "custom.svs"
    write_synthetic_slide(
        path, label_map, level0_size=(3000, 2000), mpp=0.25, downsamples=(1, 2, 8, 32)
    )
    with openslide.OpenSlide(path) as slide:
        assert slide.dimensions == (3000, 2000)
        assert float(slide.properties["openslide.mpp-x"]) == 0.25
        assert slide.properties["aperio.AppMag"] == "40"
        np.testing.assert_allclose(slide.level_downsamples, (1, 2, 8, 32), rtol=0.01)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"downsamples": (2, 4)},
        {"downsamples": (1, 3)},
        {"downsamples": (1, 4, 6)},
        {"downsamples": (1, 4.0)},
        {"downsamples": (1, 512)},
        {"ink_map": np.zeros((5, 5), dtype=bool)},
    ],
)
def test_synthetic_slide_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        write_synthetic_slide(
            tmp_path / "bad.svs", np.ones((10, 10), np.uint8), level0_size=(512, 512), **kwargs
        )
    assert not list(tmp_path.iterdir())

import matplotlib
import numpy as np
import pytest
from matplotlib import image
from matplotlib.figure import Figure

from extractors.errors import FileFormatError, SettingsError
from querent.plots.heatmap import (
    attention_figure,
    normalise,
    paint_scores,
    patch_boxes,
    query_selection_figure,
    region_boxes,
    selection_counts,
    selection_frequency_figure,
    top_patch,
)

GREY = 128
ALPHA = 0.6


def grey(height: int = 200, width: int = 300) -> np.ndarray:
    return np.full((height, width, 3), GREY, dtype=np.uint8)


def blend(value: float, cmap: str = "viridis") -> np.ndarray:
    colour = np.asarray(matplotlib.colormaps[cmap](value)[:3]) * 255.0
    return (1 - ALPHA) * GREY + ALPHA * colour


def lattice(x0: int, y0: int, step: int, cols: int, rows: int) -> np.ndarray:
    xs, ys = np.meshgrid(x0 + step * np.arange(cols), y0 + step * np.arange(rows))
    return np.column_stack([xs.ravel(), ys.ravel()]).astype(np.int64)


def assert_centres(rgb, coords, size, downsample, expected):
    for (x, y), value in zip(coords, expected, strict=True):
        col = int((x + size / 2) // downsample)
        row = int((y + size / 2) // downsample)
        np.testing.assert_allclose(rgb[row, col], blend(value), atol=1.5)


def test_integer_downsample_lattice_centres_show_their_rank():
    coords = lattice(512, 256, 256, cols=5, rows=4)
    scores = np.random.default_rng(0).permutation(coords.shape[0]).astype(float)
    rgb, values = paint_scores(grey(), coords, 256, 16.0, scores, alpha=ALPHA)
    expected = scores / (coords.shape[0] - 1)  # distinct scores: rank = value / (n - 1)
    assert rgb.dtype == np.uint8 and rgb.shape == (200, 300, 3)
    assert_centres(rgb, coords, 256, 16.0, expected)
    # each patch's box is filled with its own value, exactly 16 x 16 pixels
    assert np.isfinite(values).sum() == coords.shape[0] * 16 * 16
    assert values[16:32, 32:48] == pytest.approx(expected[0])


def test_fractional_downsample_and_unaligned_coords():
    coords = lattice(37, 91, 300, cols=7, rows=5)
    scores = np.linspace(-3.0, 5.0, coords.shape[0])
    rgb, values = paint_scores(grey(), coords, 300, 12.5, scores, how="minmax", alpha=ALPHA)
    assert_centres(rgb, coords, 300, 12.5, np.linspace(0, 1, coords.shape[0]))
    # neighbours tile without gaps or overlaps: covered pixels equal the union of the boxes
    boxes = patch_boxes(coords, 300, 12.5)
    assert ((boxes[:, 2:] - boxes[:, :2]) >= 23).all()
    left, top = boxes[:, :2].min(0)
    right, bottom = boxes[:, 2:].max(0)
    assert np.isfinite(values[top:bottom, left:right]).all()
    assert np.isnan(values[:top]).all() and np.isnan(values[:, :left]).all()


def test_overlap_strip_shows_the_mean_and_off_patch_is_unchanged():
    # size 256, step 192 at downsample 16: boxes x [20, 36) and [32, 48), strip x 32..35
    coords = np.array([[320, 320], [512, 320]])
    rgb, values = paint_scores(
        grey(), coords, 256, 16.0, np.array([0.0, 1.0]), how="minmax", alpha=ALPHA
    )
    np.testing.assert_allclose(rgb[28, 26], blend(0.0), atol=1.5)
    np.testing.assert_allclose(rgb[28, 42], blend(1.0), atol=1.5)
    np.testing.assert_allclose(rgb[20:36, 32:36], np.broadcast_to(blend(0.5), (16, 4, 3)), atol=1.5)
    assert values[20:36, 32:36] == pytest.approx(0.5)
    off = np.isnan(values)
    assert off.sum() == 200 * 300 - 16 * 28
    assert (rgb[off] == GREY).all()


def test_four_way_overlap_and_brute_force_reference():
    rng = np.random.default_rng(1)
    coords = lattice(100, 60, 192, cols=6, rows=4) + rng.integers(0, 40, (24, 2))
    scores = rng.random(24)
    _, values = paint_scores(grey(80, 120), coords, 256, 16.0, scores, how="none")
    total, count = np.zeros((80, 120)), np.zeros((80, 120))
    for (x0, y0, x1, y1), s in zip(patch_boxes(coords, 256, 16.0), scores, strict=True):
        total[y0:y1, x0:x1] += s
        count[y0:y1, x0:x1] += 1
    assert count.max() == 4
    expected = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    np.testing.assert_allclose(values, expected, atol=1e-12)


def test_patches_outside_the_thumbnail_are_clipped_and_tiny_patches_get_a_pixel():
    boxes = patch_boxes(np.array([[0, 0], [1000, 1000]]), 4, 64.0)
    assert ((boxes[:, 2:] - boxes[:, :2]) == 1).all()
    _, values = paint_scores(grey(10, 10), np.array([[-64, -64], [576, 0]]), 128, 64.0, [0, 1])
    assert np.isfinite(values).sum() == 1 + 2 and values[0, 0] == 0.0


def test_rank_normalisation_ties_share_and_is_monotone():
    scores = np.array([0.5, 0.1, 0.5, 0.9, 0.1, 0.3])
    ranks = normalise(scores)
    assert ranks[0] == ranks[2] and ranks[1] == ranks[4]
    order = np.argsort(scores, kind="stable")
    assert (np.diff(ranks[order]) >= 0).all()
    assert ranks.min() == pytest.approx(0.1) and ranks.max() == 1.0
    # rank is invariant under a monotone transform
    np.testing.assert_allclose(normalise(np.exp(3 * scores)), ranks)
    assert normalise(np.arange(5.0)) == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert normalise(np.ones(3)) == pytest.approx([0.5] * 3)


def test_minmax_none_nan_and_unknown():
    assert normalise([2.0, 4.0, 3.0], "minmax") == pytest.approx([0, 1, 0.5])
    assert normalise([-1.0, 0.3, 7.0], "none") == pytest.approx([0, 0.3, 1])
    out = normalise([1.0, np.nan, 3.0])
    assert np.isnan(out[1]) and out[[0, 2]] == pytest.approx([0, 1])
    with pytest.raises(SettingsError, match="rank"):
        normalise([1.0], "zscore")
    with pytest.raises(FileFormatError, match="2 scores for 3 patches"):
        paint_scores(grey(), np.zeros((3, 2)), 256, 16.0, [0.0, 1.0])


def test_selection_counts_by_hand():
    selected = np.array([[[0, 2], [2, -1], [1, 2]], [[-1, -1], [3, 0], [2, 2]]])  # (h=2, n=3, k=2)
    assert selection_counts(selected, 5).tolist() == [2, 1, 5, 1, 0]
    with pytest.raises(FileFormatError, match="region 3"):
        selection_counts(selected, 3)


def test_region_boxes_by_hand():
    coords = np.array([[0, 0], [100, 0], [400, 200], [400, 300], [100, 100]])
    regions = np.array([0, 0, 2, 2, 0])
    boxes = region_boxes(coords, regions, 100, 10.0)
    assert boxes.tolist() == [[0, 0, 20, 20], [0, 0, 0, 0], [40, 20, 50, 40]]
    assert region_boxes(coords, regions, 100, 10.0, n_regions=4).shape == (4, 4)


def test_top_patch():
    assert top_patch(np.array([0.1, 0.5, np.nan, 0.4])) == 1


def saved_non_blank(fig: Figure, path) -> np.ndarray:
    assert isinstance(fig, Figure)
    fig.savefig(path, dpi=50)
    pixels = image.imread(path)[..., :3]
    assert pixels.std() > 0.02
    return pixels


def slide():
    rng = np.random.default_rng(2)
    thumb = rng.integers(150, 255, (60, 90, 3), dtype=np.uint8)
    coords = lattice(64, 64, 128, cols=10, rows=6)
    region = (coords[:, 0] // 512) * 3 + coords[:, 1] // 512
    selected = rng.integers(-1, region.max() + 1, (2, coords.shape[0], 3))
    return thumb, coords, region, selected


def colour_bar_labels(fig: Figure) -> str:
    return " ".join(ax.get_ylabel() for ax in fig.axes)


def test_figures_save_non_blank(tmp_path):
    thumb, coords, region, selected = slide()
    attention = np.random.default_rng(3).dirichlet(np.ones(coords.shape[0]))
    ring = np.array([[0, 0], [1400, 0], [1400, 900], [0, 900], [0, 0]])
    fig = attention_figure(thumb, coords, 128, 16.0, attention, title="slide 1", tissue=[ring])
    assert "attention (percentile rank within slide)" in colour_bar_labels(fig)
    saved_non_blank(fig, tmp_path / "attention.png")
    fig = attention_figure(thumb, coords, 128, 16.0, attention, title="t", how="minmax")
    assert "min-max" in colour_bar_labels(fig)

    fig = selection_frequency_figure(thumb, coords, 128, 16.0, region, selected, title="freq")
    assert "share of all region picks" in colour_bar_labels(fig)
    saved_non_blank(fig, tmp_path / "frequency.png")

    query = top_patch(attention)
    for head in (None, 1):
        fig = query_selection_figure(
            thumb, coords, 128, 16.0, region, selected, query, head=head, title="query"
        )
        texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert texts[0] == "query patch" and texts[1].startswith("selected regions (top-k")
        chosen = np.unique(selected[:, query] if head is None else selected[head, query])
        assert len(fig.axes[0].patches) == (chosen >= 0).sum() + 1
        saved_non_blank(fig, tmp_path / f"query_{head}.png")

"""Attention heatmaps and region-selection maps: pure overlays of scores on a saved thumbnail.

Nothing here opens a slide: segmentation saves a thumbnail (RGB uint8, ``H x W x 3``) and its
``downsample`` (level-0 pixels per thumbnail pixel, a float); a heatmap paints per-patch scores
onto that array. Axes: ``n`` patches, ``r`` regions, ``h`` heads, ``k`` regions picked per patch.

A patch at level-0 top-left ``(x, y)`` of side ``size`` covers the thumbnail pixels
``[x/d, (x+size)/d) x [y/d, (y+size)/d)``, edges rounded to the nearest pixel so neighbours tile
without gaps. Where patches overlap a pixel shows the mean of their normalised scores.

Arguments shared by the functions below: ``thumbnail`` (H, W, 3) uint8 RGB of the whole slide;
``coords`` (n, 2) level-0 top-left (x, y) of each patch; ``patch_size_level0`` a patch's side in
level-0 pixels; ``downsample`` level-0 pixels per thumbnail pixel; ``region_of_patch`` (n,) the
region index of each patch; ``selected`` (h, n, k) (or (n, k)) the regions each patch picked
per head, -1 for none; ``title`` the figure title; ``cmap`` a matplotlib colormap name
(perceptually uniform by default). Figures are returned, never saved.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from extractors.errors import FileFormatError, SettingsError

NORMALISATIONS = {
    "rank": "percentile rank within slide",
    "minmax": "min-max scaled within slide",
    "none": "raw, clipped to [0, 1]",
}
QUERY_COLOUR = "#e6194b"
REGION_COLOUR = "#00b4ff"
REGION_RGB = to_rgb(REGION_COLOUR)


def patch_boxes(coords: np.ndarray, patch_size_level0: int, downsample: float) -> np.ndarray:
    """Thumbnail pixel box of each patch.

    Returns:
        ``(n, 4)`` int64 boxes ``(x0, y0, x1, y1)``, half-open, at least 1 pixel a side; not
        clipped to the thumbnail (the painter clips).
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if downsample <= 0 or patch_size_level0 <= 0:
        raise SettingsError(
            f"downsample ({downsample}) and patch_size_level0 ({patch_size_level0}) must be > 0"
        )
    start = np.floor(coords / downsample + 0.5).astype(np.int64)
    stop = np.floor((coords + patch_size_level0) / downsample + 0.5).astype(np.int64)
    return np.concatenate([start, np.maximum(stop, start + 1)], axis=1)


def normalise(scores: np.ndarray, how: str = "rank") -> np.ndarray:
    """Map scores to [0, 1]; NaN stays NaN (such patches are not painted).

    Args:
        scores: ``(n,)`` scores.
        how: ``"rank"`` (percentile rank: the same colour means the same rank on every slide;
            ties share their mean rank), ``"minmax"`` or ``"none"`` (already in [0, 1];
            clipped). Without spread (one patch, all equal) every score maps to 0.5.

    Returns:
        ``(n,)`` float64 in [0, 1].
    """
    if how not in NORMALISATIONS:
        raise SettingsError(f"unknown normalisation {how!r}; choose one of {list(NORMALISATIONS)}")
    values = np.asarray(scores, dtype=np.float64).ravel()
    out = np.full(values.shape, np.nan)
    finite = np.isfinite(values)
    kept = values[finite]
    if how == "none":
        out[finite] = np.clip(kept, 0.0, 1.0)
    elif how == "minmax" and kept.size:
        low, high = kept.min(), kept.max()
        out[finite] = (kept - low) / (high - low) if high > low else 0.5
    else:
        _, inverse, counts = np.unique(kept, return_inverse=True, return_counts=True)
        mean_rank = np.cumsum(counts) - counts + (counts - 1) / 2.0
        out[finite] = mean_rank[inverse.ravel()] / (kept.size - 1) if kept.size > 1 else 0.5
    return out


def paint_scores(
    thumbnail: np.ndarray,
    coords: np.ndarray,
    patch_size_level0: int,
    downsample: float,
    scores: np.ndarray,
    *,
    cmap: str = "viridis",
    alpha: float = 0.6,
    how: str = "rank",
) -> tuple[np.ndarray, np.ndarray]:
    """Blend each patch's normalised score, as a colour, over the thumbnail.

    Sums and counts are accumulated on a 2-D difference array (four corner updates per box,
    then cumulative sums), so the cost is ``O(n + H W)`` however many patches overlap.

    ``scores`` (n,) are normalised by ``how`` (see :func:`normalise`) and blended with opacity
    ``alpha``.

    Returns:
        The blended ``(H, W, 3)`` uint8 image and the ``(H, W)`` float mean normalised score per
        pixel, NaN where no patch lies.
    """
    image = np.asarray(thumbnail)
    if image.ndim != 3 or image.shape[2] != 3:
        raise FileFormatError(f"thumbnail must be an (H, W, 3) RGB array, got shape {image.shape}")
    coords = np.asarray(coords).reshape(-1, 2)
    values = normalise(scores, how)
    if values.shape[0] != coords.shape[0]:
        raise FileFormatError(
            f"{values.shape[0]} scores for {coords.shape[0]} patches: pair the scores with the "
            "coords of the same slide"
        )
    height, width = image.shape[:2]
    boxes = patch_boxes(coords, patch_size_level0, downsample)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & np.isfinite(values)
    x0, y0, x1, y1 = boxes[keep].T
    kept = values[keep]
    total = np.zeros((height + 1, width + 1))
    count = np.zeros((height + 1, width + 1), dtype=np.int64)
    for rows, cols, sign in ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1)):
        np.add.at(total, (rows, cols), sign * kept)
        np.add.at(count, (rows, cols), sign)
    total = total.cumsum(0).cumsum(1)[:height, :width]
    count = count.cumsum(0).cumsum(1)[:height, :width]
    covered = count > 0
    mean = np.full((height, width), np.nan)
    mean[covered] = np.clip(total[covered] / count[covered], 0.0, 1.0)
    colours = matplotlib.colormaps[cmap](mean[covered])[:, :3] * 255.0
    out = image.astype(np.float64)
    out[covered] = (1.0 - alpha) * out[covered] + alpha * colours
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), mean


def _figure(thumbnail: np.ndarray, panels: int, title: str) -> tuple[Figure, list]:
    """A figure of ``panels`` image axes, side by side for tall slides, stacked for wide ones."""
    height, width = np.asarray(thumbnail).shape[:2]
    aspect = height / max(width, 1)
    stacked = panels > 1 and aspect < 0.75
    rows, cols = (panels, 1) if stacked else (1, panels)
    panel_w = 8.0 if stacked else min(6.0, 8.0 / max(aspect, 1e-3))
    fig = Figure(
        figsize=(cols * panel_w + 1.2, rows * panel_w * aspect + 0.8), layout="constrained"
    )
    axes = list(np.atleast_1d(fig.subplots(rows, cols)).ravel())
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title)
    return fig, axes


def _show(ax, image: np.ndarray) -> None:
    """Draw an image so that thumbnail coordinate u (= level-0 x / downsample) is pixel edge u."""
    height, width = image.shape[:2]
    ax.imshow(image, extent=(0, width, height, 0), interpolation="nearest")


def _colour_bar(fig: Figure, axes: list, cmap: str, label: str, vmax: float = 1.0) -> None:
    mappable = ScalarMappable(norm=Normalize(0.0, vmax), cmap=matplotlib.colormaps[cmap])
    fig.colorbar(mappable, ax=axes, label=label, shrink=0.8)


def attention_figure(
    thumbnail: np.ndarray,
    coords: np.ndarray,
    patch_size_level0: int,
    downsample: float,
    scores: np.ndarray,
    *,
    title: str,
    how: str = "rank",
    tissue: Sequence[np.ndarray] | None = None,
    label: str = "attention",
    cmap: str = "viridis",
) -> Figure:
    """The painted thumbnail beside the plain one, with a colour bar naming the normalisation.

    ``scores`` (n,) (e.g. pooling attention) are normalised by ``how`` (see :func:`normalise`);
    ``label`` names them on the colour bar; ``tissue`` holds optional tissue outlines, (m, 2)
    level-0 rings, drawn on both panels.
    """
    painted, _ = paint_scores(
        thumbnail, coords, patch_size_level0, downsample, scores, cmap=cmap, how=how
    )
    fig, axes = _figure(thumbnail, 2, title)
    for ax, image in zip(axes, (painted, np.asarray(thumbnail)), strict=True):
        _show(ax, image)
        for ring in tissue or ():
            ring = np.asarray(ring, dtype=np.float64) / downsample
            ax.plot(ring[:, 0], ring[:, 1], color="black", linewidth=0.8)
    axes[0].set_title(label)
    axes[1].set_title("thumbnail")
    _colour_bar(fig, axes, cmap, f"{label} ({NORMALISATIONS[how]})")
    return fig


def selection_counts(selected: np.ndarray, n_regions: int) -> np.ndarray:
    """How many (patch, head) picks chose each region.

    Args:
        selected: Picks per head and patch; -1 marks no pick.
        n_regions: Number of regions ``r``.

    Returns:
        ``(r,)`` int64 counts.
    """
    picks = np.asarray(selected, dtype=np.int64).ravel()
    picks = picks[picks >= 0]
    if picks.size and picks.max() >= n_regions:
        raise FileFormatError(
            f"a selection names region {picks.max()} but the slide has {n_regions} regions: "
            "pair the selections with the region_of_patch of the same slide"
        )
    return np.bincount(picks, minlength=n_regions).astype(np.int64)


def region_boxes(
    coords: np.ndarray,
    region_of_patch: np.ndarray,
    patch_size_level0: int,
    downsample: float,
    *,
    n_regions: int | None = None,
) -> np.ndarray:
    """Thumbnail bounding box of each region's patches.

    ``n_regions`` (r) defaults to ``region_of_patch.max() + 1``.

    Returns:
        ``(r, 4)`` int64 boxes ``(x0, y0, x1, y1)``; a region without patches gets zeros.
    """
    regions = np.asarray(region_of_patch, dtype=np.int64).ravel()
    boxes = patch_boxes(coords, patch_size_level0, downsample)
    if regions.shape[0] != boxes.shape[0]:
        raise FileFormatError(f"{regions.shape[0]} region indices for {boxes.shape[0]} patches")
    r = int(regions.max()) + 1 if n_regions is None and regions.size else int(n_regions or 0)
    big = np.iinfo(np.int64).max
    out = np.column_stack([np.full((r, 2), big), np.full((r, 2), -big)])
    np.minimum.at(out[:, 0], regions, boxes[:, 0])
    np.minimum.at(out[:, 1], regions, boxes[:, 1])
    np.maximum.at(out[:, 2], regions, boxes[:, 2])
    np.maximum.at(out[:, 3], regions, boxes[:, 3])
    out[np.bincount(regions, minlength=r) == 0] = 0
    return out


def selection_frequency_figure(
    thumbnail: np.ndarray,
    coords: np.ndarray,
    patch_size_level0: int,
    downsample: float,
    region_of_patch: np.ndarray,
    selected: np.ndarray,
    *,
    title: str,
    cmap: str = "viridis",
) -> Figure:
    """How often each region was selected by all patches, painted on each region's patches.

    A patch shows its region's share of all (patch, head) picks; the colour bar runs from 0 to
    the largest share so that small shares stay visible, its ticks in share units.
    """
    regions = np.asarray(region_of_patch, dtype=np.int64).ravel()
    counts = selection_counts(selected, int(regions.max()) + 1 if regions.size else 0)
    share = counts / max(int(counts.sum()), 1)
    top = float(share.max()) if share.size and share.max() > 0 else 1.0
    fraction = share[regions] / top
    painted, _ = paint_scores(
        thumbnail, coords, patch_size_level0, downsample, fraction, cmap=cmap, how="none"
    )
    fig, axes = _figure(thumbnail, 1, title)
    _show(axes[0], painted)
    _colour_bar(fig, axes, cmap, "region selection frequency (share of all region picks)", top)
    return fig


def query_selection_figure(
    thumbnail: np.ndarray,
    coords: np.ndarray,
    patch_size_level0: int,
    downsample: float,
    region_of_patch: np.ndarray,
    selected: np.ndarray,
    query: int,
    *,
    head: int | None = None,
    title: str,
) -> Figure:
    """One query patch and the regions it attended to (as the paper's Figure 1).

    ``query`` is the query patch's index (e.g. :func:`top_patch` of the attention); ``head``
    shows one head's picks, None the union over heads.
    """
    picks = np.asarray(selected, dtype=np.int64)
    picks = picks[None] if picks.ndim == 2 else picks
    picks = picks[:, query] if head is None else picks[head, query][None]
    chosen = np.unique(picks[picks >= 0])
    boxes = region_boxes(coords, region_of_patch, patch_size_level0, downsample)
    fig, axes = _figure(thumbnail, 1, title)
    ax = axes[0]
    _show(ax, np.asarray(thumbnail))
    region = {"linewidth": 1.5, "edgecolor": REGION_COLOUR}
    for x0, y0, x1, y1 in boxes[chosen]:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=(*REGION_RGB, 0.15), **region))
    qx0, qy0, qx1, qy1 = patch_boxes(np.asarray(coords)[query], patch_size_level0, downsample)[0]
    ax.add_patch(Rectangle((qx0, qy0), qx1 - qx0, qy1 - qy0, color=QUERY_COLOUR))
    star = {"marker": "*", "color": QUERY_COLOUR, "markeredgecolor": "white", "linestyle": ""}
    ax.plot((qx0 + qx1) / 2, (qy0 + qy1) / 2, markersize=14, **star)
    which = "all heads" if head is None else f"head {head}"
    handles = [
        Line2D([], [], markersize=12, label="query patch", **star),
        Patch(facecolor="none", label=f"selected regions (top-k, {which})", **region),
    ]
    ax.legend(handles=handles, loc="upper right", fontsize="small", framealpha=0.85)
    return fig


def top_patch(attention: np.ndarray) -> int:
    """Index of the patch with the highest attention (NaN ignored)."""
    values = np.asarray(attention, dtype=np.float64).ravel()
    if not np.isfinite(values).any():
        raise FileFormatError("attention has no finite value: no top patch to show")
    return int(np.nanargmax(values))

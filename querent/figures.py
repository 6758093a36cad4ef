"""A model run's figures: plots of its metrics, attention heatmaps, QuPath overlays, mosaics.

The app floor: it reads the evaluation's files (predictions, histories, attention) and the
cached thumbnails, and hands arrays and tables to :mod:`querent.plots`. Only the top-patch
mosaics read a slide.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from extractors.io import atomic_path, read_attention, read_coords
from querent.engine.aggregate import read_predictions, read_summary
from querent.engine.metrics import METRICS, case_level, class_names, task_of
from querent.engine.target_tables import split_targets
from querent.plots import heatmap, qupath
from querent.plots.confusion import confusion_figure
from querent.plots.curves import roc_figure, training_figure
from querent.plots.mosaic import mosaic
from querent.plots.regression import predicted_figure
from querent.plots.style import save_figure, save_preview
from querent.plots.summary import summary_figure
from querent.plots.survival import km_figure, risk_groups
from querent.plots.thumbnails import read_thumbnail

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlotSettings:
    """The config section ``plots``."""

    formats: tuple[str, ...] = field(
        default=("png", "svg"), metadata={"help": "figure files; png goes into the report"}
    )
    km_groups: int = field(default=2, metadata={"help": "Kaplan-Meier risk groups: 2 or 3"})
    heatmaps_per_group: int = field(
        default=1, metadata={"help": "slides drawn per class or risk group at each end"}
    )
    heatmap_slides: tuple[str, ...] = field(
        default=(), metadata={"help": "slides to draw besides those"}
    )
    normalise: str = field(default="rank", metadata={"help": "heatmap colours: rank | minmax"})
    top_patches: int = field(default=16, metadata={"help": "patches in each mosaic (0: none)"})

    def __post_init__(self) -> None:
        """Tuples from config lists."""
        object.__setattr__(self, "formats", tuple(self.formats))
        object.__setattr__(self, "heatmap_slides", tuple(self.heatmap_slides))


def _fold_tables(eval_dirs: Sequence[Path]) -> list[pd.DataFrame]:
    tables = []
    for fold, folder in enumerate(eval_dirs):
        table = read_predictions(Path(folder) / "predictions.csv")
        tables.append(table.assign(fold=fold))
    return tables


def draw_run_plots(
    eval_dirs: Sequence[Path],
    history_paths: Sequence[Path],
    out_dir: str | Path,
    settings: PlotSettings,
) -> list[Path]:
    """The plots of one model run; returns the files written.

    ROC curves and confusion matrix (classification; several label columns: per target,
    ``roc_{target}`` and ``confusion_{target}``), Kaplan-Meier curves of risk groups (survival)
    or predicted against true values (regression), and the training curves of every fold.
    """
    out_dir = Path(out_dir)
    folds = _fold_tables(eval_dirs)
    task = task_of(folds[0])
    pooled = case_level(pd.concat(folds).drop(columns="fold"))
    figures = {}
    if task == "classification":
        for target, parts in _per_target(folds).items():
            pooled = case_level(pd.concat(parts).drop(columns="fold"))
            drawn = {
                "roc": roc_figure([case_level(t.drop(columns="fold")) for t in parts]),
                "confusion": confusion_figure(pooled, class_names(pooled)),
            }
            for kind, figure in drawn.items():
                if target:
                    figure.axes[0].set_title(f"{target}: {figure.axes[0].get_title()}")
                figures[f"{kind}_{_file_safe(target)}" if target else kind] = figure
    elif task == "regression":
        figures["predicted"] = predicted_figure([case_level(t.drop(columns="fold")) for t in folds])
    else:
        figures["km"] = km_figure(pooled, groups=settings.km_groups)
    histories = [pd.read_csv(path) for path in history_paths]
    figures["training"] = training_figure(histories, METRICS[task][0])
    written = []
    for name, figure in figures.items():
        written += save_figure(figure, out_dir / name, settings.formats)
    return written


def _per_target(folds: list[pd.DataFrame]) -> dict[str, list[pd.DataFrame]]:
    """``{target: its slice of every fold}``; ``{"": folds}`` for a single target."""
    split = [split_targets(fold) for fold in folds]
    return {target: [parts[target] for parts in split] for target in split[0]}


def _file_safe(name: str) -> str:
    """``name`` with every character but letters, digits, ``.``, ``_`` and ``-`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def draw_summary(
    summary_path: str | Path,
    figure_path: str | Path,
    table_path: str | Path,
    comparisons_path: str | Path | None = None,
) -> None:
    """The summary bar chart of every run's main metric and the summary as an HTML table.

    With ``comparisons_path`` the paired comparisons of runs follow the summary's table.
    """
    summary = read_summary(summary_path)
    metric = METRICS[summary["task"].iloc[0]][0]
    save_figure(summary_figure(summary, metric), Path(figure_path).with_suffix(""), ("png",))
    html = summary.to_html(index=False, float_format="%.3f", na_rep="", border=0)
    if comparisons_path is not None:
        comparisons = read_summary(comparisons_path)
        if len(comparisons):
            html += "\n<h4>Paired comparisons (A - B, bootstrap over common cases)</h4>\n"
            html += comparisons.to_html(index=False, float_format="%.3f", na_rep="", border=0)
    with atomic_path(table_path) as tmp:
        tmp.write_text(html)


def heatmap_slides(predictions: pd.DataFrame, per_group: int, extra: Sequence[str]) -> pd.DataFrame:
    """Slides to draw: the highest- and lowest-scoring ``per_group`` of each class or risk group.

    Classification scores a slide by its probability of its true class; survival by its risk,
    within median (or tertile) risk groups; regression by its predicted value, over all slides.
    ``extra`` slides are added.

    Returns:
        ``slide_id``, ``group``, ``score`` and ``why`` ("highest", "lowest" or "listed").
    """
    rows = []
    task = task_of(predictions)
    predictions = next(iter(split_targets(predictions).values()))  # several: the first target's
    if task == "regression":
        rows += _ends(predictions["slide_id"], predictions["prediction"], "predicted", per_group)
    elif task == "classification":
        for name in class_names(predictions):
            members = predictions[predictions["truth"] == name]
            scores = members[f"prob_{name}"]
            rows += _ends(members["slide_id"], scores, name, per_group)
    else:
        groups = risk_groups(predictions["risk"].to_numpy())
        for name in dict.fromkeys(groups):
            members = predictions[groups == name]
            rows += _ends(members["slide_id"], members["risk"], f"{name} risk", per_group)
    chosen = pd.DataFrame(rows, columns=["slide_id", "group", "score", "why"])
    chosen = chosen.drop_duplicates("slide_id")
    listed = [s for s in extra if s not in set(chosen["slide_id"])]
    missing = sorted(set(listed) - set(predictions["slide_id"]))
    if missing:
        logger.warning("plots.heatmap_slides: %s have no predictions; skipped", missing)
    listed = [s for s in listed if s not in missing]
    extra_rows = pd.DataFrame({"slide_id": listed, "group": "", "score": np.nan, "why": "listed"})
    return pd.concat([chosen, extra_rows], ignore_index=True)


def _ends(slides: pd.Series, scores: pd.Series, group: str, n: int) -> list[tuple]:
    order = np.argsort(-scores.to_numpy(), kind="stable")
    top, bottom = order[:n], order[::-1][:n]
    rows = [(slides.iloc[i], group, float(scores.iloc[i]), "highest") for i in top]
    return rows + [(slides.iloc[i], group, float(scores.iloc[i]), "lowest") for i in bottom]


def _tissue_rings(path: Path) -> list[np.ndarray]:
    """Outer rings of the tissue polygons of a GeoJSON (level-0 pixels)."""
    if not path.is_file():
        return []
    features = json.loads(path.read_text()).get("features", [])
    rings = []
    for feature in features:
        geometry = feature.get("geometry") or {}
        polygons = geometry.get("coordinates", [])
        if geometry.get("type") == "Polygon":
            polygons = [polygons]
        rings += [np.asarray(polygon[0], float) for polygon in polygons if polygon]
    return rings


def draw_run_heatmaps(
    eval_dirs: Sequence[Path],
    thumbnails: Mapping[str, Path],
    tissue: Mapping[str, Path],
    out_dir: str | Path,
    settings: PlotSettings,
) -> pd.DataFrame:
    """Heatmaps and QuPath overlays of one model run's chosen slides (see :func:`heatmap_slides`).

    ``thumbnails`` and ``tissue`` give each slide's thumbnail (JPEG with its JSON scale beside
    it) and tissue GeoJSON, as segmentation wrote them. With case bags (``cohort.bag: case``)
    the chosen cases are drawn slide by slide, every slide of each, and a slide of
    ``plots.heatmap_slides`` draws its case.

    Per slide: ``{slide}_attention.png`` and, for Querent, ``{slide}_regions.png`` (how often
    each region was picked) and ``{slide}_query.png`` (the top-attended patch and its regions),
    each with a ``_preview.jpg`` for the report;
    ``{slide}.geojson`` (tiles with measurements for QuPath); and ``index.tsv`` listing them.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folds = _fold_tables(eval_dirs)
    predictions = pd.concat(folds, ignore_index=True)
    case_of = _case_of_slide(eval_dirs)  # case bags: drawn slide by slide
    listed = list(dict.fromkeys(case_of.get(s, s) for s in settings.heatmap_slides))
    chosen = heatmap_slides(predictions, settings.heatmaps_per_group, listed)
    fold_of = dict(zip(predictions["slide_id"], predictions["fold"], strict=True))
    if case_of:
        fold_of = {slide: fold_of[case] for slide, case in case_of.items() if case in fold_of}
        slides_of: dict[str, list[str]] = {}
        for slide, case in case_of.items():
            slides_of.setdefault(case, []).append(slide)
        chosen = chosen.assign(slide_id=chosen["slide_id"].map(slides_of))
        chosen = chosen.explode("slide_id", ignore_index=True)
    rows = []
    for slide, group, score, why in chosen.itertuples(index=False):
        attention_file = Path(eval_dirs[fold_of[slide]]) / "attention.h5"
        arrays = read_attention(attention_file, slide)
        coords, attrs = read_coords(arrays["features"])
        size = int(attrs.get("patch_size_level0", attrs.get("step_level0", 1)))
        thumbnail, downsample = read_thumbnail(thumbnails[slide])
        geometry = (thumbnail, coords, size, downsample)
        attention = arrays["attention"]
        title = f"{slide} ({group}, {why})" if group else f"{slide} (listed)"
        figures = {
            "attention": heatmap.attention_figure(
                *geometry, attention, title=title, how=settings.normalise,
                tissue=_tissue_rings(tissue[slide]),
            )
        }  # fmt: skip
        measurements = {
            "attention": attention,
            "attention_rank": heatmap.normalise(attention, "rank"),
        }
        if "selected" in arrays:
            regions, selected = arrays["region_of_patch"], arrays["selected"]
            figures["regions"] = heatmap.selection_frequency_figure(
                *geometry, regions, selected, title=f"{title}: region picks"
            )
            figures["query"] = heatmap.query_selection_figure(
                *geometry, regions, selected, heatmap.top_patch(attention),
                title=f"{title}: top patch and its regions",
            )  # fmt: skip
            counts = heatmap.selection_counts(selected, int(regions.max()) + 1)
            measurements["region_picks"] = counts[regions].astype(float)
        for name, figure in figures.items():
            save_figure(figure, out_dir / f"{slide}_{name}", ("png",))
            save_preview(figure, out_dir / f"{slide}_{name}_preview.jpg")
        qupath.write_overlay(
            out_dir / f"{slide}.geojson", qupath.tile_features(coords, size, measurements)
        )
        rows.append(
            {
                "slide_id": slide,
                "group": group,
                "score": score,
                "why": why,
                "attention_file": str(attention_file),
                "figures": ",".join(figures),
            }
        )
    index = pd.DataFrame(rows)
    with atomic_path(out_dir / "index.tsv") as tmp:
        index.to_csv(tmp, sep="\t", index=False)
    return index


def _case_of_slide(eval_dirs: Sequence[Path]) -> dict[str, str]:
    """Slide -> its case, for the slides of case bags in the folds' attention.h5 (else empty)."""
    import h5py

    case_of = {}
    for folder in eval_dirs:
        with h5py.File(Path(folder) / "attention.h5", "r") as h5:
            case_of |= {name: str(h5[name].attrs["bag"]) for name in h5 if "bag" in h5[name].attrs}
    return case_of


def draw_top_patches(
    heatmaps_dir: str | Path,
    slides: Mapping[str, str | Path],
    slide_kwargs: Mapping[str, dict],
    out_dir: str | Path,
    n_patches: int,
) -> list[Path]:
    """A mosaic of the ``n_patches`` highest-attention patches of every heatmap slide.

    Reads each slide (at the tiling level, resized to the patch size); writes
    ``{slide}_top_patches.jpg``.
    """
    from matplotlib import image

    from extractors.patches import read_patch_images
    from extractors.wsi.reader import Slide

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = pd.read_csv(Path(heatmaps_dir) / "index.tsv", sep="\t", dtype={"slide_id": str})
    written = []
    for slide_id, attention_file in zip(index["slide_id"], index["attention_file"], strict=True):
        arrays = read_attention(attention_file, slide_id)
        coords, attrs = read_coords(arrays["features"])
        top = np.argsort(-arrays["attention"], kind="stable")[:n_patches]
        with Slide(slides[slide_id], **slide_kwargs.get(slide_id, {})) as slide:
            images = read_patch_images(slide, coords[top], attrs)
        path = out_dir / f"{slide_id}_top_patches.jpg"
        with atomic_path(path) as tmp:
            image.imsave(tmp, mosaic(images, columns=4), format="jpg")
        written.append(path)
    return written

"""Figures are written, readable, not blank, and show the numbers the libraries compute."""

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from lifelines.statistics import multivariate_logrank_test
from sklearn.metrics import confusion_matrix, r2_score, roc_auc_score

from querent.plots.confusion import confusion_figure
from querent.plots.curves import roc_figure, training_figure
from querent.plots.regression import predicted_figure
from querent.plots.style import PREVIEW_DPI, new_figure, save_figure, save_preview
from querent.plots.summary import summary_figure
from querent.plots.survival import km_figure, risk_groups

ROOT = Path(__file__).resolve().parents[3]
BINARY = ["normal", "tumor"]
THREE = ["luad", "lusc", "normal"]


def _classification_fold(rng, classes, n_per_class, fold):
    truth = np.repeat(np.arange(len(classes)), n_per_class)
    logits = rng.normal(size=(truth.size, len(classes)))
    logits[np.arange(truth.size), truth] += 1.2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    table = pd.DataFrame(
        {
            "slide_id": [f"s{fold}_{i}" for i in range(truth.size)],
            "case_id": [f"c{fold}_{i}" for i in range(truth.size)],
            "truth": np.asarray(classes)[truth],
        }
    )
    return table.join(pd.DataFrame(probs, columns=[f"prob_{name}" for name in classes]))


def _read_back(table, path):
    """Round trip through predictions.csv as the pipeline writes and reads it."""
    table.to_csv(path, index=False)
    return pd.read_csv(path, dtype={"slide_id": str, "case_id": str, "truth": str})


@pytest.fixture
def binary_folds(tmp_path):
    rng = np.random.default_rng(0)
    return [
        _read_back(_classification_fold(rng, BINARY, 10, k), tmp_path / f"binary_{k}.csv")
        for k in range(3)
    ]


@pytest.fixture
def three_class_folds():
    rng = np.random.default_rng(1)
    return [_classification_fold(rng, THREE, 7, k) for k in range(3)]


@pytest.fixture
def survival_table(tmp_path):
    rng = np.random.default_rng(2)
    n = 60
    risk = rng.normal(size=n)
    table = pd.DataFrame(
        {
            "slide_id": [f"s{i}" for i in range(n)],
            "case_id": [f"c{i}" for i in range(n)],
            "time": rng.exponential(scale=24.0 * np.exp(-risk)),
            "event": (rng.random(n) < 0.7).astype(int),
            "risk": risk + rng.normal(scale=0.5, size=n),
            "hazard_0": rng.random(n),
        }
    )
    return _read_back(table, tmp_path / "survival.csv")


def _assert_written(figure, path):
    written = save_figure(figure, path)
    assert [p.suffix for p in written] == [".png", ".svg"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)
    assert not list(path.parent.glob("*.tmp"))
    image = matplotlib.image.imread(written[0])
    height, width = image.shape[:2]
    assert 300 <= height <= 3000 and 300 <= width <= 3000
    assert image[..., :3].var() > 0
    assert "<svg" in written[1].read_text()[:2000]


def _texts(figure):
    return [text.get_text() for text in figure.findobj(matplotlib.text.Text)]


def test_plots_load_no_torch_slide_or_hdf5_library():
    code = (
        "import json, sys\n"
        "import querent.plots.curves, querent.plots.confusion\n"
        "import querent.plots.survival, querent.plots.summary, querent.plots.regression\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    forbidden = ("torch", "openslide", "cv2", "matplotlib.pyplot", "extractors.wsi")
    forbidden += ("extractors.encoders", "querent.models", "querent.engine")
    loaded = json.loads(out)
    assert [m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden)] == []


def test_roc_figure_binary_legend_has_sklearn_aucs(binary_folds, tmp_path):
    figure = roc_figure(binary_folds, title="tumour vs normal")
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    aucs = [roc_auc_score(fold["truth"] == "tumor", fold["prob_tumor"]) for fold in binary_folds]
    for k, auc in enumerate(aucs):
        assert f"fold {k} (AUC {auc:.3f})" in legend
    assert f"mean (AUC {np.mean(aucs):.3f} ± {np.std(aucs, ddof=1):.3f})" in legend
    assert "positive class: tumor" in figure.axes[0].get_title()
    _assert_written(figure, tmp_path / "roc")


def test_roc_figure_three_classes_is_one_vs_rest_macro(three_class_folds, tmp_path):
    figure = roc_figure(three_class_folds)
    ax = figure.axes[0]
    assert "one-vs-rest macro" in ax.get_title()
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    for k, fold in enumerate(three_class_folds):
        probs = fold[[f"prob_{name}" for name in THREE]].to_numpy()
        auc = roc_auc_score(fold["truth"], probs, multi_class="ovr", labels=THREE)
        assert f"fold {k} (AUC {auc:.3f})" in legend
    _assert_written(figure, tmp_path / "roc3.png")


def test_roc_figure_skips_a_fold_without_a_class(binary_folds):
    folds = [*binary_folds, binary_folds[0][binary_folds[0]["truth"] == "normal"]]
    legend = [text.get_text() for text in roc_figure(folds).axes[0].get_legend().get_texts()]
    assert "fold 3 skipped: tumor absent" in legend
    assert not any(text.startswith("fold 3 (AUC") for text in legend)


def test_training_figure_has_loss_and_metric_panels(tmp_path):
    rng = np.random.default_rng(3)
    epochs = np.arange(8)
    histories = [
        pd.DataFrame(
            {
                "epoch": epochs,
                "train_loss": np.exp(-epochs / 4) + rng.random(8) * 0.05,
                "val_loss": np.exp(-epochs / 5) + rng.random(8) * 0.05,
                "val_auc": 0.6 + 0.03 * epochs + rng.random(8) * 0.02,
                "lr": 1e-4,
                "seconds": 1.0,
            }
        )
        for _ in range(3)
    ]
    figure = training_figure(histories, "auc")
    loss_ax, metric_ax = figure.axes
    assert len(loss_ax.get_lines()) == 6 and len(metric_ax.get_lines()) == 3
    assert metric_ax.get_ylabel() == "val_auc"
    _assert_written(figure, tmp_path / "training")
    with pytest.raises(ValueError, match="val_c_index"):
        training_figure(histories, "c_index")


def test_confusion_figure_cells_hold_sklearn_counts(three_class_folds, tmp_path):
    table = pd.concat(three_class_folds, ignore_index=True)
    predicted = np.asarray(THREE)[table[[f"prob_{c}" for c in THREE]].to_numpy().argmax(axis=1)]
    expected = confusion_matrix(table["truth"], predicted, labels=THREE)
    figure = confusion_figure(table, THREE)
    cells = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
        for t in figure.axes[0].texts
    }
    assert len(cells) == 9
    for (row, column), count in np.ndenumerate(expected):
        share = count / expected[row].sum()
        assert cells[row, column] == f"{count}\n{share:.0%}"
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == THREE
    _assert_written(figure, tmp_path / "confusion")


def test_risk_groups_split_at_median_and_tertiles():
    rng = np.random.default_rng(4)
    risk = rng.permutation(np.arange(10.0))
    groups = risk_groups(risk)
    assert (groups == "high").sum() == 5 and (groups == "low").sum() == 5
    assert set(risk[groups == "high"]) == {5.0, 6.0, 7.0, 8.0, 9.0}
    odd = risk_groups(np.arange(9.0))
    assert odd.tolist() == ["low"] * 5 + ["high"] * 4  # the median itself goes low
    tertiles = risk_groups(rng.permutation(np.arange(30.0)), groups=3)
    assert [(tertiles == name).sum() for name in ("low", "mid", "high")] == [10, 10, 10]
    assert risk_groups(np.arange(9.0), 3).tolist() == ["low"] * 3 + ["mid"] * 3 + ["high"] * 3
    with pytest.raises(ValueError, match="groups"):
        risk_groups(risk, groups=4)


@pytest.mark.parametrize("groups", [2, 3])
def test_km_figure_shows_the_lifelines_log_rank_p(survival_table, groups, tmp_path):
    risk = survival_table["risk"].to_numpy()
    cuts = np.quantile(risk, np.arange(1, groups) / groups)
    labels = np.digitize(risk, cuts, right=True)
    p = multivariate_logrank_test(survival_table["time"], labels, survival_table["event"]).p_value
    figure = km_figure(survival_table, groups=groups)
    assert f"log-rank p = {p:.3g}" in figure.axes[0].get_title()
    at_risk = [t.get_text() for t in figure.axes[1].texts]
    assert str(int((labels == 0).sum())) in at_risk  # everyone is at risk at time 0
    _assert_written(figure, tmp_path / f"km_{groups}")


def _summary():
    rows = []
    for model, encoder, auc in [
        ("abmil", "uni", 0.71),
        ("querent_k8", "uni", 0.83),
        ("querent_k8", "conch", 0.78),
        ("mean_pool", "uni", 0.62),
    ]:
        rows.append(
            {
                "model": model,
                "encoder": encoder,
                "task": "classification",
                "n_cases": 60,
                "n_folds": 3,
                "auc_pooled": auc,
                "auc_mean": auc + 0.04,
                "auc_std": 0.03,
                "auc_ci_low": auc - 0.06,
                "auc_ci_high": min(auc + 0.05, 1.0),
            }
        )
    return pd.DataFrame(rows)


def test_summary_figure_draws_one_sorted_bar_per_run(tmp_path):
    summary = _summary()
    figure = summary_figure(summary, "auc")
    ax = figure.axes[0]
    widths = [patch.get_width() for patch in ax.patches]
    assert len(widths) == len(summary)
    assert widths == sorted(summary["auc_pooled"])  # the bars are the pooled headline
    assert ax.get_yticklabels()[-1].get_text() == "querent_k8 (uni)"
    assert any(line.get_xdata()[0] == 0.5 for line in ax.get_lines())
    _assert_written(figure, tmp_path / "summary")
    with pytest.raises(ValueError, match="c_index_pooled"):
        summary_figure(summary, "c_index")


def test_save_figure_replaces_a_known_suffix_and_rejects_unknown_formats(tmp_path):
    figure = new_figure(3, 2)
    figure.add_subplot().plot([0, 1], [1, 0])
    assert save_figure(figure, tmp_path / "a.b.png", formats=("png",)) == [tmp_path / "a.b.png"]
    assert save_figure(figure, tmp_path / "fold.0", formats=("svg",)) == [tmp_path / "fold.0.svg"]
    with pytest.raises(ValueError, match="formats"):
        save_figure(figure, tmp_path / "x", formats=("jpeg",))


def test_preview_is_a_small_jpeg_of_the_same_figure(tmp_path):
    figure = new_figure(6, 4)
    figure.add_subplot().imshow(np.random.default_rng(0).random((200, 300)))
    full = save_figure(figure, tmp_path / "map", formats=("png",))[0]
    preview = save_preview(figure, tmp_path / "map_preview.jpg")
    assert preview.read_bytes()[:2] == b"\xff\xd8"  # JPEG
    assert preview.stat().st_size < full.stat().st_size / 2
    assert matplotlib.image.imread(preview).shape[1] == round(6 * PREVIEW_DPI)


# --- regression ------------------------------------------------------------------------------


def _regression_folds(tmp_path):
    rng = np.random.default_rng(4)
    folds = []
    for k in range(3):
        target = rng.normal(50.0, 10.0, 12)
        table = pd.DataFrame(
            {
                "case_id": [f"c{k}_{i}" for i in range(12)],
                "target": target,
                "prediction": target + rng.normal(0.0, 6.0, 12),
            }
        )
        folds.append(_read_back(table, tmp_path / f"regression_{k}.csv"))
    return folds


def test_predicted_figure_has_a_colour_per_fold_the_identity_and_sklearn_r2(tmp_path):
    folds = _regression_folds(tmp_path)
    figure = predicted_figure(folds)
    ax = figure.axes[0]
    pooled = pd.concat(folds)
    assert ax.get_title() == (
        f"out-of-fold cases (n = 36): R² = {r2_score(pooled['target'], pooled['prediction']):.3f}"
    )
    points = ax.collections
    assert [len(c.get_offsets()) for c in points] == [12, 12, 12]
    assert len({tuple(c.get_facecolor()[0]) for c in points}) == 3
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["fold 0", "fold 1", "fold 2", "predicted = true"]
    (identity,) = ax.get_lines()
    assert list(identity.get_xdata()) == list(identity.get_ydata())
    low, high = identity.get_xdata()
    assert low < pooled[["target", "prediction"]].min().min()
    assert high > pooled[["target", "prediction"]].max().max()
    _assert_written(figure, tmp_path / "predicted")
    with pytest.raises(ValueError, match="prediction"):
        predicted_figure([folds[0].drop(columns="prediction")])


def test_summary_figure_draws_a_negative_r2(tmp_path):
    summary = pd.DataFrame(
        {
            "model": ["a", "b"],
            "encoder": ["uni", "uni"],
            "r2_pooled": [0.35, -0.42],
            "r2_ci_low": [0.1, -0.9],
            "r2_ci_high": [0.5, -0.1],
            "r2_mean": [0.3, -0.5],
        }
    )
    ax = summary_figure(summary, "r2").axes[0]
    assert ax.get_xlim()[0] <= -0.9  # the negative bar and its CI are inside the axes
    assert any(line.get_xdata()[0] == 0.0 for line in ax.get_lines())  # R² of the mean

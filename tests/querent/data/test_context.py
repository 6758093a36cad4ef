"""Context cohorts: the label lives in the arrangement of patch types, nowhere else."""

import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from querent.data.bags import read_bag_arrays
from querent.data.context import (
    FAT,
    IMMUNE,
    KINDS,
    TUMOUR,
    TYPES,
    ContextSettings,
    FeatureBank,
    bag_statistics,
    defining_statistic,
    generate_slide,
    neighbour_cooccurrence,
    prototypes,
)
from querent.data.synthetic import write_context_cohort


def _cohort(tmp_path_factory, **settings):
    folder = tmp_path_factory.mktemp("context")
    sheet = write_context_cohort(folder, ContextSettings(**settings))
    sheet = pd.read_csv(sheet)
    arrays = {s: read_bag_arrays(folder / "features" / f"{s}.h5") for s in sheet["slide_id"]}
    types = {}
    for slide_id in sheet["slide_id"]:
        with h5py.File(folder / "features" / f"{slide_id}.h5") as h5:
            types[slide_id] = h5["types"][:]
    return sheet, arrays, types, pd.read_csv(folder / "truth.csv")


@pytest.fixture(scope="module")
def margin_cohort(tmp_path_factory):
    return _cohort(tmp_path_factory, kind="margin", slides=120, patches=300, seed=4)


def _cv_auc(x, y):
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return roc_auc_score(y, cross_val_predict(model, x, y, cv=folds, method="predict_proba")[:, 1])


def test_a_permutation_invariant_bag_statistic_is_at_chance(margin_cohort):
    sheet, arrays, types, truth = margin_cohort
    y = (sheet["label"] == "pos").to_numpy()
    stats = np.array([bag_statistics(arrays[s][0]) for s in sheet["slide_id"]])
    shares = np.array(
        [np.bincount(types[s], minlength=4) / len(types[s]) for s in sheet["slide_id"]]
    )
    assert abs(_cv_auc(stats, y) - 0.5) < 0.15
    assert abs(_cv_auc(shares, y) - 0.5) < 0.15
    # ...while the arrangement separates the classes completely
    assert roc_auc_score(y, truth["statistic"]) > 0.95


def _slides(kind, n_slides=80, patches=600, reach=2, bank=None):
    settings = ContextSettings(kind=kind, patches=patches, range=reach, seed=3)
    rng, protos = np.random.default_rng(0), prototypes(settings)
    return [generate_slide(rng, settings, float(i % 2), protos, bank) for i in range(n_slides)]


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "control"])
def test_every_arrangement_keeps_its_promise(kind):
    """Type shares and bag statistics at chance; the defining statistic separates."""
    slides = _slides(kind)
    y = np.array([s.score for s in slides]) > 0.5
    shares = np.array([np.bincount(s.types, minlength=4) / len(s.types) for s in slides])
    stats = np.array([bag_statistics(s.features) for s in slides])
    statistic = [defining_statistic(kind, s.cells, s.types, 2) for s in slides]
    assert np.abs(shares[y].mean(0) - shares[~y].mean(0)).max() < 0.015
    assert abs(_cv_auc(stats, y) - 0.5) < 0.2
    assert roc_auc_score(y, statistic) > 0.95


@pytest.mark.parametrize(("kind", "reach"), [("pair", 3), ("layers", 3), ("motif", 2)])
def test_no_patch_of_the_far_designs_touches_its_partner(kind, reach):
    """Smoothing over the 8 neighbours cannot tell these classes apart: no contact in either."""
    pairs = {"pair": (TUMOUR, FAT), "layers": (TUMOUR, IMMUNE), "motif": (FAT, IMMUNE)}
    a, b = pairs[kind]
    for slide in _slides(kind, n_slides=6, reach=reach):
        touching = neighbour_cooccurrence(slide.cells, slide.types, a, b)
        if kind == "motif":  # only scattered fat may touch an immune patch, in either class
            assert touching < 0.5
        else:
            assert touching == 0


def test_layers_are_ordered_tumour_immune_fat_in_positive_slides():
    grid_types = {}
    for slide in _slides("layers", n_slides=2, patches=1500):
        cells = slide.cells - slide.cells.min(0)
        grid = np.full(cells.max(0)[::-1] + 1, -1)
        grid[cells[:, 1], cells[:, 0]] = slide.types
        distance = ndimage.distance_transform_edt(grid != TUMOUR)
        grid_types[slide.score] = (
            distance[grid == IMMUNE].mean(),
            distance[grid == FAT].mean(),
        )
    assert grid_types[1.0][0] < grid_types[1.0][1]  # immune nearer the tumour than fat
    assert grid_types[0.0][0] > grid_types[0.0][1]


def test_a_feature_bank_gives_each_type_the_features_of_its_cluster():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(len(TYPES) + 1, 6)).astype(np.float32) * 10
    labels = np.repeat(np.arange(len(TYPES) + 1), 30)
    bank = FeatureBank(
        centres[labels] + rng.normal(size=(len(labels), 6)).astype(np.float32), labels
    )
    for slide in _slides("control", n_slides=2, bank=bank):
        nearest = np.argmin(np.linalg.norm(slide.features[:, None] - centres, axis=-1), axis=1)
        control_immune = (slide.types == IMMUNE) & (nearest == len(TYPES))
        assert np.array_equal(np.where(control_immune, IMMUNE, nearest), slide.types)
        assert control_immune.any() == (slide.score > 0.5)
        assert {tuple(row) for row in slide.features} <= {tuple(row) for row in bank.features}
    with pytest.raises(ValueError, match="no patch of type"):
        FeatureBank(bank.features[:30], labels[:30]).draw(rng, np.array([0, 1]))


def test_type_counts_follow_one_distribution_in_both_classes(margin_cohort):
    sheet, _, types, _ = margin_cohort
    shares = pd.DataFrame(
        [np.bincount(types[s], minlength=4) / len(types[s]) for s in sheet["slide_id"]],
        columns=TYPES,
    ).assign(label=sheet["label"])
    means = shares.groupby("label").mean()
    assert (means.loc["pos"] - means.loc["neg"]).abs().max() < 0.01


def test_files_are_feature_files_on_one_lattice(margin_cohort):
    sheet, arrays, types, truth = margin_cohort
    assert list(sheet.columns) == ["slide_id", "case_id", "label", "time", "event"]
    for slide_id in sheet["slide_id"][:5]:
        features, cells = arrays[slide_id]
        assert features.shape == (len(cells), 32) and len(types[slide_id]) == len(cells)
        assert len(np.unique(cells, axis=0)) == len(cells)  # one patch per cell
        assert 0.85 * 300 <= len(cells) <= 1.15 * 300 + 1


@pytest.mark.parametrize(
    ("kind", "a", "b"), [("margin", IMMUNE, TUMOUR), ("aggregate", IMMUNE, IMMUNE)]
)
def test_each_arrangement_shows_in_its_neighbourhood_statistic(kind, a, b):
    settings = ContextSettings(kind=kind, patches=1500, range=2)
    rng = np.random.default_rng(0)
    protos = prototypes(settings)
    share = {
        score: np.mean(
            [
                neighbour_cooccurrence(slide.cells, slide.types, a, b)
                for slide in (generate_slide(rng, settings, score, protos) for _ in range(4))
            ]
        )
        for score in (0.0, 1.0)
    }
    assert share[1.0] > share[0.0] + 0.2


def test_control_slides_carry_the_label_in_single_patches():
    settings = ContextSettings(kind="control", patches=400)
    rng = np.random.default_rng(1)
    protos = prototypes(settings)
    slide = generate_slide(rng, settings, 1.0, protos)
    immune = slide.features[slide.types == IMMUNE]
    to_positive = np.linalg.norm(immune - protos[len(TYPES)], axis=1).mean()
    to_negative = np.linalg.norm(immune - protos[IMMUNE], axis=1).mean()
    assert to_positive < to_negative


def test_prototypes_are_equidistant_at_the_separation():
    protos = prototypes(ContextSettings(dim=16, separation=3.0, noise=0.5))
    distances = np.linalg.norm(protos[:, None] - protos[None], axis=-1)
    off = distances[~np.eye(len(protos), dtype=bool)]
    np.testing.assert_allclose(off, 1.5, rtol=1e-5)


def test_survival_times_shorten_with_the_score(tmp_path_factory):
    sheet, _, _, truth = _cohort(
        tmp_path_factory, kind="margin", task="survival", slides=200, patches=60, seed=2
    )
    # the hazard is 20 times higher at score 1: its slides die far sooner
    by_score = sheet["time"].groupby(truth["score"].to_numpy()).median()
    assert by_score[1.0] < by_score[0.0] / 4


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="kind"):
        ContextSettings(kind="spiral")
    with pytest.raises(ValueError, match="task"):
        ContextSettings(task="regression")

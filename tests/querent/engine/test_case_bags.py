"""Training and evaluation on case bags: one prediction per case, attention per slide."""

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from extractors.errors import CohortError, FileFormatError
from querent.data.cohort import CohortSettings
from querent.data.splits import SplitSettings, split_cohort, write_splits
from querent.engine.evaluate import evaluate_fold, predict_slides
from querent.engine.experiment import load_experiment
from querent.engine.metrics import case_level
from querent.engine.runs import model_runs
from querent.engine.train import train_fold
from tests.helpers import TRAIN_RUNS

pytestmark = pytest.mark.slow  # the module's fixture trains a model (about 5 s)


@pytest.fixture(scope="module")
def case_run(synthetic_cohort, tmp_path_factory):
    """Querent trained (1 epoch) and evaluated on fold 0 of 3 of the synthetic cases."""
    sheet, folder = synthetic_cohort
    out = tmp_path_factory.mktemp("case_run")
    runs = model_runs({"querent": TRAIN_RUNS["querent"]}, {"epochs": 1, "max_patches": 150})
    experiment = load_experiment(
        CohortSettings(sheet=str(sheet), bag="case"),
        SplitSettings(folds=3),
        folder,
        encoder="synthetic",
        runs=runs,
    )
    write_splits(split_cohort(experiment.slides, experiment.splits), out / "splits.csv")
    train, val, evaluate = experiment.fold(out / "splits.csv", 0)
    model = train_fold(
        runs["querent"], experiment.cohort, experiment.files, train, val, out / "model",
        encoder="synthetic", fold=0,
    )  # fmt: skip
    evaluate_fold(model, experiment.cohort, experiment.files, evaluate, out / "eval")
    return experiment, (train, val, evaluate), model, out


def test_case_bags_train_and_predict_once_per_case(case_run):
    experiment, (train, val, evaluate), model, out = case_run
    cases = experiment.slides.table.groupby("case_id")["slide_id"].apply(list)
    assert len(experiment.slides.table) == 28 and len(cases) == 24
    assert not set(train) & set(val) | set(train) & set(evaluate)  # ids are cases, split by case
    assert set(train) | set(val) | set(evaluate) == set(cases.index)
    predictions = pd.read_csv(out / "eval" / "predictions.csv", dtype=str)
    assert predictions["slide_id"].tolist() == predictions["case_id"].tolist() == evaluate
    assert len(case_level(predictions.astype({"prob_neg": float, "prob_pos": float}))) == len(
        evaluate
    )
    ckpt = torch.load(model, weights_only=True)
    assert ckpt["bag"] == "case"
    history = pd.read_csv(model.parent / "history.csv")
    assert len(history) == 1


def test_case_bags_keep_attention_per_slide(case_run):
    experiment, (_, _, evaluate), _, out = case_run
    slides = experiment.slides.table.set_index("slide_id")["case_id"]
    wanted = sorted(slides.index[slides.isin(evaluate)])
    assert len(wanted) > len(evaluate)  # the fold holds a case of two slides
    with h5py.File(out / "eval" / "attention.h5") as h5:
        assert sorted(h5) == wanted
        for slide in wanted:
            group = h5[slide]
            with h5py.File(group.attrs["features"]) as features:
                n = len(features["features"])
            assert group.attrs["features"].endswith(f"{slide}.h5")
            assert group.attrs["bag"] == slides[slide]
            assert len(group["attention"]) == len(group["region_of_patch"]) == n
            regions = group["region_of_patch"][:]
            assert set(regions.tolist()) == set(range(regions.max() + 1))
            assert group["selected"].shape[1] == n and group["selected"][:].max() <= regions.max()


def test_a_case_model_is_refused_where_bags_are_slides(case_run):
    experiment, (_, _, evaluate), model, out = case_run
    slide_files = {p.stem: p for paths in experiment.files.values() for p in paths}
    slides = experiment.slides
    some = sorted(slides.table.loc[slides.table["case_id"].isin(evaluate), "slide_id"])
    with pytest.raises(CohortError, match="trained on case bags, but cohort.bag is slide"):
        evaluate_fold(model, slides, slide_files, some, out / "wrong")
    with pytest.raises(FileFormatError, match="querent predict applies models of single slides"):
        predict_slides([model], {s: slide_files[s] for s in some}, out / "predict")


def test_heatmaps_of_a_case_are_drawn_slide_by_slide(case_run):
    from extractors.wsi.tissue import write_thumbnail
    from querent.figures import PlotSettings, draw_run_heatmaps

    experiment, (_, _, evaluate), _, out = case_run
    slides = experiment.slides.table.set_index("slide_id")["case_id"]
    pair = next(case for case in evaluate if (slides == case).sum() == 2)
    listed = sorted(slides.index[slides == pair])[1]  # a slide of a case names its case
    thumbnails = {}
    for slide in slides.index[slides.isin(evaluate)]:
        thumbnails[slide] = out / "thumbnails" / f"{slide}.jpg"
        thumbnails[slide].parent.mkdir(exist_ok=True)
        write_thumbnail(
            thumbnails[slide], np.full((40, 60, 3), 240, np.uint8), (60 * 256, 40 * 256), 0.5
        )
    settings = PlotSettings(formats=("png",), heatmaps_per_group=0, heatmap_slides=(listed,))
    no_tissue = dict.fromkeys(thumbnails, out / "no_tissue.geojson")
    index = draw_run_heatmaps([out / "eval"], thumbnails, no_tissue, out / "heatmaps", settings)
    assert sorted(index["slide_id"]) == sorted(slides.index[slides == pair])
    assert set(index["why"]) == {"listed"}
    for slide in index["slide_id"]:
        assert (out / "heatmaps" / f"{slide}_regions.png").is_file()

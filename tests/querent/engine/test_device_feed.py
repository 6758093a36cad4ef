import pandas as pd
import pytest
import torch

from querent.data.bags import BagDataset, EpochOrder, bag_loader
from querent.engine.device_feed import DeviceFeed
from querent.engine.runs import model_run
from querent.engine.train import train_fold
from tests.helpers import TRAIN_RUNS, float16_copies, synthetic_fold


def _files(synthetic_cohort):
    _, folder = synthetic_cohort
    return {path.stem: path for path in sorted(folder.glob("*.h5"))}


@pytest.mark.parametrize(
    ("subset", "max_patches"), [("random", 40), ("crop", 40), ("random", None)]
)
def test_streamed_bags_the_feed_reads_are_the_loaders(
    synthetic_cohort, tmp_path, subset, max_patches
):
    files = _files(synthetic_cohort)
    slides = sorted(files)[:6]
    cases = {"case": (files[slides[0]], files[slides[1]]), **{s: files[s] for s in slides[2:]}}
    halves = float16_copies({s: files[s] for s in slides[2:4]}, tmp_path)
    for bag_files in (cases, halves):
        options = {"region_size": 2, "max_patches": max_patches, "subset": subset, "seed": 5}
        ids = list(bag_files)
        loaded = BagDataset(bag_files, ids, **options)
        streamed = BagDataset(bag_files, ids, **options, read_features=False)
        assert streamed[0].features is None
        for epoch in (0, 1):
            orders = [EpochOrder(len(ids), seed=1, shuffle=True) for _ in range(2)]
            for order in orders:
                order.set_epoch(epoch)
            loader = bag_loader(streamed, orders[0], workers=0)
            fed = list(DeviceFeed(loader, torch.device("cpu"), read_ahead=2))
            plain = list(bag_loader(loaded, orders[1], workers=0))
            assert [b.slide_id for b in fed] == [b.slide_id for b in plain]
            for got, want in zip(fed, plain, strict=True):
                assert torch.equal(got.features, want.features)  # float16 -> float32 is exact
                assert torch.equal(got.cells, want.cells) and torch.equal(got.rows, want.rows)
        stored = DeviceFeed(loader, torch.device("cpu")).host_features(streamed[0])
        assert stored.dtype == (torch.float16 if bag_files is halves else torch.float32)


def test_off_cuda_the_feed_passes_the_loaders_bags_through(synthetic_cohort):
    files = _files(synthetic_cohort)
    dataset = BagDataset(files, sorted(files)[:5], max_patches=30)
    order = EpochOrder(5, seed=2, shuffle=True)
    loader = bag_loader(dataset, order, workers=0)
    fed = [(bag.slide_id, bag.features) for bag in DeviceFeed(loader, torch.device("cpu"))]
    plain = [(bag.slide_id, bag.features) for bag in loader]
    assert [s for s, _ in fed] == [s for s, _ in plain] != sorted(files)[:5]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(fed, plain, strict=True))


def test_training_reads_float16_feature_files(synthetic_cohort, tmp_path):
    cohort, files, train, val, _ = synthetic_fold(synthetic_cohort)
    halves = float16_copies(files, tmp_path)
    run = model_run("abmil", TRAIN_RUNS["abmil"], {"epochs": 2, "max_patches": 50})
    out = tmp_path / "m"
    train_fold(
        run,
        cohort,
        halves,
        train,
        val,
        out,
        encoder="synthetic",
        fold=0,
        in_memory=False,
        workers=0,
    )
    history = pd.read_csv(out / "history.csv")
    assert len(history) == 2 and history["train_loss"].notna().all()

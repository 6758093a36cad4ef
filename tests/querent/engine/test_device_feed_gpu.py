"""The CUDA feed against the plain loader; skipped where there is no GPU."""

import pandas as pd
import pytest
import torch

from querent.data.bags import BagDataset, EpochOrder, bag_loader
from querent.engine.device_feed import DeviceFeed
from querent.engine.runs import model_run
from querent.engine.train import train_fold
from tests.helpers import TRAIN_RUNS, float16_copies, synthetic_fold

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


@pytest.mark.parametrize("in_memory", [False, True])
@pytest.mark.parametrize("stored", ["float32", "float16"])
def test_cuda_feed_gives_the_plain_loaders_bags_on_the_device(
    synthetic_cohort, tmp_path, in_memory, stored
):
    _, folder = synthetic_cohort
    files = {path.stem: path for path in sorted(folder.glob("*.h5"))[:8]}
    if stored == "float16":
        files = float16_copies(files, tmp_path)
    files = {"case": (files.pop("syn_004_0"), files.pop("syn_004_1")), **files}
    ids = list(files)
    options = {"region_size": 2, "max_patches": 50, "seed": 1, "in_memory": in_memory}
    plain = BagDataset(files, ids, **options)
    streamed = BagDataset(files, ids, **options, read_features=in_memory)
    for epoch in (0, 1):
        orders = [EpochOrder(len(ids), seed=3, shuffle=True) for _ in range(2)]
        for order in orders:
            order.set_epoch(epoch)
        expected = list(bag_loader(plain, orders[0], workers=0))
        fed = list(DeviceFeed(bag_loader(streamed, orders[1], workers=2), CUDA))
        assert [b.slide_id for b in fed] == [b.slide_id for b in expected]
        for got, want in zip(fed, expected, strict=True):
            assert got.features.is_cuda and got.features.dtype == torch.float32
            assert torch.equal(got.features.cpu(), want.features)
            assert torch.equal(got.cells.cpu(), want.cells)
            assert torch.equal(got.rows, want.rows)


def test_cuda_training_streams_bags_through_the_feed(synthetic_cohort, tmp_path):
    cohort, files, train, val, _ = synthetic_fold(synthetic_cohort)
    run = model_run("querent", TRAIN_RUNS["querent"], {"epochs": 2, "max_patches": 50})
    out = tmp_path / "m"
    train_fold(
        run, cohort, files, train, val, out, encoder="synthetic", fold=0, device="cuda",
        workers=2, in_memory=False,
    )  # fmt: skip
    history = pd.read_csv(out / "history.csv")
    assert len(history) == 2 and history["train_loss"].notna().all()

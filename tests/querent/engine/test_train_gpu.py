"""Training and evaluation on CUDA (bf16 autocast); skipped where there is no GPU."""

import pandas as pd
import pytest
import torch

from querent.engine.evaluate import evaluate_fold
from querent.engine.runs import model_run
from querent.engine.train import train_fold
from tests.helpers import TRAIN_RUNS, synthetic_fold

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("arch", list(TRAIN_RUNS))
def test_cuda_training_matches_the_cpu_evaluation_of_its_model(synthetic_cohort, tmp_path, arch):
    cohort, files, train, val, evaluate = synthetic_fold(synthetic_cohort)
    run = model_run(arch, TRAIN_RUNS[arch], {"epochs": 3, "max_patches": 50})
    model = train_fold(
        run, cohort, files, train, val, tmp_path / "m", encoder="synthetic", fold=0, device="cuda"
    )
    history = pd.read_csv(tmp_path / "m" / "history.csv")
    assert history["train_loss"].notna().all() and len(history) == 3
    on_gpu = evaluate_fold(model, cohort, files, evaluate, tmp_path / "gpu", device="cuda")
    on_cpu = evaluate_fold(model, cohort, files, evaluate, tmp_path / "cpu", device="cpu")
    gpu = pd.read_csv(tmp_path / "gpu" / "predictions.csv")
    cpu = pd.read_csv(tmp_path / "cpu" / "predictions.csv")
    # evaluation runs in fp32 on both (autocast is for training), so they agree closely
    pd.testing.assert_frame_equal(gpu, cpu, atol=1e-4, rtol=1e-3)
    assert on_gpu["n_slides"] == on_cpu["n_slides"] == len(evaluate)

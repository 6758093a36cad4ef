"""Model runs: training seeds are shared by every run, and each training job gets one."""

import pytest

from extractors.errors import SettingsError
from querent.engine.runs import TrainSettings, model_run

ABMIL = {"arch": "abmil", "dim": 16}


def test_each_seed_makes_its_own_run_whose_signature_differs():
    run = model_run("abmil", ABMIL, {"seeds": [0, 3]})
    assert run.training.seeds == (0, 3)
    one, other = run.with_seed(0), run.with_seed(3)
    assert (one.training.seed, other.training.seed) == (0, 3)
    assert one.training.seeds == (0,)
    # the resume signature and the checkpoint's run record tell the seeds apart
    assert one.to_dict() != other.to_dict()
    assert one.to_dict()["training"]["seeds"] == (0,)


@pytest.mark.parametrize(
    ("seeds", "problem"),
    [([], "seeds must be a list"), ([1, 1], "lists a seed twice"), ([-1], "seeds must be")],
)
def test_bad_seeds_are_refused_with_the_key(seeds, problem):
    with pytest.raises(SettingsError, match=problem):
        TrainSettings(seeds=seeds)


def test_a_run_cannot_have_its_own_seeds():
    spec = {**ABMIL, "training": {"seeds": [1, 2]}}
    with pytest.raises(SettingsError, match=r"models.abmil.training.seeds: .*Fix: set training"):
        model_run("abmil", spec, {})

"""The registries read in a subprocess and cached until their source changes."""

import json
import subprocess
import sys

import pytest

from querent.pipeline import registries

#: A config's model runs: one the models refuse, one they take, one with an unknown argument.
MODELS = {
    "q0": {"arch": "querent", "region_size": 0, "training": {"epochs": 1}},
    "ab": {"arch": "abmil"},
    "typo": {"arch": "abmil", "dimm": 8},
}


def test_a_fresh_read_runs_the_module_and_its_answer_is_cached(tmp_path):
    cache = tmp_path / "registries.json"
    key, started = registries.start(cache, MODELS)
    assert not isinstance(started, dict)  # nothing cached yet: a subprocess reads them
    found = registries.finish((key, started), cache)
    assert found["encoders"]["efficientnet_lite0"]["input_px"] > 0
    assert {"querent", "abmil"} <= set(found["models"])
    assert found["min_batch"]["cox"] >= 2
    assert 0 < found["mpp_tolerance"] < 1
    # the models' own checks on the runs; an unknown argument is left to model_run
    assert found["run_problems"] == {"q0": ["region_size: must be >= 1 (got 0)"], "ab": []}
    again = registries.start(cache, MODELS)
    assert again == (key, found)  # the cache answers, no subprocess
    other_key, started = registries.start(cache, {"ab": {"arch": "abmil"}})
    assert other_key != key and not isinstance(started, dict)  # other runs: read again
    started.kill()
    started.communicate()


def test_a_cache_of_other_sources_is_not_used(tmp_path):
    cache = tmp_path / "registries.json"
    cache.write_text(json.dumps({"key": "stale", "registries": {"encoders": {}}}))
    key, started = registries.start(cache, {})
    assert key != "stale" and not isinstance(started, dict)
    started.kill()
    started.communicate()


def test_a_failing_read_names_the_cause_and_caches_nothing(tmp_path):
    cache = tmp_path / "registries.json"
    failing = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.exit('ImportError: libcudart.so.13')"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with pytest.raises(registries.RegistryError, match=r"(?s)torch or timm.*libcudart"):
        registries.finish(("key", failing), cache)
    assert not cache.exists()

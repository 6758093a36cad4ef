"""The registries read in a subprocess and cached until their source changes."""

import json
import subprocess
import sys

import pytest

from querent.pipeline import registries


def test_a_fresh_read_runs_the_module_and_its_answer_is_cached(tmp_path):
    cache = tmp_path / "registries.json"
    key, started = registries.start(cache)
    assert not isinstance(started, dict)  # nothing cached yet: a subprocess reads them
    found = registries.finish((key, started), cache)
    assert found["encoders"]["efficientnet_lite0"]["input_px"] > 0
    assert {"querent", "abmil"} <= set(found["models"])
    assert found["min_batch"]["cox"] >= 2
    assert 0 < found["mpp_tolerance"] < 1
    again = registries.start(cache)
    assert again == (key, found)  # the cache answers, no subprocess


def test_a_cache_of_other_sources_is_not_used(tmp_path):
    cache = tmp_path / "registries.json"
    cache.write_text(json.dumps({"key": "stale", "registries": {"encoders": {}}}))
    key, started = registries.start(cache)
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

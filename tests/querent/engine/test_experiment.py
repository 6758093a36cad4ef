from pathlib import Path

import pytest

from extractors.errors import SettingsError
from querent.engine.experiment import config_encoders, features_folder, pick_encoder

TWO = {"features": {"encoder": ["uni_v2", "virchow2"], "dir": ""}}


def test_one_encoder_or_a_list_in_the_configs_order():
    assert config_encoders({"features": {"encoder": "uni_v2"}}) == ["uni_v2"]
    assert config_encoders(TWO) == ["uni_v2", "virchow2"]


def test_the_only_encoder_is_picked_and_of_several_one_must_be_named():
    assert pick_encoder({"features": {"encoder": "uni_v2"}}) == "uni_v2"
    assert pick_encoder(TWO, "virchow2") == "virchow2"
    with pytest.raises(SettingsError, match=r"\(CLI: --encoder NAME\)\.$"):
        pick_encoder(TWO)
    with pytest.raises(SettingsError, match="not 'conch_v15'"):
        pick_encoder(TWO, "conch_v15")


def test_each_encoder_has_its_feature_folder_unless_the_lab_brings_its_own():
    assert features_folder(TWO, "virchow2", "out/{encoder}") == Path("out/virchow2")
    own = {"features": {"encoder": "lab", "dir": "/data/features"}}
    assert features_folder(own, "lab", "out/{encoder}") == Path("/data/features")

import pytest
import torch
from safetensors.torch import save_file

from extractors.encoders import WeightsError, create_encoder, get_encoder_spec, list_encoders
from extractors.encoders.registry import EncoderSpec
from extractors.encoders.weights import locate_weights, weights_env_var


def _spec(**overrides) -> EncoderSpec:
    fields = dict(
        name="tiny",
        build=lambda: torch.nn.Linear(4, 2),
        embed_dim=2,
        hf_repo="example-org/tiny-gated",
        hf_filename="model.safetensors",
        gated=True,
    )
    return EncoderSpec(**{**fields, **overrides})


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        get_encoder_spec("uni_v3")
    assert "efficientnet_lite0" in list_encoders()


def test_explicit_checkpoint_wins(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_file(torch.nn.Linear(4, 2).state_dict(), str(path))
    assert locate_weights(_spec(), path)[1].startswith("local:")
    monkeypatch.setenv(weights_env_var("tiny"), str(path))
    assert locate_weights(_spec())[0] == path


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        locate_weights(_spec(), tmp_path / "absent.pth")


def test_offline_without_cache_says_how_to_provide_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError) as err:
        locate_weights(_spec())
    message = str(err.value)
    assert "HF_HUB_OFFLINE" in message and "--checkpoint" in message
    assert weights_env_var("tiny") in message and "gated" in message


def test_no_network_fails_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(WeightsError, match="cannot be reached.*--checkpoint"):
        locate_weights(_spec())


def test_weights_from_the_hugging_face_cache(tmp_path, monkeypatch):
    # Lay out a cache entry exactly as huggingface_hub does, then load with HF_HUB_OFFLINE.
    cache = tmp_path / "hub" / "models--example-org--tiny-gated"
    commit = "0" * 40
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text(commit)
    snapshot = cache / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(torch.nn.Linear(4, 2).state_dict(), str(snapshot / "model.safetensors"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    path, source = locate_weights(_spec())
    assert source == "hf-cache:example-org/tiny-gated"
    assert path.name == "model.safetensors"


def test_checkpoint_of_another_model_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(WeightsError, match="efficientnet_lite0.*does not fit"):
        create_encoder("efficientnet_lite0", checkpoint=path)


def test_random_weights_need_no_file():
    encoder = create_encoder("efficientnet_lite0", pretrained=False)
    assert encoder.weights_source == "random"


def test_half_precision_checkpoint_loads_into_the_float32_model(tmp_path):
    # create_encoder builds on the meta device and takes the checkpoint's tensors as they are,
    # so their dtype must be cast to the model's, and no tensor may stay on the meta device.
    random = create_encoder("resnet50_trunc", pretrained=False).model
    path = tmp_path / "half.safetensors"
    save_file(
        {k: v.half() if v.is_floating_point() else v for k, v in random.state_dict().items()},
        str(path),
    )
    loaded = create_encoder("resnet50_trunc", checkpoint=path).model
    for name, tensor in loaded.state_dict().items():
        assert not tensor.is_meta, name
        assert tensor.dtype == random.state_dict()[name].dtype, name
        torch.testing.assert_close(tensor, random.state_dict()[name].half().to(tensor.dtype))

"""Foundation encoders: random-weight forward, published-checkpoint round trip, recipe facts.

No weights can be downloaded here, so each architecture is built with random weights, saved in
the key format of its published checkpoint and loaded back through ``create_encoder(name,
checkpoint=...)``, the path users take with a downloaded file.
"""

import gc
import importlib.util

import pytest
import timm
import torch
from safetensors.torch import save_file

from extractors.encoders import (
    WeightsError,
    create_encoder,
    foundation,
    get_encoder_spec,
    list_encoders,
)

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))

#: name -> (embed_dim, input_size, resize_size, (mean, std), hf_repo, hf_filename, gated)
RECIPES = {
    "uni_v1": (1024, 224, None, IMAGENET, "MahmoodLab/UNI", "pytorch_model.bin", True),
    "uni_v2": (1536, 224, None, IMAGENET, "MahmoodLab/UNI2-h", "pytorch_model.bin", True),
    "virchow2": (2560, 224, None, IMAGENET, "paige-ai/Virchow2", "pytorch_model.bin", True),
    "h_optimus_0": (1536, 224, None, HOPTIMUS, "bioptimus/H-optimus-0", "pytorch_model.bin", True),
    "h_optimus_1": (1536, 224, None, HOPTIMUS, "bioptimus/H-optimus-1", "model.safetensors", True),
    "gigapath": (
        1536,
        224,
        256,
        IMAGENET,
        "prov-gigapath/prov-gigapath",
        "pytorch_model.bin",
        True,
    ),
    "conch_v15": (
        768,
        448,
        None,
        IMAGENET,
        "MahmoodLab/conchv1_5",
        "pytorch_model_vision.bin",
        True,
    ),
    "phikon_v2": (1024, 224, None, IMAGENET, "owkin/phikon-v2", "model.safetensors", False),
    "resnet50_trunc": (
        1024,
        224,
        None,
        IMAGENET,
        "timm/resnet50.tv_in1k",
        "model.safetensors",
        False,
    ),
}

#: ViTs of 0.6 to 1.1 billion parameters (~9 GB and tens of seconds a round trip on a CPU at
#: their full depth).
GIANTS = {"uni_v2", "virchow2", "h_optimus_0", "h_optimus_1", "gigapath"}
#: Blocks the giants are built with here: every block has the same keys, so two of them test
#: each key mapping of the loader, at a twentieth of the time and memory of the full depth.
TEST_DEPTH = 2
NO_TRANSFORMERS = importlib.util.find_spec("transformers") is None


def _param(name: str):
    marks = []
    if name == "phikon_v2":
        marks.append(pytest.mark.skipif(NO_TRANSFORMERS, reason="transformers is not installed"))
    return pytest.param(name, marks=marks)


ENCODERS = [_param(name) for name in RECIPES]
#: One build per architecture and key mapping: H-optimus-1 is H-optimus-0's ViT-g/14 and loader
#: (``_register_h_optimus``), its repo and file checked by the recipe test.
ROUND_TRIPS = [_param(name) for name in RECIPES if name != "h_optimus_1"]


@pytest.fixture
def shallow_vits(monkeypatch):
    """timm builds every ViT with :data:`TEST_DEPTH` blocks (widths, tokens, keys as published)."""
    create = timm.create_model

    def shallow(arch, *args, **kwargs):
        return create(arch, *args, **({**kwargs, "depth": TEST_DEPTH} if "vit" in arch else kwargs))

    monkeypatch.setattr(timm, "create_model", shallow)
    monkeypatch.setitem(foundation.PHIKON_V2_CONFIG, "num_hidden_layers", TEST_DEPTH)


def _images(input_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(
        0, 256, (2, 3, input_size, input_size), dtype=torch.uint8, generator=generator
    )


def _embed(encoder, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder(images)


def _published_state(name: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The random model's weights in the key format of the published checkpoint."""
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    if name == "resnet50_trunc":
        # The published ImageNet ResNet-50 also holds layer4 and the classifier.
        state["layer4.0.conv1.weight"] = torch.randn(512, 1024, 1, 1)
        state["fc.weight"] = torch.randn(1000, 2048)
        state["fc.bias"] = torch.randn(1000)
    return state


def test_all_foundation_encoders_are_registered():
    assert set(RECIPES) <= set(list_encoders())


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_matches_the_model_card(name):
    embed_dim, input_size, resize_size, (mean, std), repo, filename, gated = RECIPES[name]
    spec = get_encoder_spec(name)
    assert (spec.embed_dim, spec.input_size, spec.resize_size) == (
        embed_dim,
        input_size,
        resize_size,
    )
    assert (spec.mean, spec.std) == (mean, std)
    assert (spec.hf_repo, spec.hf_filename, spec.gated) == (repo, filename, gated)
    # What one input pixel covers: 20x tiles, resized to the input (CONCH v1.5: 512 -> 448).
    tile_px = 512 if name == "conch_v15" else (resize_size or input_size)
    assert spec.native_mpp * (resize_size or input_size) == pytest.approx(0.5 * tile_px)
    assert spec.license
    assert "Source:" in spec.notes


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_random_forward_then_published_checkpoint_round_trip(name, tmp_path, shallow_vits):
    """One build per encoder: forward on uint8 images, then the same weights from a file."""
    encoder = create_encoder(name, pretrained=False)
    if name in GIANTS:
        assert len(encoder.model.blocks) == TEST_DEPTH
    assert encoder.weights_source == "random"
    images = _images(encoder.spec.input_size)
    expected = _embed(encoder, images)
    assert expected.shape == (2, encoder.spec.embed_dim)
    assert torch.isfinite(expected).all()
    assert not torch.equal(expected[0], expected[1])

    path = tmp_path / f"{name}.safetensors"
    save_file(_published_state(name, encoder.model), str(path))
    del encoder
    gc.collect()

    loaded = create_encoder(name, checkpoint=path)
    path.unlink()  # up to 4.5 GB; free the disk before the next encoder
    assert loaded.weights_source.startswith("local:")
    # The same weights in a new model instance: equal up to float rounding (CONCH v1.5 has
    # differed by 8e-7, its kernels' summation order following memory placement); a key
    # mapped wrongly moves the embedding by orders of magnitude more.
    torch.testing.assert_close(_embed(loaded, images), expected, rtol=1e-5, atol=1e-5)
    del loaded
    gc.collect()


@pytest.mark.parametrize("name", ENCODERS)
def test_checkpoint_of_another_architecture_is_rejected(name, tmp_path, shallow_vits):
    path = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(path))
    with pytest.raises(WeightsError, match=f"encoder {name}"):
        create_encoder(name, checkpoint=path)
    gc.collect()


def test_h_optimus_use_their_own_normalisation():
    for name in ("h_optimus_0", "h_optimus_1"):
        spec = get_encoder_spec(name)
        assert spec.mean == (0.707223, 0.578729, 0.703617)
        assert spec.std == (0.211883, 0.230117, 0.177517)


def test_gigapath_resizes_to_256_then_crops_224():
    spec = get_encoder_spec("gigapath")
    assert (spec.resize_size, spec.input_size) == (256, 224)


def test_virchow2_concatenates_class_token_and_mean_of_patch_tokens_after_registers(shallow_vits):
    spec = get_encoder_spec("virchow2")
    model = spec.build().eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        tokens = model.forward_features(images)
        embedding = spec.embed(model, images)
    assert tokens.shape == (2, 1 + 4 + 16 * 16, 1280)
    assert model.num_prefix_tokens == 5
    assert torch.equal(embedding[:, :1280], tokens[:, 0])
    torch.testing.assert_close(embedding[:, 1280:], tokens[:, 5:].mean(dim=1))


def test_resnet50_trunc_drops_layer4_and_classifier():
    state = {
        "conv1.weight": torch.zeros(1),
        "layer3.5.bn3.bias": torch.zeros(1),
        "layer4.0.conv1.weight": torch.zeros(1),
        "fc.weight": torch.zeros(1),
        "fc.bias": torch.zeros(1),
    }
    assert set(foundation.drop_resnet_head(state)) == {"conv1.weight", "layer3.5.bn3.bias"}


def test_resnet50_trunc_pools_1024_channels_after_layer3():
    spec = get_encoder_spec("resnet50_trunc")
    model = spec.build().eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        (feature_map,) = model(images)
        embedding = spec.embed(model, images)
    assert feature_map.shape == (2, 1024, 14, 14)
    torch.testing.assert_close(embedding, feature_map.mean(dim=(2, 3)))
    assert not any(key.startswith(("layer4.", "fc.")) for key in model.state_dict())


def test_phikon_v2_config_is_the_published_vit_l16():
    config = foundation.PHIKON_V2_CONFIG
    assert (config["hidden_size"], config["num_hidden_layers"]) == (1024, 24)
    assert (config["num_attention_heads"], config["patch_size"]) == (16, 16)


@pytest.mark.skipif(NO_TRANSFORMERS, reason="transformers is not installed")
def test_phikon_v2_is_a_dinov2_vit_l16_whose_embedding_is_the_class_token(shallow_vits):
    spec = get_encoder_spec("phikon_v2")
    model = spec.build().eval()
    state = model.state_dict()
    assert state["embeddings.position_embeddings"].shape == (1, 1 + 14 * 14, 1024)
    assert state["embeddings.patch_embeddings.projection.weight"].shape == (1024, 3, 16, 16)
    assert f"encoder.layer.{TEST_DEPTH - 1}.layer_scale2.lambda1" in state
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        hidden = model(pixel_values=images).last_hidden_state
        assert torch.equal(spec.embed(model, images), hidden[:, 0])

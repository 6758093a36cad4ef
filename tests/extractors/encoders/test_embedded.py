import cv2
import pytest
import torch
from skimage import data

from extractors.encoders import create_encoder
from extractors.encoders.embedded import map_port_keys
from extractors.encoders.weights import read_state_dict

ESPRESSO = 967  # ImageNet class index


@pytest.fixture(scope="module")
def lite0():
    return create_encoder("efficientnet_lite0")


def test_weights_are_the_real_pretrained_ones(lite0):
    photo = cv2.resize(data.coffee(), (224, 224), interpolation=cv2.INTER_AREA)
    images = torch.from_numpy(photo).permute(2, 0, 1)[None]
    normalised = lite0.normalise(images)
    with torch.inference_mode():
        probabilities = lite0.model(normalised).softmax(-1)[0]
    assert int(probabilities.argmax()) == ESPRESSO
    assert float(probabilities[ESPRESSO]) > 0.5
    assert lite0.weights_source == "package:efficientnet_lite0"


def test_every_packaged_key_maps_onto_timm(lite0):
    state = read_state_dict(lite0.spec.package_weights())
    mapped = map_port_keys(state)
    model_keys = set(lite0.model.state_dict())
    assert set(mapped) == model_keys
    assert len(mapped) == len(state)
    for key, value in mapped.items():
        assert value.shape == lite0.model.state_dict()[key].shape, key


def test_embedding_shape_and_determinism(lite0):
    images = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8)
    with torch.inference_mode():
        first = lite0(images)
        second = lite0(images)
    assert first.shape == (3, 1280)
    assert torch.equal(first, second)
    assert torch.isfinite(first).all()

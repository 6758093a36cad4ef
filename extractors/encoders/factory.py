"""Build a registered encoder with its weights: ``create_encoder("uni_v2")``.

The architecture is built locally and the weights are loaded through
:mod:`extractors.encoders.weights`, so a checkpoint from a model hub, the Hugging Face cache or a
local file all go through the same code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from extractors.encoders.registry import EncoderSpec, get_encoder_spec
from extractors.encoders.weights import load_weights


class Encoder(nn.Module):
    """A patch encoder in eval mode that takes uint8 images and returns embeddings.

    Args:
        spec: The registry entry.
        model: Its architecture with loaded weights.
        weights_source: Where the weights came from (recorded in feature files).
    """

    def __init__(self, spec: EncoderSpec, model: nn.Module, weights_source: str) -> None:
        super().__init__()
        self.spec = spec
        self.model = model.eval()
        self.weights_source = weights_source
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0)

    @property
    def embed_dim(self) -> int:
        """Length of one embedding."""
        return self.spec.embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embed a batch.

        Args:
            images: uint8 (B, 3, input_size, input_size), RGB, already resized (see
                :func:`extractors.patches.prepare_patch`).

        Returns:
            (B, embed_dim) embeddings.
        """
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        return self.spec.embed(self.model, x)


def create_encoder(
    name: str, *, checkpoint: str | Path | None = None, pretrained: bool = True
) -> Encoder:
    """Build a registered encoder with its weights.

    Args:
        name: Registry name.
        checkpoint: Local weight file (``.safetensors``, ``.bin``, ``.pth``); wins over every
            other source. ``QUERENT_WEIGHTS_<NAME>`` in the environment does the same.
        pretrained: False gives random weights (tests, benchmarks).

    Raises:
        ValueError: Unknown encoder.
        WeightsError: No weights could be found; the message says
            how to provide a local checkpoint.
    """
    spec = get_encoder_spec(name)
    model = spec.build()
    source = "random"
    if pretrained:
        source = load_weights(spec, model, checkpoint)
    return Encoder(spec, model, source)

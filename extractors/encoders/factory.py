"""Build a registered encoder with its weights: ``create_encoder("uni_v2")``.

The architecture is built locally and the weights are loaded through
:mod:`extractors.encoders.weights`, so a checkpoint from a model hub, the Hugging Face cache or a
local file all go through the same code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
        # (x / 255 - mean) / std == x * scale + shift, per channel: one fused pass over uint8.
        std = torch.tensor(spec.std, dtype=torch.float64).view(1, 3, 1, 1)
        mean = torch.tensor(spec.mean, dtype=torch.float64).view(1, 3, 1, 1)
        self.register_buffer("scale", (1.0 / (255.0 * std)).float(), persistent=False)
        self.register_buffer("shift", (-mean / std).float(), persistent=False)

    @property
    def embed_dim(self) -> int:
        """Length of one embedding."""
        return self.spec.embed_dim

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float32 ``(x / 255 - mean) / std`` per channel, in one pass.

        The result keeps the memory format of ``images`` (channels-last from
        :class:`extractors.patches.PatchBlocks`, which the convolutions take as it is). On the
        CPU, uint8 images go through NumPy: one single-threaded pass, where each of torch's
        parallel elementwise ops costs about 10 ms of thread hand-off on a busy 2-core machine
        (measured: 23 ms against 2 ms for 12 patches of 224 px; benchmarks/bench_extract.py).
        """
        if images.device.type != "cpu" or images.dtype != torch.uint8:
            return torch.addcmul(self.shift, images, self.scale)
        scale, shift = self.scale.numpy(), self.shift.numpy()  # (1, c, 1, 1)
        b, c, h, w = images.shape
        if images.permute(0, 2, 3, 1).is_contiguous():  # channels-last: rows of interleaved c
            rows = images.numpy().transpose(0, 2, 3, 1).reshape(b * h, w * c)
            out = np.multiply(rows, np.tile(scale.ravel(), w), dtype=np.float32)
            out += np.tile(shift.ravel(), w)
            return torch.from_numpy(out).view(b, h, w, c).permute(0, 3, 1, 2)
        out = np.multiply(images.numpy(), scale, dtype=np.float32)  # keeps the input's layout
        out += shift
        return torch.from_numpy(out)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embed a batch.

        Args:
            images: uint8 (B, 3, input_size, input_size), RGB, already resized (see
                :func:`extractors.patches.prepare_patch`), any memory format.

        Returns:
            (B, embed_dim) embeddings.
        """
        return self.spec.embed(self.model, self.normalise(images))


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
    if not pretrained:
        return Encoder(spec, spec.build(), "random")
    with torch.device("meta"):  # no random init of weights the checkpoint replaces
        model = spec.build()
    return Encoder(spec, model, load_weights(spec, model, checkpoint))

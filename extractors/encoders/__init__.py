"""Patch encoders: a registry of pretrained models, each with its own preprocessing."""

from extractors.encoders.registry import (
    Encoder,
    EncoderSpec,
    create_encoder,
    get_encoder_spec,
    list_encoders,
)
from extractors.encoders.weights import WeightsError

__all__ = [
    "Encoder",
    "EncoderSpec",
    "WeightsError",
    "create_encoder",
    "get_encoder_spec",
    "list_encoders",
]

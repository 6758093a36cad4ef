"""Patch encoders: a registry of pretrained models, each with its own preprocessing."""

from extractors.encoders import embedded, foundation  # noqa: F401  (registration)
from extractors.encoders.factory import Encoder, create_encoder
from extractors.encoders.registry import EncoderSpec, get_encoder_spec, list_encoders
from extractors.errors import WeightsError

__all__ = [
    "Encoder",
    "EncoderSpec",
    "WeightsError",
    "create_encoder",
    "get_encoder_spec",
    "list_encoders",
]

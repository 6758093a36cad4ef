"""Patch encoders: a registry of pretrained models, each with its own preprocessing.

Importing this package is cheap: torch and timm load on first use of a name below (PEP 562),
so code that only needs to know this package (the workflow at DAG time) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from extractors.errors import WeightsError

if TYPE_CHECKING:
    from extractors.encoders.factory import Encoder, create_encoder
    from extractors.encoders.registry import EncoderSpec

__all__ = [
    "Encoder",
    "EncoderSpec",
    "WeightsError",
    "create_encoder",
    "get_encoder_spec",
    "list_encoders",
]

#: Name -> module that defines it.
_LAZY = {
    "Encoder": "extractors.encoders.factory",
    "create_encoder": "extractors.encoders.factory",
    "EncoderSpec": "extractors.encoders.registry",
}


def _registry():
    """The registry with every entry registered (the entry modules register on import)."""
    from extractors.encoders import embedded, foundation, registry  # noqa: F401

    return registry


def list_encoders() -> list[str]:
    """Names of all registered encoders, sorted."""
    return _registry().list_encoders()


def get_encoder_spec(name: str) -> EncoderSpec:
    """The spec of a registered encoder (unknown names raise with the valid ones)."""
    return _registry().get_encoder_spec(name)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        _registry()
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""MIL models by name; importing this package registers every model."""

from querent.models import (  # noqa: F401 (registration)
    abmil,
    controls,
    peers,
    pooling,
    transformer,
    transmil,
)
from querent.models.base import MILModel, MILOutput
from querent.models.registry import create_model, list_models, register_model

__all__ = ["MILModel", "MILOutput", "create_model", "list_models", "register_model"]

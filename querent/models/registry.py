"""Models by name: ``create_model("querent", in_dim=1024, n_outputs=2)``."""

from __future__ import annotations

from collections.abc import Callable

from querent.models.base import MILModel

_MODELS: dict[str, Callable[..., MILModel]] = {}


def register_model(name: str) -> Callable[[type[MILModel]], type[MILModel]]:
    """Class decorator that makes a model available to :func:`create_model` as ``name``."""

    def register(cls: type[MILModel]) -> type[MILModel]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = cls
        return cls

    return register


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def model_class(name: str) -> Callable[..., MILModel]:
    """The class registered as ``name``.

    Raises:
        ValueError: Unknown name (the message lists the valid ones).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _MODELS[name]


def create_model(name: str, **kwargs: object) -> MILModel:
    """Build a registered model; keyword arguments go to its constructor.

    Raises:
        ValueError: Unknown name (the message lists the valid ones).
    """
    return model_class(name)(**kwargs)

"""Models by name: ``create_model("querent", in_dim=1024, n_outputs=2)``."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping

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


def create_model(name: str, *, covariate_dim: int = 0, **kwargs: object) -> MILModel:
    """Build a registered model; keyword arguments go to its constructor.

    ``covariate_dim`` > 0 widens the head to read that many encoded covariates besides the
    slide embedding (:meth:`~querent.models.base.MILModel.add_covariates`).

    Raises:
        ValueError: Unknown name (the message lists the valid ones).
    """
    model = model_class(name)(**kwargs)
    if covariate_dim:
        model.add_covariates(covariate_dim)
    return model


def resolved_arguments(name: str, given: dict) -> dict:
    """Every setting of model ``name`` (its defaults, overridden by ``given``), less the sizes.

    Checkpoints record these, so a model loads as it was trained after a default changes.
    """
    bound = inspect.signature(model_class(name)).bind_partial(**given)
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k not in ("in_dim", "n_outputs")}


def _type_problem(name: str, value: object, hint: object) -> str | None:
    """``value`` of argument ``name`` against its annotation (an int passes for a float)."""
    allowed = typing.get_args(hint) or (hint,)
    if not all(isinstance(kind, type) for kind in allowed):
        return None  # an annotation this check does not read (generics, Any)
    fits = isinstance(value, allowed) or (float in allowed and isinstance(value, int))
    if fits and (bool in allowed or not isinstance(value, bool)):  # True is no int to a config
        return None
    names = " or ".join("null" if kind is type(None) else kind.__name__ for kind in allowed)
    return f"{name}: must be {names} (got {value!r} of type {type(value).__name__})"


def argument_problems(name: str, given: Mapping[str, object]) -> list[str]:
    """What model ``name`` refuses in ``given`` (known arguments), one line each; builds nothing.

    Values of the wrong type first (by the constructor's annotations), then the model's own
    :meth:`~querent.models.base.MILModel.check_arguments`, the checks its constructor runs.
    """
    cls = model_class(name)
    hints = typing.get_type_hints(cls.__init__)
    wrong = [
        problem
        for key, value in given.items()
        if (problem := _type_problem(key, value, hints.get(key, object)))
    ]
    return wrong or cls.check_arguments(**resolved_arguments(name, dict(given)))

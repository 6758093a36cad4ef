"""The config against its schema: defaults filled in, every problem named by its key.

The first step of planning. A value the schema rejects is replaced by its default (an unknown
key is dropped) before the later steps read the config, so one message lists the schema's
problems and theirs together; the run stops on them anyway. An unknown key is answered with
the closest known one ("did you mean `epochs`?").
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping

from jsonschema import Draft202012Validator, ValidationError


def fill_defaults(config: dict, schema: Mapping, node: Mapping | None = None) -> None:
    """Set every missing key of ``config`` that the schema names, with a default, to a copy of it.

    Only named keys (``properties``) are walked, never maps of free keys
    (``additionalProperties``): a model run's ``training`` overrides keep just the keys given,
    so the ``training`` section fills in the rest.
    """
    node = schema if node is None else node
    if "$ref" in node:  # "#/definitions/name"
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[-1]]
    for key, child in node.get("properties", {}).items():
        if key not in config and "default" in child:
            config[key] = copy.deepcopy(child["default"])
        if isinstance(config.get(key), dict):
            fill_defaults(config[key], schema, child)


def _key(path) -> str:
    return ".".join(map(str, path))


def _unknown_keys(error: ValidationError) -> list[str]:
    """The keys an ``additionalProperties: false`` error is about (none for other errors)."""
    if error.validator != "additionalProperties" or not isinstance(error.instance, dict):
        return []
    return sorted(set(error.instance) - set(error.schema.get("properties", {})))


def problem_lines(error: ValidationError) -> list[str]:
    """``key.path: message`` of one schema error; an unknown key gets the closest known one."""
    unknown = _unknown_keys(error)
    if not unknown:
        return [f"{_key(error.absolute_path) or 'config'}: {error.message}"]
    known = sorted(error.schema.get("properties", {}))
    lines = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean `{close[0]}`?" if close else f"valid ones: {', '.join(known)}"
        lines.append(f"{_key([*error.absolute_path, key])}: unknown setting; {hint}")
    return lines


def schema_problems(config: Mapping, schema: Mapping) -> list[str]:
    """Every place where ``config`` breaks ``schema``, one line each, sorted by key."""
    errors = Draft202012Validator(schema).iter_errors(config)
    return sorted(line for error in errors for line in problem_lines(error))


def _stand_in(config: dict, error: ValidationError) -> bool:
    """Drop the unknown keys of ``error``, or put the default in place of the value it rejects.

    Returns False where neither can be done (no default, or the value is the whole config).
    """
    unknown = _unknown_keys(error)
    for key in unknown:
        del error.instance[key]
    if unknown:
        return True
    path = list(error.absolute_path)
    if not path or "default" not in error.schema:
        return False
    parent = config
    try:
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = copy.deepcopy(error.schema["default"])
    except (KeyError, IndexError, TypeError):  # an earlier stand-in replaced a parent
        return False
    return True


def check_config(config: dict, schema: Mapping) -> tuple[list[str], bool]:
    """Fill in ``config``'s defaults and list every place where it breaks ``schema``.

    Each rejected value is replaced by its default and each unknown key dropped, in place.

    Returns:
        The problems, one line each (:func:`problem_lines`), and whether ``config`` now fits the
        schema, so that the later checks may read it (False: a rejected value has no default).
    """
    validator = Draft202012Validator(schema)
    fill_defaults(config, schema)
    errors = list(validator.iter_errors(config))
    lines = sorted(line for error in errors for line in problem_lines(error))
    replaced = [_stand_in(config, error) for error in errors]
    fill_defaults(config, schema)  # inside the sections that took their default
    return lines, all(replaced) and validator.is_valid(config)

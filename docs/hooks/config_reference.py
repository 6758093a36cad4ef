"""MkDocs hook: the configuration reference, rendered from the config schema at build time.

``querent/schemas/config.schema.yaml`` is the one place where a setting's type, default,
allowed values and description live. ``docs/configuration.md`` holds a short introduction and
the marker below; this hook replaces the marker with one table per top-level section, so the
page can never disagree with the schema the workflow validates against.

The rendering functions need only PyYAML, so the tests import this file without MkDocs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

#: The line in docs/configuration.md that the reference replaces.
MARKER = "<!-- config-reference -->"
#: The page that carries the marker.
PAGE = "configuration.md"
#: The schema, relative to this file (docs/hooks/ -> repository root).
SCHEMA = Path(__file__).resolve().parents[2] / "querent" / "schemas" / "config.schema.yaml"

log = logging.getLogger("mkdocs.hooks.config_reference")


def load_schema(path: Path = SCHEMA) -> dict[str, Any]:
    """The schema as a dict."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def format_value(value: Any) -> str:
    """A default or enum value as it is written in config.yaml (YAML flow style)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _ref_name(node: dict[str, Any]) -> str | None:
    ref = node.get("$ref")
    return ref.rsplit("/", 1)[-1] if ref else None


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node`` with its ``$ref`` to ``definitions`` merged in (the node's own keys win)."""
    name = _ref_name(node)
    if name is None:
        return node
    target = resolve(schema, schema["definitions"][name])
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def _type_of(node: dict[str, Any]) -> str:
    if "oneOf" in node or "anyOf" in node:
        return " or ".join(_type_of(alt) for alt in node.get("oneOf", node.get("anyOf")))
    kind = node.get("type")
    if kind is None and "enum" in node:
        names = {bool: "boolean", int: "integer", float: "number", str: "string"}
        kinds = dict.fromkeys(names.get(type(v), "value") for v in node["enum"])
        return " or ".join(kinds)
    kinds = kind if isinstance(kind, list) else [kind or "any"]
    words = []
    for k in kinds:
        if k == "array" and isinstance(node.get("items"), dict):
            words.append(f"list of {_group(_type_of(node['items']))}")
        elif k == "object" and isinstance(node.get("additionalProperties"), dict):
            inner = _shallow(node["additionalProperties"])
            words.append(f"mapping of {_group(_type_of(inner))}")
        else:
            words.append(k)
    return " or ".join(words)


def _group(words: str) -> str:
    return f"({words})" if " or " in words else words


def _shallow(node: dict[str, Any]) -> dict[str, Any]:
    """``node``, or a plain object where it only points at a definition (types need no more)."""
    return {"type": "object"} if "$ref" in node and "type" not in node else node


def _range(node: dict[str, Any]) -> str:
    low = (">", node["exclusiveMinimum"]) if "exclusiveMinimum" in node else None
    low = ("≥", node["minimum"]) if "minimum" in node else low
    high = ("<", node["exclusiveMaximum"]) if "exclusiveMaximum" in node else None
    high = ("≤", node["maximum"]) if "maximum" in node else high
    if low and high:
        left = "<" if low[0] == ">" else "≤"
        return f"{low[1]} {left} x {high[0]} {high[1]}"
    if low or high:
        sign, value = low or high
        return f"{sign} {value}"
    return ""


def _allowed(node: dict[str, Any]) -> str:
    if "oneOf" in node or "anyOf" in node:
        parts = []
        for alt in node.get("oneOf", node.get("anyOf")):
            text = _allowed(alt)
            if text:
                parts.append(f"{_type_of(alt)}: {text}")
        return "; ".join(parts)
    parts = []
    if "enum" in node:
        parts.append(", ".join(f"`{format_value(v)}`" for v in node["enum"]))
    if _range(node):
        parts.append(_range(node))
    if "pattern" in node:
        parts.append(f"matches `{node['pattern']}`")
    if "minItems" in node:
        count = node["minItems"]
        parts.append(f"at least {count} item" + ("s" if count != 1 else ""))
    if node.get("uniqueItems"):
        parts.append("no repeats")
    if "minProperties" in node:
        count = node["minProperties"]
        parts.append(f"at least {count} " + ("entry" if count == 1 else "entries"))
    names = node.get("propertyNames", {})
    if "pattern" in names:
        parts.append(f"keys match `{names['pattern']}`")
    items = node.get("items")
    if isinstance(items, dict) and _allowed(items):
        parts.append(f"each: {_allowed(items)}")
    return "; ".join(parts)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _rows(
    schema: dict[str, Any], prefix: str, node: dict[str, Any], seen: dict[str, str]
) -> list[list[str]]:
    """Table rows of the keys under ``node``; a definition is spelled out once, then cited."""
    rows = []
    required = set(node.get("required", ()))
    for key, raw in node.get("properties", {}).items():
        rows.extend(_key_rows(schema, f"{prefix}.{key}", raw, seen, key in required))
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        rows.extend(_nested(schema, f"{prefix}.*", extra, seen))
    return rows


def _nested(
    schema: dict[str, Any], prefix: str, raw: dict[str, Any], seen: dict[str, str]
) -> list[list[str]]:
    """Rows of an object's keys, or one line citing where its definition is spelled out."""
    name = _ref_name(raw)
    node = resolve(schema, raw)
    if name and name in seen:
        return [[f"`{prefix}`", "object", "", "", f"Any key of `{seen[name]}` (above)."]]
    if name:
        seen[name] = prefix
    return _rows(schema, prefix, node, seen) if "properties" in node else []


def _key_rows(
    schema: dict[str, Any], dotted: str, raw: dict[str, Any], seen: dict[str, str], required: bool
) -> list[list[str]]:
    node = resolve(schema, raw)
    default = f"`{format_value(node['default'])}`" if "default" in node else "–"
    kind = _type_of(node) + (" (required)" if required else "")
    row = [f"`{dotted}`", kind, default, _cell(_allowed(node)), _cell(node.get("description", ""))]
    name = _ref_name(raw)
    if name and name in seen:  # a definition already spelled out: cite it
        row[4] = (row[4] + " " if row[4] else "") + f"Any key of `{seen[name]}` (above)."
        return [row]
    rows = [row]
    if node.get("type") == "object" or "properties" in node:
        if name:
            seen[name] = dotted
        rows.extend(_rows(schema, dotted, node, seen))
    return rows


def render_reference(schema: dict[str, Any]) -> str:
    """Markdown of every section and key of ``schema``: type, default, allowed values, meaning."""
    seen: dict[str, str] = {}
    out = []
    for section, raw in schema.get("properties", {}).items():
        node = resolve(schema, raw)
        name = _ref_name(raw)
        if name:
            seen[name] = section
        out.append(f"## `{section}`\n")
        if node.get("description"):
            out.append(_cell(node["description"]) + "\n")
        if node.get("default", {}) != {}:  # an empty default means "the defaults below"
            out.append(f"Default: `{format_value(node['default'])}`\n")
        rows = _rows(schema, section, node, seen)
        if rows:
            out.append("| key | type | default | allowed | description |")
            out.append("|---|---|---|---|---|")
            out.extend("| " + " | ".join(row) + " |" for row in rows)
            out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    """MkDocs event: put the rendered reference in place of the marker."""
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        log.warning("%s has no %s marker; the config reference is missing", PAGE, MARKER)
        return markdown
    return markdown.replace(MARKER, render_reference(load_schema()))

"""The docs' configuration reference, rendered from the config schema by docs/hooks/."""

import importlib.util
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from querent.schemas import CONFIG_SCHEMA

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "docs" / "hooks" / "config_reference.py"


@pytest.fixture(scope="module")
def hook():
    spec = importlib.util.spec_from_file_location("config_reference", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table_rows(markdown: str) -> dict[str, list[str]]:
    """Cells of every reference row, keyed by the dotted key (without backticks)."""
    rows = {}
    for line in markdown.splitlines():
        match = re.match(r"^\| `([^`]+)` \|", line)
        if match:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            rows[match.group(1)] = cells
    return rows


def _expected_keys(schema: dict, hook) -> dict[str, str]:
    """Every documented key and its default cell (``–`` where the schema gives none).

    Follows ``properties`` and inline ``additionalProperties``; a ``$ref`` to a definition is
    expanded the first time it is met, as the page spells a definition out once.
    """
    keys: dict[str, str] = {}
    seen: set[str] = set()

    def walk(prefix: str, raw: dict) -> None:
        ref = raw.get("$ref", "").rsplit("/", 1)[-1]
        if ref and ref in seen:
            return
        if ref:
            seen.add(ref)
        node = hook.resolve(schema, raw)
        for key, child in node.get("properties", {}).items():
            dotted = f"{prefix}.{key}"
            resolved = hook.resolve(schema, child)
            has = "default" in resolved
            keys[dotted] = f"`{hook.format_value(resolved['default'])}`" if has else "–"
            walk(dotted, child)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and "$ref" not in extra:
            walk(f"{prefix}.*", extra)

    for section, raw in schema["properties"].items():
        walk(section, raw)
    return keys


def test_every_section_and_key_appears_with_its_default(hook):
    schema = yaml.safe_load(CONFIG_SCHEMA.read_text(encoding="utf-8"))
    page = hook.render_reference(schema)
    for section in schema["properties"]:
        assert f"## `{section}`" in page, section
    rows = _table_rows(page)
    expected = _expected_keys(schema, hook)
    assert {"training.epochs", "tissue.params.seg_mpp", "slides.per_slide.*.mpp"} <= set(expected)
    for key, default in expected.items():
        assert key in rows, f"{key} is missing from the reference"
        assert rows[key][2] == default, (key, rows[key][2], default)
    for section, raw in schema["properties"].items():  # a section default beyond {} is shown
        default = hook.resolve(schema, raw).get("default", {})
        if default != {}:
            assert f"Default: `{hook.format_value(default)}`" in page, section


def test_defaults_are_written_as_in_config_yaml(hook):
    rows = _table_rows(hook.render_reference(hook.load_schema(CONFIG_SCHEMA)))
    assert rows["tiling.target_mpp"][2] == "`0.5`"
    assert rows["features.checkpoint"][2] == '`""`'
    assert rows["plots.formats"][2] == "`[png, svg]`"
    assert rows["training.lr"][2] == "`null`"
    assert rows["demo.enabled"][3] == "`auto`, `true`, `false`"
    assert rows["tissue.params.seg_mpp"][2] == "–"  # from the preset


def test_the_hook_reads_the_schema_the_package_ships(hook):
    assert hook.SCHEMA.resolve() == CONFIG_SCHEMA.resolve()


def test_a_small_schema_renders_description_default_and_allowed_values(hook):
    schema = {
        "definitions": {
            "count": {"type": "integer", "minimum": 1, "default": 3, "description": "How many."}
        },
        "properties": {
            "section": {
                "type": "object",
                "description": "A made-up section.",
                "properties": {
                    "mode": {
                        "type": "string",
                        "enum": ["fast", "exact"],
                        "default": "fast",
                        "description": "How to | run.",
                    },
                    "n": {"$ref": "#/definitions/count"},
                },
            }
        },
    }
    page = hook.render_reference(schema)
    assert "## `section`" in page
    assert "A made-up section." in page
    rows = _table_rows(page)
    assert rows["section.mode"] == [
        "`section.mode`",
        "string",
        "`fast`",
        "`fast`, `exact`",
        "How to \\| run.",
    ]
    assert rows["section.n"] == ["`section.n`", "integer", "`3`", "≥ 1", "How many."]


def test_the_hook_fills_the_configuration_page(hook):
    text = (ROOT / "docs" / hook.PAGE).read_text(encoding="utf-8")
    page = SimpleNamespace(file=SimpleNamespace(src_uri=hook.PAGE))
    out = hook.on_page_markdown(text, page=page, config={}, files=[])
    assert hook.MARKER not in out
    assert "| `tiling.patch_size` | integer | `256` |" in out
    other = SimpleNamespace(file=SimpleNamespace(src_uri="index.md"))
    assert hook.on_page_markdown(text, page=other, config={}, files=[]) == text

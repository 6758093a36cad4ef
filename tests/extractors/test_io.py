"""The ground floor's facts agree with the schemas that state them to users."""

import re

import pytest
import yaml

from extractors.io import SLIDE_ID_PATTERN
from querent.schemas import COHORT_SCHEMA, CONFIG_SCHEMA


def _slide_id_patterns(node, path=(), about=""):
    """(path, pattern) of every ``pattern`` under a ``slide_id`` key or a slide-id description."""
    if isinstance(node, dict):
        if isinstance(node.get("description"), str):
            about = node["description"]
        for key, value in node.items():
            if key == "pattern" and ("slide_id" in path or "slide id" in about.lower()):
                yield "/".join(path), value
            else:
                yield from _slide_id_patterns(value, (*path, str(key)), about)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _slide_id_patterns(item, (*path, str(i)), about)


@pytest.mark.parametrize("schema", [CONFIG_SCHEMA, COHORT_SCHEMA], ids=lambda p: p.name)
def test_the_schemas_slide_id_patterns_are_the_ground_floors(schema):
    patterns = dict(_slide_id_patterns(yaml.safe_load(schema.read_text())))
    assert patterns, f"{schema.name} states no slide-id pattern"
    assert patterns == dict.fromkeys(patterns, f"^{SLIDE_ID_PATTERN}$")


def test_slide_id_pattern_admits_path_safe_names_only():
    assert re.fullmatch(SLIDE_ID_PATTERN, "TCGA-AB.1234_x")
    for unsafe in ("", "-lead", ".hidden", "a b", "a/b", "é"):
        assert not re.fullmatch(SLIDE_ID_PATTERN, unsafe)

"""One fact in one place: config.yaml and the schema agree with the settings' dataclasses."""

import dataclasses

import pytest
import yaml

from extractors.wsi.tiling import TilingParams
from querent.data.cohort import CohortSettings
from querent.data.splits import SplitSettings
from querent.engine.runs import TrainSettings, model_runs
from querent.figures import PlotSettings
from querent.schemas import CONFIG_SCHEMA
from tests.helpers import ROOT

CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
SCHEMA = yaml.safe_load(CONFIG_SCHEMA.read_text())
SECTIONS = {
    "tiling": TilingParams,
    "cohort": CohortSettings,
    "splits": SplitSettings,
    "training": TrainSettings,
    "plots": PlotSettings,
}


def _schema_properties(section):
    node = SCHEMA["properties"][section]
    if "$ref" in node:
        node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[-1]]
    return node["properties"]


@pytest.mark.parametrize("section", list(SECTIONS))
def test_config_schema_and_dataclass_share_keys_and_defaults(section):
    defaults = {
        f.name: list(f.default) if isinstance(f.default, tuple) else f.default
        for f in dataclasses.fields(SECTIONS[section])
    }
    properties = _schema_properties(section)
    assert set(properties) == set(defaults) == set(CONFIG[section])
    for name, default in defaults.items():
        assert properties[name]["default"] == default, name
        assert CONFIG[section][name] == default, name
        assert properties[name]["description"], name


def test_the_default_model_runs_are_valid():
    runs = model_runs(CONFIG["models"], CONFIG["training"])
    assert sorted(runs) == ["abmil", "querent"]
    assert runs["querent"].model == {"region_size": 4, "top_k": 8}
    assert SCHEMA["properties"]["models"]["default"] == CONFIG["models"]


@pytest.mark.parametrize("section", ["demo", "slides", "tissue", "features", "grids"])
def test_config_yaml_and_schema_agree_on_the_other_sections(section):
    properties = SCHEMA["properties"][section]["properties"]
    assert set(properties) == set(CONFIG[section])
    for name, value in CONFIG[section].items():
        node = properties[name]
        assert node["default"] == value, name
        if "$ref" in node:
            node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[-1]]
        assert node["description"], name


def test_the_shipped_config_leaves_the_demo_to_auto():
    """A fresh clone runs the demo; setting slides.dir alone runs your slides instead."""
    assert CONFIG["demo"]["enabled"] == "auto"
    assert SCHEMA["properties"]["demo"]["properties"]["enabled"]["enum"] == ["auto", True, False]


def test_the_schema_lists_every_registered_model_and_no_other():
    from querent.models import list_models

    arch = SCHEMA["properties"]["models"]["additionalProperties"]["properties"]["arch"]
    assert arch["enum"] == list_models()


def test_no_rule_names_a_conda_environment():
    """The docs say: run Snakemake inside the project's environment, not with --use-conda
    (Snakemake copies environment.yml away from the checkout its `pip: -e .` needs)."""
    rules = [ROOT / "Snakefile", ROOT / "workflow/Snakefile"]
    rules += sorted((ROOT / "workflow/rules").glob("*.smk"))
    assert [path.name for path in rules if "conda:" in path.read_text()] == []

"""Planning without Snakemake: the config and the inputs checked into values plus problems."""

import shutil

import pandas as pd
import pytest
import yaml

from extractors.wsi.discovery import SlideEntry
from querent.pipeline.plan import (
    CohortInputs,
    Findings,
    Inputs,
    apply_per_slide,
    check_registries,
    check_settings,
    choose_inputs,
    plan_workflow,
    schema_problems,
    slide_batches,
    table_problems,
)
from querent.pipeline.registries import read_registries
from querent.schemas import COHORT_SCHEMA, CONFIG_SCHEMA
from tests.helpers import default_config

WHERE = CohortInputs(
    "resources/demo/cohort.csv",
    "results/features/{encoder}",
    yaml.safe_load(COHORT_SCHEMA.read_text()),
)
#: What querent.pipeline.registries reads, cut to what these tests need.
REGISTRIES = {
    "encoders": {"efficientnet_lite0": {"native_mpp": 1.0, "input_px": 224}},
    "mpp_tolerance": 0.1,
    "models": {"querent": ["region_size", "top_k", "dim"], "abmil": ["dim"]},
    "min_batch": {"cox": 8},
}
OWN = {"enabled": "auto"}


def _plan(config, tmp_path):
    findings = Findings()
    plan = plan_workflow(
        config,
        demo_slides="resources/demo/slides/{slide}.svs",
        where=WHERE,
        mpp_cache=tmp_path / "slide_mpp.json",
        findings=findings,
    )
    return plan, findings


def test_the_shipped_config_plans_the_demo_to_trained_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan, findings = _plan(default_config(), tmp_path)
    assert findings.problems == [] and findings.notes == []
    assert plan.inputs == Inputs(own_features=False, own_slides=False, demo=True)
    assert len(plan.slides) == 16 and plan.left_out == []
    assert plan.train_slides == sorted(plan.slides)  # the demo sheet is checked in memory
    assert set(plan.metadata_mpp.values()) == {0.5}
    assert plan.slide_kwargs(default_config(), "demo_000") == {
        "slide_id": "demo_000",
        "mpp_override": None,
        "mpp_default": None,
    }


def test_batches_hold_slides_per_job_in_id_order():
    slides = {f"s{i}": SlideEntry(f"s{i}", f"s{i}.svs") for i in (3, 1, 0, 2, 4)}
    batches = slide_batches(slides, 2)
    assert batches == {"b0000": ["s0", "s1"], "b0001": ["s2", "s3"], "b0002": ["s4"]}


@pytest.mark.parametrize(
    ("sections", "named"),
    [
        ({"demo": {"enabled": True}, "slides": {"dir": "slides"}}, "demo.enabled is true"),
        ({"features": {"dir": "f"}, "slides": {"dir": "slides"}}, "features.dir and slides.dir"),
        ({"features": {"dir": "f", "export_clam": True}}, "features.export_clam export"),
    ],
)
def test_contradicting_inputs_are_problems_that_name_both_keys(sections, named):
    findings = Findings()
    choose_inputs(default_config(**sections), findings)
    assert len(findings.problems) == 1 and named in findings.problems[0]


def test_your_features_replace_the_demo_and_a_forced_demo_is_only_noted():
    findings = Findings()
    inputs = choose_inputs(default_config(features={"dir": "f"}, demo={"enabled": True}), findings)
    assert inputs == Inputs(own_features=True, own_slides=False, demo=False)
    assert findings.problems == [] and "demo.enabled: true is ignored" in findings.notes[0]


def test_cross_field_settings_are_all_reported(tmp_path):
    config = default_config(
        features={"encoder": ["uni_v2", "virchow2"], "checkpoint": "/w.bin"},
        cohort={"task": "survival", "classes": ["a", "b"]},
        tiling={"overlap": 512},
    )
    findings = Findings()
    check_settings(config, ["uni_v2", "virchow2"], choose_inputs(config, findings), findings)
    text = "\n".join(findings.problems)
    assert len(findings.problems) == 3
    assert "overlap" in text and "checkpoint is one file" in text and "cohort.classes" in text
    message = findings.message()
    assert message.startswith("config.yaml: 3 problems; nothing was run.")


def test_per_slide_mpp_overrides_and_their_conflicts():
    slides = {
        "a": SlideEntry("a", "a.svs"),
        "b": SlideEntry("b", "b.svs", mpp=0.25),
    }
    config = default_config(
        slides={"per_slide": {"a": {"mpp": 0.5}, "b": {"mpp": 0.3}, "zz": {"mpp": 1.0}}}
    )
    findings = Findings()
    updated = apply_per_slide(config, slides, choose_inputs(config, findings), findings)
    assert updated["a"].mpp == 0.5 and updated["b"].mpp == 0.25
    assert slides["a"].mpp is None  # the input is not changed in place
    text = "\n".join(findings.problems)
    assert "slides.per_slide names slides that are not in the input: zz" in text
    assert "slide 'b' has mpp 0.25 in the slide sheet and 0.3" in text


def test_a_target_finer_than_a_slides_level_0_leaves_it_out_with_a_note(
    tmp_path, monkeypatch, cmu_slide
):
    """CMU-1-Small-Region is scanned at 0.499 µm/px; a second copy says 0.2 µm/px."""
    monkeypatch.chdir(tmp_path)
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(cmu_slide, slides / "coarse.svs")
    shutil.copy(cmu_slide, slides / "fine.svs")
    config = default_config(
        demo=OWN,
        slides={"dir": str(slides), "per_slide": {"fine": {"mpp": 0.2}}},
        tiling={"target_mpp": 0.25},
    )
    plan, findings = _plan(config, tmp_path)
    assert findings.problems == []
    assert sorted(plan.slides) == ["fine"] and plan.left_out == ["coarse"]
    assert "slide 'coarse' is left out" in findings.notes[0]
    assert plan.metadata_mpp["coarse"] == pytest.approx(0.499)
    assert (tmp_path / "slide_mpp.json").is_file()  # the metadata is cached

    config["slides"]["per_slide"] = {}
    plan, findings = _plan(config, tmp_path)
    assert "finer than level 0 of every slide" in findings.problems[0]


def test_your_feature_files_and_sheet_give_the_slides_that_train(tmp_path, synthetic_cohort):
    sheet, features = synthetic_cohort
    config = default_config(
        demo=OWN,
        features={"dir": str(features), "encoder": "synthetic"},
        cohort={"sheet": str(sheet)},
        plots={"heatmap_slides": ["nobody"]},
    )
    plan, findings = _plan(config, tmp_path)
    assert plan.slides == {} and plan.inputs.own_features
    assert plan.train_slides == sorted(path.stem for path in features.glob("*.h5"))
    assert findings.problems == [
        "plots.heatmap_slides names slides that do not train: nobody; fix the ids or drop them."
    ]


def test_a_split_file_with_other_folds_than_the_config_is_a_problem(tmp_path, synthetic_cohort):
    sheet, features = synthetic_cohort
    table = pd.read_csv(sheet)
    folds = pd.DataFrame({"slide_id": table["slide_id"], "case_id": table["case_id"], "fold": 0})
    folds.loc[folds["case_id"].isin(table["case_id"].unique()[::2]), "fold"] = 1
    folds.to_csv(tmp_path / "splits.csv", index=False)
    config = default_config(
        demo=OWN,
        features={"dir": str(features), "encoder": "synthetic"},
        cohort={"sheet": str(sheet)},
        splits={"file": str(tmp_path / "splits.csv"), "folds": 5},
    )
    _, findings = _plan(config, tmp_path)
    assert findings.problems == [
        f"split file {tmp_path / 'splits.csv'} has 2 folds, splits.folds says 5; "
        "set splits.folds: 2."
    ]


def test_the_registries_check_encoders_resolution_runs_and_the_cox_batch():
    config = default_config(
        features={"encoder": ["efficientnet_lite0", "uni_v9"]},
        tiling={"target_mpp": 0.5, "patch_size": 224},
        cohort={"task": "survival", "classes": None},
        training={"survival_loss": "cox", "batch_size": 4},
        models={"querent": {"arch": "querent", "topk": 2}},
    )
    findings = Findings()
    encoders = ["efficientnet_lite0", "uni_v9"]
    check_registries(config, choose_inputs(config, findings), encoders, REGISTRIES, findings)
    text = "\n".join(findings.problems)
    assert "features.encoder 'uni_v9' is not a registered encoder" in text
    assert "reach encoder efficientnet_lite0 at 0.500 µm/px, but it expects 1.0" in text
    assert "querent takes no argument topk" in text

    config["models"] = {"abmil": {"arch": "abmil"}}
    config["features"]["allow_mpp_mismatch"] = True
    findings = Findings()
    check_registries(config, choose_inputs(config, findings), encoders[:1], REGISTRIES, findings)
    assert findings.problems == [
        "models.abmil: training.batch_size 4 is too small for the Cox loss, which needs 8 "
        "slides per batch (its risk set). Fix: raise batch_size, or use survival_loss: discrete."
    ]


def test_every_schema_error_is_listed_with_its_key():
    config = default_config()
    config["tiling"]["patch_size"] = "big"
    config["training"]["epochs"] = -1
    lines = schema_problems(config, yaml.safe_load(CONFIG_SCHEMA.read_text()))
    assert len(lines) == 2
    assert lines[0].startswith("tiling.patch_size: 'big'")
    assert lines[1].startswith("training.epochs: -1")


def test_cohort_rows_that_break_the_sheet_schema_name_their_line():
    table = pd.DataFrame({"slide_id": ["ok-1", "bad id"], "case_id": ["c1", ""]})
    problems = table_problems(table, WHERE.schema, "cohort.csv")
    assert len(problems) == 2
    assert all(problem.startswith("cohort.csv line 3: ") for problem in problems)


@pytest.fixture(scope="module")
def known():
    """The real registries, as the planner's subprocess reads them."""
    return read_registries()


def _problems(config, known, tmp_path):
    plan, findings = _plan(config, tmp_path)
    check_registries(config, plan.inputs, plan.encoders, known, findings)
    return "\n".join(findings.problems)


@pytest.mark.parametrize(
    ("sections", "named"),
    [
        ({"tiling": {"target_mpp": 0.25}}, "reach encoder efficientnet_lite0"),
        ({"training": {"batch_size": 2, "survival_loss": "cox"}, "cohort": {"task": "survival"}},
         "Cox loss"),
        ({"features": {"dir": "lab", "export_stamp": True}}, "features.export_stamp"),
        ({"features": {"dir": "lab"}, "slides": {"dir": "lab"}}, "features.dir and slides.dir"),
        ({"slides": {"per_slide": {"nope": {"mpp": 0.5}}}}, "slides.per_slide"),
        ({"features": {"dir": "lab", "encoder": ["a", "b"]}}, "name the one encoder"),
        ({"features": {"encoder": ["efficientnet_lite0", "uni_v2"], "checkpoint": "w.bin"}},
         "give it per encoder"),
        ({"features": {"checkpoint": {"uni_v2": "w.bin"}}}, "does not list: uni_v2"),
        ({"features": {"encoder": ["efficientnet_lite0", "uni_v3"]}}, "'uni_v3' is not a"),
    ],
)  # fmt: skip
def test_each_conflicting_setting_is_a_problem_naming_it(
    sections, named, known, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lab").mkdir()
    assert named in _problems(default_config(**sections), known, tmp_path)


def _sheet(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        (lambda p: {"slides": {"dir": str(p / "nowhere")}}, "slides.dir"),
        (lambda p: {"slides": {"sheet": str(p / "nowhere.csv")}}, "slides.sheet"),
        (lambda p: {"slides": {"sheet": _sheet(p / "s.csv", "path\n")}}, "lists no slide"),
        (lambda p: {"slides": {"sheet": _sheet(p / "s.csv", "")}}, "cannot read it"),
        (lambda p: {"cohort": {"sheet": str(p / "nowhere.csv")}}, "set cohort.sheet"),
        (lambda p: {"cohort": {"sheet": _sheet(p / "c.csv", "slide_id,case_id,label\n")}},
         "no slides (only a header line)"),
        (lambda p: {"splits": {"file": str(p / "nowhere.csv")}}, "split file"),
        (lambda p: {"demo": {"enabled": False}}, "set exactly one of slides.dir and slides.sheet"),
    ],
)  # fmt: skip
def test_each_missing_or_empty_input_is_a_problem_naming_it(
    inputs, named, known, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    sections = inputs(tmp_path)
    if "slides" in sections:
        sections["demo"] = OWN
    assert named in _problems(default_config(**sections), known, tmp_path)

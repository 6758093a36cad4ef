"""Planning without Snakemake: the config and the inputs checked into values plus problems."""

import shutil

import pandas as pd
import pytest
import yaml

from extractors.wsi.discovery import SlideEntry
from querent.engine.runs import model_run
from querent.pipeline.plan import (
    NO_COHORT_SHEET,
    CohortInputs,
    Findings,
    Inputs,
    apply_per_slide,
    check_registries,
    check_settings,
    choose_inputs,
    plan_workflow,
    slide_batches,
    table_problems,
)
from querent.pipeline.registries import read_registries
from querent.schemas import COHORT_SCHEMA, CONFIG_SCHEMA
from querent.schemas.validation import check_config, schema_problems
from tests.helpers import ROOT, default_config

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
    "run_problems": {},
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
    """The real registries, as the planner's subprocess reads them for the shipped config."""
    return read_registries(default_config()["models"])


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


# --- every problem at once, each naming its key ------------------------------------------------

SCHEMA = yaml.safe_load(CONFIG_SCHEMA.read_text())


def _shipped(**sections):
    """The shipped config.yaml with ``sections`` merged in, not yet checked by the schema."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for name, values in sections.items():
        config[name] = {**config[name], **values}
    return config


def test_schema_and_model_problems_are_reported_together_naming_their_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _shipped(
        models={"querent": {"arch": "querent", "region_size": 0}},
        training={"epoch": 3},
        tiling={"patch_size": "big"},
    )
    findings = Findings()
    findings.problems, plannable = check_config(config, SCHEMA)
    assert plannable  # the defaults stand in for the rejected values
    plan, _ = _plan(config, tmp_path)
    check_registries(
        config, plan.inputs, plan.encoders, read_registries(config["models"]), findings
    )
    assert findings.problems == [
        "tiling.patch_size: 'big' is not of type 'integer'",
        "training.epoch: unknown setting; did you mean `epochs`?",
        "models.querent.region_size: must be >= 1 (got 0)",
    ]
    assert findings.message().startswith("config.yaml: 3 problems; nothing was run.")


def test_a_value_without_a_default_stops_before_the_later_checks():
    config = _shipped(models={"q": {"arch": "resnet"}}, splits={"folds": 0})
    problems, plannable = check_config(config, SCHEMA)
    assert not plannable and len(problems) == 2
    assert problems[0].startswith("models.q.arch: 'resnet' is not one of")
    assert problems[1].startswith("splits.folds: 0 is less than the minimum")


def test_an_unknown_key_without_a_close_one_lists_the_valid_ones():
    problems, _ = check_config(_shipped(cohort={"zzz": 1}), SCHEMA)
    valid = ", ".join(sorted(SCHEMA["properties"]["cohort"]["properties"]))
    assert problems == [f"cohort.zzz: unknown setting; valid ones: {valid}"]


def test_a_runs_training_overrides_keep_the_training_sections_other_settings():
    config = _shipped(
        training={"epochs": 2}, models={"abmil": {"arch": "abmil", "training": {"lr": 1e-3}}}
    )
    assert check_config(config, SCHEMA) == ([], True)
    assert config["models"]["abmil"]["training"] == {"lr": 1e-3}  # no default filled in
    run = model_run("abmil", config["models"]["abmil"], config["training"], REGISTRIES["models"])
    assert (run.training.epochs, run.training.lr) == (2, 1e-3)


# --- messages that point at the right thing ----------------------------------------------------


def test_sheet_and_slide_folder_mismatches_are_said_in_slide_terms(
    tmp_path, monkeypatch, cmu_slide
):
    monkeypatch.chdir(tmp_path)
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("a", "b"):
        shutil.copy(cmu_slide, slides / f"{name}.svs")
    sheet = _sheet(tmp_path / "cohort.csv", "slide_id,case_id,label\na,c1,x\nghost,c2,y\n")
    config = default_config(demo=OWN, slides={"dir": str(slides)}, cohort={"sheet": sheet})
    _, findings = _plan(config, tmp_path)
    (problem,) = findings.problems
    assert f"sheet slides with no slide file in slides.dir {slides}: ghost" in problem
    assert f"slides in slides.dir {slides} without a sheet row: b" in problem
    assert "features" not in problem


def test_a_clam_feature_root_points_at_its_h5_files(tmp_path, monkeypatch, synthetic_cohort):
    monkeypatch.chdir(tmp_path)
    sheet, features = synthetic_cohort
    shutil.copytree(features, tmp_path / "clam/h5_files")
    (tmp_path / "clam/pt_files").mkdir()
    config = default_config(
        demo=OWN, features={"dir": str(tmp_path / "clam")}, cohort={"sheet": str(sheet)}
    )
    _, findings = _plan(config, tmp_path)
    (problem,) = findings.problems
    assert problem.endswith(f"Fix: features.dir: {tmp_path / 'clam/h5_files'}")


def test_a_run_without_a_cohort_sheet_says_it_stops_after_the_features(
    tmp_path, monkeypatch, cmu_slide
):
    monkeypatch.chdir(tmp_path)
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(cmu_slide, slides / "a.svs")
    plan, findings = _plan(default_config(demo=OWN, slides={"dir": str(slides)}), tmp_path)
    assert plan.train_slides == [] and findings.problems == []
    assert findings.notes == [NO_COHORT_SHEET] and "set cohort.sheet" in NO_COHORT_SHEET

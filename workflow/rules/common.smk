from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from extractors.demo import demo_cohort
from extractors.encoders import list_encoders
from extractors.errors import QuerentError
from extractors.wsi.discovery import (
    SLIDE_ID_PATTERN,
    SlideEntry,
    discover_slides,
    read_slide_sheet,
)
from querent.data.cohort import cohort_from_table, read_table
from querent.data.splits import SplitSettings, make_splits
from querent.engine.experiment import (
    DEMO_SHEET,
    cohort_settings,
    features_folder,
    load_experiment,
    match_features,
)
from querent.engine.runs import RUN_NAME_PATTERN, model_runs


validate(config, "../schemas/config.schema.yaml")

#: With features.dir, training reads a lab's own feature files: no slides, tiling or extraction.
OWN_FEATURES = bool(config["features"]["dir"])


def load_slides():
    """Slide id -> SlideEntry, from the demo cohort, a folder or a slide sheet."""
    if OWN_FEATURES:
        return {}
    if config["demo"]["enabled"]:
        return {
            slide_id: SlideEntry(slide_id, Path(f"resources/demo/slides/{slide_id}.svs"))
            for slide_id in DEMO_COHORT["slide_id"]
        }
    folder, sheet = config["slides"]["dir"], config["slides"]["sheet"]
    if bool(folder) == bool(sheet):
        raise WorkflowError(
            "config.yaml: set exactly one of slides.dir and slides.sheet "
            "(or demo.enabled: true for the demo cohort)."
        )
    try:
        entries = read_slide_sheet(sheet) if sheet else discover_slides(folder)
    except QuerentError as err:
        raise WorkflowError(str(err)) from None
    return {entry.slide_id: entry for entry in entries}


def cohort_sheet():
    """The cohort sheet: cohort.sheet, else the demo's."""
    return cohort_settings(config).sheet


def check_cohort():
    """Slides to train on; every cohort, split and model-run problem stops the DAG here.

    Without a cohort sheet (and not the demo) the workflow stops at features: no slides train.
    """
    try:
        model_runs(config["models"], config["training"])
        if cohort_sheet() == DEMO_SHEET and not OWN_FEATURES:
            if not config["demo"]["enabled"]:
                return []
            # the demo sheet is written by make_demo_cohort; check the same table in memory
            table = DEMO_COHORT.astype(str)
            cohort = cohort_from_table(table, cohort_settings(config), Path(DEMO_SHEET))
            make_splits(cohort, SplitSettings(**config["splits"]))
            return cohort.slide_ids
        sheet = read_table(Path(cohort_sheet()), "cohort sheet")
        validate(sheet, "../schemas/cohort.schema.yaml")
        available = None if OWN_FEATURES else set(SLIDES)
        experiment = load_experiment(config, available=available)
        if not config["splits"]["file"]:
            make_splits(experiment.cohort, experiment.splits)
    except QuerentError as err:
        raise WorkflowError(f"config.yaml: {err}") from None
    return sorted(experiment.files)


def split_file_input():
    """The user's split file as an input, so editing it re-runs the splits."""
    return [config["splits"]["file"]] if config["splits"]["file"] else []


def train_features(wildcards):
    """Feature files of every slide that trains or evaluates."""
    folder = features_folder(config)
    return [str(folder / f"{slide}.h5") for slide in TRAIN_SLIDES]


DEMO_COHORT = demo_cohort(config["demo"]["n_slides"], config["demo"]["seed"])
SLIDES = load_slides()
TRAIN_SLIDES = check_cohort()
ENCODER = config["features"]["encoder"]
FOLDS = list(range(config["splits"]["folds"]))

if not OWN_FEATURES and ENCODER not in list_encoders():
    raise WorkflowError(
        f"config.yaml: features.encoder {config['features']['encoder']!r} is not a registered "
        f"encoder; choose one of {', '.join(list_encoders())}."
    )

unknown_overrides = sorted(set(config["tissue"]["per_slide"]) - set(SLIDES))
if unknown_overrides:
    raise WorkflowError(
        f"config.yaml: tissue.per_slide names slides that are not in the input: "
        f"{unknown_overrides}; fix the slide ids (known ids look like {sorted(SLIDES)[:3]})."
    )


wildcard_constraints:
    slide=SLIDE_ID_PATTERN,
    encoder="[A-Za-z0-9_]+",
    model=RUN_NAME_PATTERN,
    fold="[0-9]+",


def slide_path(wildcards):
    return str(SLIDES[wildcards.slide].path)


def slide_kwargs_of(slide):
    """Keyword arguments of extractors.wsi.reader.Slide for one slide."""
    return {
        "slide_id": slide,
        "mpp_override": SLIDES[slide].mpp,
        "mpp_default": config["slides"]["mpp_default"],
    }


def slide_kwargs(wildcards):
    return slide_kwargs_of(wildcards.slide)


def trained_slides():
    """Slide files of the slides that train (the top-patch mosaics read them); none for
    features.dir, whose slides the workflow never sees."""
    return [str(SLIDES[slide].path) for slide in TRAIN_SLIDES if slide in SLIDES]


def trained_slide_kwargs():
    return {slide: slide_kwargs_of(slide) for slide in TRAIN_SLIDES if slide in SLIDES}


def tissue_settings(wildcards):
    """Preset plus global and per-slide overrides, as keyword arguments of tissue_params."""
    tissue = config["tissue"]
    return {
        "preset": tissue["preset"],
        **tissue["params"],
        **tissue["per_slide"].get(wildcards.slide, {}),
    }


def demo_label(wildcards):
    return DEMO_COHORT.set_index("slide_id").loc[wildcards.slide, "label"]


def all_outputs():
    per_slide = [
        "results/coords/{slide}_qc.png",
        "results/features/{encoder}/{slide}.h5",
        "results/grids/r{region_size}/{slide}.h5",
    ]
    if config["features"]["export_stamp"]:
        per_slide.append("results/stamp/{encoder}/{slide}.h5")
    if config["features"]["export_clam"]:
        per_slide += [
            "results/clam/{encoder}/pt_files/{slide}.pt",
            "results/clam/{encoder}/h5_files/{slide}.h5",
            "results/clam/patches/{slide}.h5",
        ]
    outputs = expand(
        per_slide,
        slide=sorted(SLIDES),
        encoder=ENCODER,
        region_size=config["grids"]["region_size"],
    )
    if config["demo"]["enabled"] and not OWN_FEATURES:
        outputs.append("resources/demo/cohort.csv")
    if TRAIN_SLIDES:
        outputs += ["results/eval/summary.tsv", "results/plots/summary.png"]
        outputs += expand("results/plots/{model}/{encoder}", model=config["models"], encoder=ENCODER)
        if not OWN_FEATURES:  # heatmaps are drawn on the slides' thumbnails
            results = ["results/heatmaps/{model}/{encoder}"]
            if config["plots"]["top_patches"]:
                results.append("results/top_patches/{model}/{encoder}")
            outputs += expand(results, model=config["models"], encoder=ENCODER)
    return outputs

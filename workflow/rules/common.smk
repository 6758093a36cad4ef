from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from extractors.demo import demo_cohort
from extractors.encoders import list_encoders
from extractors.errors import SlideDiscoveryError
from extractors.wsi.discovery import (
    SLIDE_ID_PATTERN,
    SlideEntry,
    discover_slides,
    read_slide_sheet,
)


validate(config, "../schemas/config.schema.yaml")


def load_slides():
    """Slide id -> SlideEntry, from the demo cohort, a folder or a slide sheet."""
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
    except SlideDiscoveryError as err:
        raise WorkflowError(str(err)) from None
    return {entry.slide_id: entry for entry in entries}


DEMO_COHORT = demo_cohort(config["demo"]["n_slides"], config["demo"]["seed"])
SLIDES = load_slides()

if config["features"]["encoder"] not in list_encoders():
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


def slide_path(wildcards):
    return str(SLIDES[wildcards.slide].path)


def slide_kwargs(wildcards):
    """Keyword arguments of extractors.wsi.reader.Slide for one slide."""
    return {
        "slide_id": wildcards.slide,
        "mpp_override": SLIDES[wildcards.slide].mpp,
        "mpp_default": config["slides"]["mpp_default"],
    }


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
        encoder=config["features"]["encoder"],
        region_size=config["grids"]["region_size"],
    )
    if config["demo"]["enabled"]:
        outputs.append("resources/demo/cohort.csv")
    return outputs

import sys
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from extractors.demo import DEMO_MPP, demo_cohort
from extractors.errors import QuerentError
from extractors.wsi.discovery import (
    SLIDE_ID_PATTERN,
    SlideEntry,
    discover_slides,
    metadata_mpps,
    read_slide_sheet,
)
from extractors.wsi.reader import MPP_TOLERANCE
from extractors.wsi.resources import slide_stage_mem_mb
from extractors.wsi.tiling import TilingParams
from querent.data.cohort import CohortSettings, cohort_from_table, format_items, read_cohort
from querent.data.splits import SplitSettings, check_splits, read_splits
from querent.engine.experiment import (
    DEMO_SHEET,
    cohort_settings,
    config_encoders,
    features_folder,
    match_features,
)
from querent.engine.runs import RUN_NAME_PATTERN, model_runs

# Everything here runs while Snakemake builds the DAG, before any job: each problem of the
# config and the inputs is collected into PROBLEMS and reported at once, one line each. Nothing
# here imports torch or timm (tests/workflow/test_inputs.py checks it): what the checks need to
# know of the encoder and model registries is read once by a subprocess (start_registries) and
# kept in .snakemake/querent/ until their source changes.

RULES = Path(workflow.current_basedir.get_path_or_uri(secret_free=True))
SCHEMA = RULES.parent / "schemas" / "config.schema.yaml"
try:
    validate(config, str(SCHEMA))
except WorkflowError:  # every schema error at once, not only the first
    errors = Draft202012Validator(yaml.safe_load(SCHEMA.read_text())).iter_errors(config)
    lines = sorted(
        f"  {'.'.join(map(str, error.absolute_path)) or 'config'}: {error.message}"
        for error in errors
    )
    raise WorkflowError(
        f"config.yaml: {len(lines)} setting(s) the schema ({SCHEMA.name}) rejects; nothing was "
        "run. Fix them, then run the same command again:\n" + "\n".join(lines)
    ) from None

#: This process plans the run (jobs that parse this file again on a cluster node skip the
#: checks the planner did: registries, locks, GPUs).
PLANNER = workflow.is_main_process
#: Files this workflow keeps between runs (registry catalogue, slide metadata, lock owner).
STATE = Path(".snakemake/querent")
PROBLEMS = []


def note(message):
    """One line for the person at the terminal, while the DAG is built."""
    print(f"querent: {message}", file=sys.stderr, flush=True)


def checked(step, *args, **kwargs):
    """``step(*args, **kwargs)``; a user error becomes a line of PROBLEMS and the result None."""
    try:
        return step(*args, **kwargs)
    except QuerentError as err:
        PROBLEMS.append(str(err))
        return None


def stop_on_problems():
    """Raise one error listing every problem found so far (nothing when there is none)."""
    if len(PROBLEMS) == 1:
        raise WorkflowError(f"config.yaml: {PROBLEMS[0]}")
    if PROBLEMS:
        lines = "\n".join(f"  {line}" for problem in PROBLEMS for line in problem.splitlines())
        raise WorkflowError(
            f"config.yaml: {len(PROBLEMS)} problems; nothing was run. Fix them all, then run the "
            f"same command again:\n{lines}"
        )


include: "housekeeping.smk"


# --- which input: the demo, your slides or your feature files --------------------------------

#: With features.dir, training reads a lab's own feature files: no slides, tiling or extraction.
OWN_FEATURES = bool(config["features"]["dir"])
OWN_SLIDES = bool(config["slides"]["dir"] or config["slides"]["sheet"])
_demo = config["demo"]["enabled"]
if _demo is True and OWN_SLIDES:
    which = "slides.dir" if config["slides"]["dir"] else "slides.sheet"
    PROBLEMS.append(
        f"demo.enabled is true and {which} is set: the demo would replace your slides. Fix: set "
        f"demo.enabled: auto (or false) to run your slides, or empty {which} to run the demo."
    )
if OWN_FEATURES and OWN_SLIDES:
    PROBLEMS.append(
        "features.dir and slides.dir/slides.sheet are both set: with your own feature files no "
        "slide is read. Fix: empty one of them."
    )
if OWN_FEATURES and _demo is True:
    note("demo.enabled: true is ignored: features.dir is set (say demo.enabled: auto).")
#: The synthetic demo cohort is the input: switched on, or `auto` with no input of your own.
DEMO = not OWN_FEATURES and (_demo is True or (_demo == "auto" and not OWN_SLIDES))
if OWN_FEATURES:
    exports = [key for key in ("export_stamp", "export_clam") if config["features"][key]]
    if exports:
        PROBLEMS.append(
            f"features.{' and features.'.join(exports)} export this workflow's own features, "
            "but features.dir is set (no extraction runs). Fix: set them to false, or empty "
            "features.dir."
        )


def load_slides():
    """Slide id -> SlideEntry (mpp: the per-slide override), from the demo, a folder or a sheet."""
    if OWN_FEATURES:
        return {}
    if DEMO:
        return {
            slide_id: SlideEntry(slide_id, Path(f"resources/demo/slides/{slide_id}.svs"))
            for slide_id in DEMO_COHORT["slide_id"]
        }
    folder, sheet = config["slides"]["dir"], config["slides"]["sheet"]
    if bool(folder) == bool(sheet):
        PROBLEMS.append(
            "set exactly one of slides.dir and slides.sheet (or demo.enabled: auto with both "
            "empty for the demo cohort)."
        )
        return {}
    entries = checked(read_slide_sheet, sheet) if sheet else checked(discover_slides, folder)
    return {entry.slide_id: entry for entry in entries or ()}


def apply_per_slide(slides):
    """Add slides.per_slide's MPP overrides; every unknown or doubly set slide is a problem."""
    per_slide = config["slides"]["per_slide"]
    for section in ("slides", "tissue"):
        unknown = sorted(set(config[section]["per_slide"]) - set(slides))
        if unknown and (slides or DEMO or OWN_FEATURES):
            PROBLEMS.append(
                f"{section}.per_slide names slides that are not in the input: "
                f"{format_items(unknown)}; fix the slide ids (known ids look like "
                f"{format_items(sorted(slides)[:3])})."
            )
    for slide, settings in per_slide.items():
        if slide not in slides or settings.get("mpp") is None:
            continue
        entry = slides[slide]
        if entry.mpp is not None and entry.mpp != settings["mpp"]:
            PROBLEMS.append(
                f"slide {slide!r} has mpp {entry.mpp} in the slide sheet and "
                f"{settings['mpp']} in slides.per_slide; keep one of them."
            )
            continue
        slides[slide] = SlideEntry(entry.slide_id, entry.path, float(settings["mpp"]))
    return slides


def read_metadata_mpps(slides):
    """Slide id -> µm/px its own metadata gives (None: none) for the slides without an override.

    Slides that do not exist yet (the demo's, made with DEMO_MPP) or that OpenSlide cannot open
    are left out: their jobs say what is wrong. The metadata is read from each slide's header
    (milliseconds) and kept in .snakemake/querent/ while the file is unchanged.
    """
    if DEMO:
        return {slide: DEMO_MPP for slide, entry in slides.items() if entry.mpp is None}
    probe = {slide: entry.path for slide, entry in slides.items() if entry.mpp is None}
    return metadata_mpps(probe, cache=STATE / "slide_mpp.json")


def level0_mpps(slides, metadata):
    """Slide id -> level-0 µm/px as the reader will resolve it (None: no MPP anywhere)."""
    default = config["slides"]["mpp_default"]
    mpps = {slide: entry.mpp for slide, entry in slides.items() if entry.mpp is not None}
    mpps.update({slide: default if mpp is None else mpp for slide, mpp in metadata.items()})
    return mpps


def tileable(slides, mpps):
    """The slides that can be tiled at tiling.target_mpp; the others are left out, one line each.

    A target finer than a slide's level 0 would invent resolution, so that slide's tile job
    could only fail, and Snakemake deletes a job's old output before it runs: leaving it out
    keeps its coords and features of the last config, so reverting re-runs nothing.
    """
    target = config["tiling"]["target_mpp"]
    finer = {
        slide: mpp
        for slide, mpp in mpps.items()
        if mpp is not None and target < mpp * (1 - MPP_TOLERANCE)
    }
    if finer and len(finer) == len(slides):
        PROBLEMS.append(
            f"tiling.target_mpp {target} is finer than level 0 of every slide (coarsest "
            f"{max(finer.values())} µm/px): patches would invent resolution. Fix: set "
            f"tiling.target_mpp to at least {max(finer.values())}."
        )
        return slides
    for slide, mpp in sorted(finer.items()):
        note(
            f"slide {slide!r} is left out: tiling.target_mpp {target} is finer than its level 0 "
            f"({mpp} µm/px); its files of earlier runs are kept. Fix: tiling.target_mpp >= {mpp}, "
            "or remove the slide from the input."
        )
    return {slide: entry for slide, entry in slides.items() if slide not in finer}


# --- the cohort, its splits and the model runs ------------------------------------------------


def cohort_sheet():
    """The cohort sheet: cohort.sheet, else the demo's."""
    return config["cohort"]["sheet"] or DEMO_SHEET


def check_cohort():
    """Slides to train on; every cohort and split problem goes to PROBLEMS.

    Without a cohort sheet (and not the demo) the workflow stops at features.
    """
    settings = checked(cohort_settings, config)
    splits = checked(SplitSettings, **config["splits"])
    if settings is None or splits is None:
        return []
    if cohort_sheet() == DEMO_SHEET and not OWN_FEATURES:
        if not DEMO:
            return []
        # the demo sheet is written by make_demo_cohort; check the same table in memory
        cohort = checked(
            cohort_from_table, DEMO_COHORT.astype(str), settings, Path(DEMO_SHEET)
        )
        files = {slide: None for slide in cohort.slide_ids} if cohort else {}
    else:
        cohort = checked(read_cohort, settings.sheet, settings)
        if cohort is None:
            return []
        validate(cohort.table[["slide_id", "case_id"]], "../schemas/cohort.schema.yaml")
        available = None if OWN_FEATURES else set(SLIDES)
        folder = features_folder(config, ENCODERS[0])
        matched = checked(match_features, cohort, folder, settings.on_missing, available)
        cohort, files = matched if matched else (None, {})
    if cohort is None:
        return []
    if splits.file:
        table = checked(read_splits, splits.file, cohort)
        if table is not None:
            folds = sorted({fold for fold in table["fold"] if fold != "test"}, key=int)
            if len(folds) != splits.folds:
                PROBLEMS.append(
                    f"split file {splits.file} has {len(folds)} folds, splits.folds says "
                    f"{splits.folds}; set splits.folds: {len(folds)}."
                )
    else:
        checked(check_splits, cohort, splits)
    unknown = sorted(set(config["plots"]["heatmap_slides"]) - set(cohort.slide_ids))
    if unknown:
        PROBLEMS.append(
            f"plots.heatmap_slides names slides that do not train: {format_items(unknown)}; "
            "fix the ids or drop them."
        )
    return sorted(files)


def check_settings():
    """Cross-field settings that need no slide: tiling geometry, encoders, cohort task."""
    checked(TilingParams, **config["tiling"])
    features = config["features"]
    if OWN_FEATURES and len(ENCODERS) > 1:
        PROBLEMS.append(
            f"features.dir holds one set of feature files, but features.encoder lists "
            f"{ENCODERS}. Fix: name the one encoder whose features are in {features['dir']}."
        )
    weights = features["checkpoint"]
    if isinstance(weights, str) and weights and len(ENCODERS) > 1:
        PROBLEMS.append(
            f"features.checkpoint is one file but features.encoder lists {ENCODERS}. Fix: give "
            "it per encoder, e.g. checkpoint: {uni_v2: /path/to/uni_v2.bin}."
        )
    if isinstance(weights, dict) and set(weights) - set(ENCODERS):
        PROBLEMS.append(
            f"features.checkpoint names encoders that features.encoder does not list: "
            f"{format_items(sorted(set(weights) - set(ENCODERS)))}. Fix the names."
        )
    cohort = config["cohort"]
    if cohort["task"] == "survival" and cohort["classes"] is not None:
        PROBLEMS.append(
            "cohort.classes is set but cohort.task is survival (classes order labels of a "
            "classification). Fix: set cohort.classes: null, or cohort.task: classification."
        )


def encoder_checkpoint(wildcards):
    """The local weight file of the job's encoder ("" for the Hugging Face cache or hub)."""
    weights = config["features"]["checkpoint"]
    return weights.get(wildcards.encoder, "") if isinstance(weights, dict) else weights


def check_registries(registries):
    """Encoder, model runs and what they need of the settings, from the registries."""
    encoders = registries["encoders"]
    for encoder in [] if OWN_FEATURES else ENCODERS:
        if encoder not in encoders:
            PROBLEMS.append(
                f"features.encoder {encoder!r} is not a registered encoder; choose one of "
                f"{', '.join(sorted(encoders))}."
            )
        elif not config["features"]["allow_mpp_mismatch"]:
            # what extractors.extract.check_resolution refuses in every extraction job
            spec, tiling = encoders[encoder], config["tiling"]
            seen = tiling["target_mpp"] * tiling["patch_size"] / spec["input_px"]
            if abs(seen / spec["native_mpp"] - 1) > registries["mpp_tolerance"]:
                PROBLEMS.append(
                    f"tiling.target_mpp {tiling['target_mpp']} and patch_size "
                    f"{tiling['patch_size']} reach encoder {encoder} at {seen:.3f} µm/px, but it "
                    f"expects {spec['native_mpp']} µm/px. Fix: tile at target_mpp "
                    f"{spec['native_mpp']} with patch_size about {spec['input_px']}, or set "
                    "features.allow_mpp_mismatch."
                )
    runs = checked(model_runs, config["models"], config["training"], registries["models"])
    cox = registries["min_batch"].get("cox", 1)
    if runs and config["cohort"]["task"] == "survival":
        for run in runs.values():
            if run.training.survival_loss == "cox" and run.training.batch_size < cox:
                PROBLEMS.append(
                    f"models.{run.name}: training.batch_size {run.training.batch_size} is too "
                    f"small for the Cox loss, which needs {cox} slides per batch (its risk set). "
                    "Fix: raise batch_size, or use survival_loss: discrete."
                )


def split_file_input():
    """The user's split file as an input, so editing it re-runs the splits."""
    return [config["splits"]["file"]] if config["splits"]["file"] else []


def train_features(wildcards):
    """The job encoder's feature files of every slide that trains or evaluates."""
    folder = features_folder(config, wildcards.encoder)
    return [str(folder / f"{slide}.h5") for slide in TRAIN_SLIDES]


DEMO_COHORT = demo_cohort(config["demo"]["n_slides"], config["demo"]["seed"])
#: Encoders of this run (features.encoder: one or a list); each has its features and models.
ENCODERS = config_encoders(config)
FOLDS = list(range(config["splits"]["folds"]))
check_settings()
#: Every slide of the input, by id (input functions); SLIDES: those this run processes.
SLIDE_FILES = apply_per_slide(load_slides())
#: µm/px from the metadata of each slide without an override (None: none there); a slide
#: missing here has an override or could not be read.
METADATA_MPP = read_metadata_mpps(SLIDE_FILES) if SLIDE_FILES and not PROBLEMS else {}
SLIDES = tileable(SLIDE_FILES, level0_mpps(SLIDE_FILES, METADATA_MPP))
#: Slides of the input this run leaves out (tiling.target_mpp finer than their level 0).
LEFT_OUT = sorted(set(SLIDE_FILES) - set(SLIDES))
#: Feature extraction jobs: one per slide, or batches of slides (features.slides_per_job).
SLIDES_PER_JOB = config["features"]["slides_per_job"]
BATCHES = {
    f"b{start // SLIDES_PER_JOB:04d}": sorted(SLIDES)[start : start + SLIDES_PER_JOB]
    for start in range(0, len(SLIDES), SLIDES_PER_JOB)
}
SLIDE_BATCH = {slide: batch for batch, slides in BATCHES.items() for slide in slides}
TRAIN_SLIDES = check_cohort()
if REGISTRIES_STARTED is not None:
    check_registries(finish_registries(*REGISTRIES_STARTED))
stop_on_problems()


wildcard_constraints:
    slide=SLIDE_ID_PATTERN,
    encoder="[A-Za-z0-9_]+",
    model=RUN_NAME_PATTERN,
    fold="[0-9]+",
    batch="b[0-9]+",


def slide_path_of(slide):
    return str(SLIDE_FILES[slide].path)


def slide_path(wildcards):
    return slide_path_of(wildcards.slide)


def slide_kwargs_of(slide):
    """Keyword arguments of extractors.wsi.reader.Slide for one slide.

    slides.mpp_default goes only to the slides whose metadata has no MPP, so setting it re-runs
    those slides alone; an override (slide sheet or slides.per_slide) goes to its slide only.
    """
    lacks_mpp = slide in METADATA_MPP and METADATA_MPP[slide] is None
    return {
        "slide_id": slide,
        "mpp_override": SLIDE_FILES[slide].mpp,
        "mpp_default": config["slides"]["mpp_default"] if lacks_mpp else None,
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


def feature_outputs():
    """Per-slide outputs up to features and region grids (target rule ``features_only``)."""
    per_slide = [
        "results/coords/{slide}_qc.jpg",
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
        encoder=ENCODERS,
        region_size=config["grids"]["region_size"],
    )
    if DEMO:
        outputs.append("resources/demo/cohort.csv")
    return outputs


def training_outputs():
    """Trained and evaluated model runs, their metrics table and provenance (``train_only``)."""
    if not TRAIN_SLIDES:
        return []
    return ["results/eval/summary.tsv", "results/provenance.tsv"]


def report_outputs():
    """What the report shows: QC table, plots, heatmaps, top patches (``report_only``)."""
    outputs = [] if OWN_FEATURES else ["results/qc/summary.tsv"]
    if TRAIN_SLIDES:
        outputs.append("results/plots/summary.png")
        outputs += expand(
            "results/plots/{model}/{encoder}", model=config["models"], encoder=ENCODERS
        )
        if not OWN_FEATURES:  # heatmaps are drawn on the slides' thumbnails
            results = ["results/heatmaps/{model}/{encoder}"]
            if config["plots"]["top_patches"]:
                results.append("results/top_patches/{model}/{encoder}")
            outputs += expand(results, model=config["models"], encoder=ENCODERS)
    return outputs


def slide_stage_memory(wildcards, attempt):
    """Memory of segmentation and tiling from the slide's dimensions; more on each retry."""
    return attempt * slide_stage_mem_mb(SLIDES[wildcards.slide].path)

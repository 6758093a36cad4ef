import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

from extractors.io import SLIDE_ID_PATTERN
from extractors.stain import FEATURE_SET_PATTERN, NO_STAIN_NORM, split_feature_set
from extractors.wsi.resources import slide_stage_mem_mb
from querent.engine.experiment import features_folder
from querent.engine.runs import RUN_NAME_PATTERN
from querent.pipeline import housekeeping, registries
from querent.pipeline.feature_files import feature_file_problems
from querent.pipeline.plan import (
    NO_COHORT_SHEET,
    CohortInputs,
    Findings,
    check_registries,
    plan_workflow,
)
from querent.pipeline.storage import bucket_lister, is_bucket_url, storage_problems
from querent.schemas.validation import check_config
from querent.schemas import COHORT_SCHEMA, CONFIG_SCHEMA

# Planning runs while Snakemake builds the DAG, before any job; its logic is the package
# querent.pipeline (unit-tested there). Nothing here imports torch: what planning needs of the
# encoder and model registries is read by a subprocess and kept in .snakemake/querent/.

# Every problem at once: the schema's (its defaults stand in for the rejected values, so the
# checks after it read the rest) and the plan's, in one message.
FINDINGS = Findings()
FINDINGS.problems, PLANNABLE = check_config(config, yaml.safe_load(CONFIG_SCHEMA.read_text()))
if not PLANNABLE:
    raise WorkflowError(FINDINGS.message())

#: This process plans the run (jobs that parse this file again on a cluster node skip the
#: checks the planner did: registries, locks, GPUs).
PLANNER = workflow.is_main_process
#: Files this workflow keeps between runs (registry catalogue, slide metadata, lock owner).
STATE = Path(".snakemake/querent")
#: Where the demo rules write, and the folder extraction writes (features.dir replaces it).
DEMO_SLIDE = "resources/demo/slides/{slide}.svs"
DEMO_SHEET = "resources/demo/cohort.csv"
EXTRACTED = "results/features/{encoder}"
#: Results go to a bucket (--default-storage-provider s3, docs/storage.md); the user's own files
#: (slides, sheets) stay where they are: own_file() keeps them out of the bucket.
RESULTS_IN_BUCKET = workflow.storage_settings.default_storage_provider is not None


def note(message):
    """One line for the person at the terminal, while the DAG is built (None: nothing)."""
    if message:
        print(f"querent: {message}", file=sys.stderr, flush=True)


if PLANNER:
    REGISTRIES = registries.start(STATE / "registries.json", config["models"])
    note(housekeeping.settle_lock(Path(".snakemake/locks"), STATE / "lock_owner.json"))
    if workflow.global_resources.get("_nodes").value is None:  # cluster runs: the scheduler's
        gpus, message = housekeeping.gpu_job_limit(workflow.global_resources.get("gpu").value)
        if gpus:
            workflow.register_resource("gpu", gpus)
        note(message)

PLAN = plan_workflow(
    config,
    demo_slides=DEMO_SLIDE,
    where=CohortInputs(DEMO_SHEET, EXTRACTED, yaml.safe_load(COHORT_SCHEMA.read_text())),
    mpp_cache=STATE / "slide_mpp.json",
    findings=FINDINGS,
    list_bucket=bucket_lister(storage),  # slides.dir: s3://..., listed with the plugin's client
)
FINDINGS.problems += storage_problems(config, RESULTS_IN_BUCKET)
if PLANNER:
    try:
        found = registries.finish(REGISTRIES, STATE / "registries.json")
    except registries.RegistryError as err:
        raise WorkflowError(str(err)) from None
    check_registries(config, PLAN.inputs, PLAN.encoders, found, FINDINGS)
    FINDINGS.problems += feature_file_problems(
        PLAN, config, EXTRACTED, STATE / "feature_files.json"
    )
for message in FINDINGS.notes + housekeeping.unseeded_runs():
    note(message)
if FINDINGS.problems:
    raise WorkflowError(FINDINGS.message())

DEMO, OWN_FEATURES = PLAN.inputs.demo, PLAN.inputs.own_features
#: Cores of a training or evaluation job. The demo's bags (150-200 patches) train fastest on
#: one thread each, so two folds run side by side on 2 cores (querent/engine/threads.py).
MIL_THREADS = 1 if DEMO else 2
ENCODERS = PLAN.encoders
FOLDS = list(range(config["splits"]["folds"]))
#: Every fold is trained once per seed; plots, heatmaps and exports show the first seed's.
SEEDS = list(config["training"]["seeds"])
#: Every slide of the input, by id; SLIDES: those this run processes; LEFT_OUT: the others.
SLIDE_FILES, SLIDES, LEFT_OUT = PLAN.slide_files, PLAN.slides, PLAN.left_out
#: Feature extraction jobs: one per slide, or batches of slides (features.slides_per_job).
SLIDES_PER_JOB = config["features"]["slides_per_job"]
BATCHES, SLIDE_BATCH = PLAN.batches, PLAN.slide_batch
TRAIN_SLIDES = PLAN.train_slides


wildcard_constraints:
    slide=SLIDE_ID_PATTERN,
    encoder=FEATURE_SET_PATTERN,
    model=RUN_NAME_PATTERN,
    fold="[0-9]+",
    seed="[0-9]+",
    batch="b[0-9]+",


# --- input functions and params -----------------------------------------------------------


def own_file(path):
    """A file of the user's, which no rule makes: read where it is, never from the bucket."""
    return local(str(path))


def cohort_sheet():
    """The cohort sheet: cohort.sheet, else the demo's (with results in a bucket: the copy that
    a job fetches, whose path the jobs' params give)."""
    if config["cohort"]["sheet"]:
        return own_file(config["cohort"]["sheet"])
    if not RESULTS_IN_BUCKET:
        return DEMO_SHEET
    settings = workflow.storage_settings
    in_bucket = getattr(storage, settings.default_storage_provider)
    return in_bucket(f"{settings.default_storage_prefix.rstrip('/')}/{DEMO_SHEET}")


def cohort_params():
    """The cohort section, its sheet resolved (the demo's when empty): a param of MIL jobs."""
    return {**config["cohort"], "sheet": str(cohort_sheet())}


def split_file_input():
    """The user's split file as an input, so editing it re-runs the splits."""
    return [own_file(config["splits"]["file"])] if config["splits"]["file"] else []


def train_features(wildcards):
    """The job encoder's feature files of every slide that trains or evaluates."""
    folder = features_folder(config, wildcards.encoder, EXTRACTED)
    files = [str(folder / f"{slide}.h5") for slide in TRAIN_SLIDES]
    return [own_file(path) for path in files] if OWN_FEATURES else files


def training_of_seed(wildcards):
    """The training section for one seed: adding a seed leaves the others' jobs as they are."""
    # keys sorted: Snakemake compares params as written, and a config file may order them
    return dict(sorted({**config["training"], "seeds": [int(wildcards.seed)]}.items()))


def encoder_checkpoint(wildcards):
    """The local weight file of the job's encoder ("" for the Hugging Face cache or hub)."""
    weights = config["features"]["checkpoint"]
    encoder, _ = split_feature_set(wildcards.encoder)
    return weights.get(encoder, "") if isinstance(weights, dict) else weights


def stain_target(wildcards):
    """The stain reference image of a normalised feature set, as an input ([]: none or built-in)."""
    _, method = split_feature_set(wildcards.encoder)
    target = config["features"]["stain_target"]
    return [own_file(target)] if target and method != NO_STAIN_NORM else []


def slide_path_of(slide):
    """The slide as a job input: a bucket's object (fetched to a local file before the job
    starts), a file of the user's, or the demo's (a rule's output)."""
    path = SLIDE_FILES[slide].path
    if is_bucket_url(path):
        return storage.s3(path)
    return str(path) if DEMO else own_file(path)


def slide_path(wildcards):
    return slide_path_of(wildcards.slide)


def slide_kwargs_of(slide):
    return PLAN.slide_kwargs(config, slide)


def slide_kwargs(wildcards):
    return PLAN.slide_kwargs(config, wildcards.slide)


def trained_slides():
    """Slide files of the slides that train (the top-patch mosaics read them); none for
    features.dir, whose slides the workflow never sees."""
    return [slide_path_of(slide) for slide in TRAIN_SLIDES if slide in SLIDES]


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
    return PLAN.demo_cohort.set_index("slide_id").loc[wildcards.slide, "label"]


def slide_stage_memory(wildcards, attempt):
    """Memory of segmentation and tiling from the slide's dimensions; more on each retry."""
    return attempt * slide_stage_mem_mb(SLIDES[wildcards.slide].path)

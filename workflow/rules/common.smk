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

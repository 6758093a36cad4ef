# Input functions and params of the rules, from the plan of common.smk.


def own_file(path):
    """A file of the user's (no rule makes it), read where it is, never from the bucket."""
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


def cohort_params(model=None):
    """The cohort section, its sheet resolved (the demo's when empty): a param of MIL jobs.

    ``cohort.covariates`` goes only to the jobs of a ``model`` run that reads them, so changing
    it re-runs those alone (not the splits, not a run with ``covariates: false``).
    """
    section = {**config["cohort"], "sheet": str(cohort_sheet())}
    if model is None or config["models"][model].get("covariates", True) is False:
        section["covariates"] = []
    return section


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

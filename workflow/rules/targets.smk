# What the target rules build: features_only, train_only, report_only (`all` builds all three).


def feature_outputs():
    """Per-slide outputs up to features and region grids (target rule ``features_only``)."""
    per_slide = ["results/coords/{slide}_qc.jpg", "results/features/{encoder}/{slide}.h5"]
    if config["grids"]["region_size"]:
        per_slide.append("results/grids/r{region_size}/{slide}.h5")
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
    return outputs + ([DEMO_SHEET] if DEMO else [])


def training_outputs():
    """Trained and evaluated model runs, their metrics table and provenance (``train_only``)."""
    if not TRAIN_SLIDES:
        return []
    return ["results/eval/summary.tsv", "results/provenance.tsv"]


def report_outputs():
    """What the report shows: QC table, plots, heatmaps, top patches (``report_only``)."""
    # The QC table reads the slide stages' files and logs in the working directory: not with
    # results in a bucket (docs/storage.md).
    outputs = [] if OWN_FEATURES or RESULTS_IN_BUCKET else ["results/qc/summary.tsv"]
    if not TRAIN_SLIDES:
        return outputs
    runs = {"model": config["models"], "encoder": ENCODERS}
    outputs += ["results/plots/summary.png", *expand("results/plots/{model}/{encoder}", **runs)]
    if not OWN_FEATURES:  # heatmaps are drawn on the slides' thumbnails
        outputs += expand("results/heatmaps/{model}/{encoder}", **runs)
        if config["plots"]["top_patches"]:
            outputs += expand("results/top_patches/{model}/{encoder}", **runs)
    return outputs

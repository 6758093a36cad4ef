# Per-slide QC table. The same package call runs from the Snakefile's onsuccess and onerror
# handlers, so a run with failed slides (whose jobs keep this rule from running) still ends
# with a table (QC_LAST_RUN, which no rule makes) and a short summary.

QC_TABLE = "results/qc/summary.tsv"
QC_LAST_RUN = "results/qc/last_run.tsv"
#: Arguments of extractors.qc.qc_table: every slide of the input (none with results in a bucket:
#: the table reads the files and logs here); where the slide stages write
#: (path patterns with {slide} and {encoder}, from their rules); the slides that train (None: nothing trains,
#: the run stops at features); the slides this run leaves out, with the reason.
QC_SETTINGS = {
    "slides": [] if RESULTS_IN_BUCKET else sorted(SLIDE_FILES),
    "layout": {
        **{
            name: str(pattern)
            for name, pattern in {
                "tissue": rules.segment_tissue.output.geojson,
                "tissue_log": rules.segment_tissue.log[0],
                "coords": rules.tile_slide.output.coords,
                "coords_log": rules.tile_slide.log[0],
                "features": rules.extract_features.output[0],
                "features_log": rules.extract_features.log[0],
            }.items()
        },
        "encoders": tuple(ENCODERS),
    },
    "trained": TRAIN_SLIDES or None,
    "left_out": {
        slide: (
            f"left out of this run: tiling.target_mpp {config['tiling']['target_mpp']} is finer "
            "than its level 0 (see the note at the start of the run)"
        )
        for slide in sorted(set(SLIDE_FILES) - set(SLIDES))
    },
}


rule qc_summary:
    input:
        tissue=expand(QC_SETTINGS["layout"]["tissue"], slide=sorted(SLIDES)),
        coords=expand(QC_SETTINGS["layout"]["coords"], slide=sorted(SLIDES)),
        features=expand(QC_SETTINGS["layout"]["features"], slide=sorted(SLIDES), encoder=ENCODERS),
    output:
        report(
            QC_TABLE,
            caption="../report/qc.rst",
            category="Tissue and patches",
            labels={"slide": "all slides (QC table)"},
        ),
    log:
        "logs/qc/summary.log",
    threads: 1
    params:
        qc=QC_SETTINGS,
    script:
        "../scripts/qc_summary.py"

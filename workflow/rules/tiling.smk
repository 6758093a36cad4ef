rule segment_tissue:
    input:
        slide=slide_path,
        # the slide's QuPath GeoJSON (slides.annotations): editing it re-runs this slide alone
        annotations=lambda wildcards: PLAN.annotation_input(wildcards.slide),
    output:
        geojson="results/tissue/{slide}.geojson",
        qc="results/tissue/{slide}_qc.jpg",
        thumbnail="results/thumbnails/{slide}.jpg",
        scale="results/thumbnails/{slide}.json",
    log:
        "logs/tissue/{slide}.log",
    benchmark:
        "logs/tissue/{slide}.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=slide_stage_memory,
        runtime=lambda wildcards, attempt: 20 * attempt,
    params:
        slide=slide_kwargs,
        tissue=tissue_settings,
        annotations=lambda wildcards: PLAN.annotation_params(config, wildcards.slide),
    script:
        "../scripts/segment_tissue.py"


rule tile_slide:
    input:
        slide=slide_path,
        tissue="results/tissue/{slide}.geojson",
    output:
        coords="results/coords/{slide}.h5",
        qc="results/coords/{slide}_qc.jpg",
        preview=report(
            "results/coords/{slide}_qc_preview.jpg",
            caption="../report/tiling_qc.rst",
            category="Tissue and patches",
            labels={"slide": "{slide}"},
        ),
    log:
        "logs/coords/{slide}.log",
    benchmark:
        "logs/coords/{slide}.benchmark.tsv"
    threads: 1
    resources:
        mem_mb=slide_stage_memory,
        runtime=lambda wildcards, attempt: 20 * attempt,
    params:
        slide=slide_kwargs,
        tiling=config["tiling"],
    script:
        "../scripts/tile_slide.py"

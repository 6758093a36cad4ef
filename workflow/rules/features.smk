rule extract_features:
    input:
        slide=slide_path,
        coords="results/coords/{slide}.h5",
    output:
        "results/features/{encoder}/{slide}.h5",
    params:
        slide=slide_kwargs,
        checkpoint=config["features"]["checkpoint"],
        skip_errors=config["features"]["on_decode_error"] == "skip",
        allow_mpp_mismatch=config["features"]["allow_mpp_mismatch"],
    log:
        "logs/features/{encoder}/{slide}.log",
    benchmark:
        "logs/features/{encoder}/{slide}.benchmark.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=lambda wildcards, attempt: 120 * attempt,
        gpu=1,
    conda:
        "../../environment.yml"
    script:
        "../scripts/extract_features.py"


rule export_stamp:
    input:
        "results/features/{encoder}/{slide}.h5",
    output:
        "results/stamp/{encoder}/{slide}.h5",
    log:
        "logs/stamp/{encoder}/{slide}.log",
    threads: 1
    conda:
        "../../environment.yml"
    script:
        "../scripts/export_stamp.py"


rule export_clam:
    input:
        "results/features/{encoder}/{slide}.h5",
    output:
        pt="results/clam/{encoder}/pt_files/{slide}.pt",
        h5="results/clam/{encoder}/h5_files/{slide}.h5",
    log:
        "logs/clam/{encoder}/{slide}.log",
    threads: 1
    conda:
        "../../environment.yml"
    script:
        "../scripts/export_clam.py"


rule export_clam_patches:
    input:
        "results/coords/{slide}.h5",
    output:
        "results/clam/patches/{slide}.h5",
    log:
        "logs/clam/patches/{slide}.log",
    threads: 1
    conda:
        "../../environment.yml"
    script:
        "../scripts/export_clam_patches.py"

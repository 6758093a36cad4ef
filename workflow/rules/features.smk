# One job per slide (features.slides_per_job: 1), or on GPU clusters one job per batch of
# slides, so the encoder loads once per batch: the batch job stages every slide's features and
# records each outcome, and a per-slide job (extract_features in both cases, so everything
# downstream is the same) links the slide's staged file into place or fails with its reason.
# {encoder} is a feature set: an encoder's name, with -macenko or -reinhard when the patches are
# stain-normalised first (features.stain_norm); a reference image is an input of those jobs.

if SLIDES_PER_JOB == 1:

    rule extract_features:
        input:
            slide=slide_path,
            coords="results/coords/{slide}.h5",
            stain_target=stain_target,
        output:
            "results/features/{encoder}/{slide}.h5",
        log:
            "logs/features/{encoder}/{slide}.log",
        benchmark:
            "logs/features/{encoder}/{slide}.benchmark.tsv"
        threads: 2
        resources:
            mem_mb=8000,
            runtime=lambda wildcards, attempt: 120 * attempt,
            gpu=1,
        params:
            slide=slide_kwargs,
            checkpoint=encoder_checkpoint,
            skip_errors=config["features"]["on_decode_error"] == "skip",
            allow_mpp_mismatch=config["features"]["allow_mpp_mismatch"],
        script:
            "../scripts/extract_features.py"

else:

    rule extract_feature_batch:
        input:
            slides=lambda wildcards: [slide_path_of(s) for s in BATCHES[wildcards.batch]],
            coords=lambda wildcards: expand(
                "results/coords/{slide}.h5", slide=BATCHES[wildcards.batch]
            ),
            stain_target=stain_target,
        output:
            manifest="results/features/{encoder}/batches/{batch}.tsv",
            # kept when the job reruns, so slides staged before a crash are not encoded again
            staged=update(directory("results/features/{encoder}/staged/{batch}")),
        log:
            "logs/features/{encoder}/{batch}.log",
        benchmark:
            "logs/features/{encoder}/{batch}.benchmark.tsv"
        threads: 2
        resources:
            mem_mb=8000,
            runtime=lambda wildcards, attempt: 60 * attempt * len(BATCHES[wildcards.batch]),
            gpu=1,
        params:
            slides=lambda wildcards: {s: slide_kwargs_of(s) for s in BATCHES[wildcards.batch]},
            checkpoint=encoder_checkpoint,
            skip_errors=config["features"]["on_decode_error"] == "skip",
            allow_mpp_mismatch=config["features"]["allow_mpp_mismatch"],
        script:
            "../scripts/extract_feature_batch.py"

    rule extract_features:
        input:
            manifest=lambda wildcards: f"results/features/{wildcards.encoder}/batches/"
            f"{SLIDE_BATCH[wildcards.slide]}.tsv",
            staged=lambda wildcards: f"results/features/{wildcards.encoder}/staged/"
            f"{SLIDE_BATCH[wildcards.slide]}",
        output:
            "results/features/{encoder}/{slide}.h5",
        log:
            "logs/features/{encoder}/{slide}.log",
        threads: 1
        script:
            "../scripts/publish_features.py"

    localrules:
        extract_features,


rule export_stamp:
    input:
        "results/features/{encoder}/{slide}.h5",
    output:
        "results/stamp/{encoder}/{slide}.h5",
    log:
        "logs/stamp/{encoder}/{slide}.log",
    threads: 1
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
    script:
        "../scripts/export_clam_patches.py"

rule make_splits:
    input:
        sheet=cohort_sheet(),
        splits_file=split_file_input(),
    output:
        "results/splits/splits.csv",
    log:
        "logs/splits/splits.log",
    threads: 1
    params:
        cohort=cohort_params(),
        splits=config["splits"],
        slides=TRAIN_SLIDES,
    script:
        "../scripts/make_splits.py"


rule train_model:
    input:
        sheet=cohort_sheet(),
        splits="results/splits/splits.csv",
        features=train_features,
    output:
        model="results/models/{model}/{encoder}/seed_{seed}/fold_{fold}/model.pt",
        history="results/models/{model}/{encoder}/seed_{seed}/fold_{fold}/history.csv",
    log:
        "logs/models/{model}/{encoder}/seed_{seed}/fold_{fold}.log",
    benchmark:
        "logs/models/{model}/{encoder}/seed_{seed}/fold_{fold}.benchmark.tsv"
    threads: MIL_THREADS
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=1,
    params:
        cohort=lambda wildcards: cohort_params(wildcards.model),
        splits=config["splits"],
        run=lambda wildcards: config["models"][wildcards.model],
        training=training_of_seed,
    script:
        "../scripts/train_model.py"


rule evaluate_model:
    input:
        sheet=cohort_sheet(),
        splits="results/splits/splits.csv",
        model="results/models/{model}/{encoder}/seed_{seed}/fold_{fold}/model.pt",
        features=train_features,
    output:
        predictions="results/eval/{model}/{encoder}/seed_{seed}/fold_{fold}/predictions.csv",
        metrics="results/eval/{model}/{encoder}/seed_{seed}/fold_{fold}/metrics.json",
        attention="results/eval/{model}/{encoder}/seed_{seed}/fold_{fold}/attention.h5",
    log:
        "logs/eval/{model}/{encoder}/seed_{seed}/fold_{fold}.log",
    benchmark:
        "logs/eval/{model}/{encoder}/seed_{seed}/fold_{fold}.benchmark.tsv"
    threads: MIL_THREADS
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
    params:
        cohort=lambda wildcards: cohort_params(wildcards.model),
        splits=config["splits"],
    script:
        "../scripts/evaluate_model.py"


rule aggregate_metrics:
    input:
        predictions=expand(
            "results/eval/{model}/{encoder}/seed_{seed}/fold_{fold}/predictions.csv",
            model=list(config["models"]),
            encoder=ENCODERS,
            seed=SEEDS,
            fold=FOLDS,
        ),
    output:
        summary="results/eval/summary.tsv",
        comparisons="results/eval/comparisons.tsv",
    log:
        "logs/eval/summary.log",
    threads: 1
    params:
        runs=[(model, encoder) for model in config["models"] for encoder in ENCODERS],
        seeds=SEEDS,
        folds=FOLDS,
    script:
        "../scripts/aggregate_metrics.py"

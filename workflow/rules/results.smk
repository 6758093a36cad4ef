rule plot_run:
    input:
        predictions=expand(
            "results/eval/{{model}}/{{encoder}}/seed_{seed}/fold_{fold}/predictions.csv",
            seed=SEEDS[0],
            fold=FOLDS,
        ),
        histories=expand(
            "results/models/{{model}}/{{encoder}}/seed_{seed}/fold_{fold}/history.csv",
            seed=SEEDS[0],
            fold=FOLDS,
        ),
    output:
        report(
            directory("results/plots/{model}/{encoder}"),
            patterns=["{name}.png"],
            caption="../report/run_plots.rst",
            category="Results",
            subcategory="{model} ({encoder})",
            labels={"figure": "{name}"},
        ),
    log:
        "logs/plots/{model}/{encoder}.log",
    threads: 1
    params:
        plots=config["plots"],
    script:
        "../scripts/plot_run.py"


rule plot_summary:
    input:
        summary="results/eval/summary.tsv",
        comparisons="results/eval/comparisons.tsv",
    output:
        table=report(
            "results/plots/summary.html",
            caption="../report/summary.rst",
            category="Results",
            subcategory="Summary",
            labels={"figure": "metrics table"},
        ),
        figure=report(
            "results/plots/summary.png",
            caption="../report/summary_plot.rst",
            category="Results",
            subcategory="Summary",
            labels={"figure": "main metric"},
        ),
    log:
        "logs/plots/summary.log",
    threads: 1
    params:
        plots=config["plots"],
    script:
        "../scripts/plot_summary.py"


rule draw_heatmaps:
    input:
        predictions=expand(
            "results/eval/{{model}}/{{encoder}}/seed_{seed}/fold_{fold}/predictions.csv",
            seed=SEEDS[0],
            fold=FOLDS,
        ),
        attention=expand(
            "results/eval/{{model}}/{{encoder}}/seed_{seed}/fold_{fold}/attention.h5",
            seed=SEEDS[0],
            fold=FOLDS,
        ),
        thumbnails=expand("results/thumbnails/{slide}.jpg", slide=TRAIN_SLIDES),
        tissue=expand("results/tissue/{slide}.geojson", slide=TRAIN_SLIDES),
        features=train_features,
    output:
        report(
            directory("results/heatmaps/{model}/{encoder}"),
            patterns=["{name}_preview.jpg"],
            caption="../report/heatmaps.rst",
            category="Results",
            subcategory="{model} ({encoder})",
            labels={"figure": "{name}"},
        ),
    log:
        "logs/heatmaps/{model}/{encoder}.log",
    threads: 1
    params:
        plots=config["plots"],
    script:
        "../scripts/draw_heatmaps.py"


rule top_patches:
    input:
        heatmaps="results/heatmaps/{model}/{encoder}",
        slides=trained_slides(),
    output:
        report(
            directory("results/top_patches/{model}/{encoder}"),
            patterns=["{name}.jpg"],
            caption="../report/top_patches.rst",
            category="Results",
            subcategory="{model} ({encoder})",
            labels={"figure": "{name}"},
        ),
    log:
        "logs/top_patches/{model}/{encoder}.log",
    threads: 1
    params:
        plots=config["plots"],
        slides=trained_slide_kwargs(),
    script:
        "../scripts/top_patches.py"


rule record_provenance:
    input:
        models=expand(
            "results/models/{model}/{encoder}/seed_{seed}/fold_{fold}/model.pt",
            model=list(config["models"]),
            encoder=ENCODERS,
            seed=SEEDS,
            fold=FOLDS,
        ),
        sheet=cohort_sheet(),
    output:
        report(
            "results/provenance.tsv",
            caption="../report/provenance.rst",
            category="Provenance",
            labels={"table": "config, cohort sheet, versions, revision"},
        ),
    log:
        "logs/provenance.log",
    threads: 1
    script:
        "../scripts/record_provenance.py"

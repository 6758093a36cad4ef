rule make_demo_slide:
    output:
        "resources/demo/slides/{slide}.svs",
    log:
        "logs/demo/{slide}.log",
    threads: 1
    params:
        label=demo_label,
        seed=config["demo"]["seed"],
    script:
        "../scripts/make_demo_slide.py"


rule make_demo_cohort:
    output:
        "resources/demo/cohort.csv",
    log:
        "logs/demo/cohort.log",
    threads: 1
    params:
        n_slides=config["demo"]["n_slides"],
        seed=config["demo"]["seed"],
    script:
        "../scripts/make_demo_cohort.py"

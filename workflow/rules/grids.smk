rule build_region_grid:
    input:
        "results/coords/{slide}.h5",
    output:
        "results/grids/r{region_size}/{slide}.h5",
    wildcard_constraints:
        region_size="[1-9][0-9]*",
    log:
        "logs/grids/r{region_size}/{slide}.log",
    threads: 1
    conda:
        "../../environment.yml"
    script:
        "../scripts/build_region_grid.py"

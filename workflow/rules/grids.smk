rule build_region_grid:
    input:
        "results/coords/{slide}.h5",
    output:
        "results/grids/r{region_size}/{slide}.h5",
    log:
        "logs/grids/r{region_size}/{slide}.log",
    wildcard_constraints:
        region_size="[1-9][0-9]*",
    threads: 1
    script:
        "../scripts/build_region_grid.py"

# The workflow lives in workflow/Snakefile. Snakemake takes the default target from the file it
# starts with, not from included ones, so it is named here.
include: "workflow/Snakefile"


rule default:
    default_target: True
    input:
        rules.all.input,

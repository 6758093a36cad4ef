"""Snakemake adapter: write one synthetic demo slide."""

from extractors.demo import write_demo_slide
from extractors.logs import log_to_file

log_to_file(snakemake.log[0])
write_demo_slide(
    snakemake.output[0],
    slide_id=snakemake.wildcards.slide,
    label=snakemake.params.label,
    seed=snakemake.params.seed,
)

"""Snakemake adapter: write the demo cohort sheet."""

from extractors.demo import demo_cohort
from extractors.io import atomic_path
from extractors.logs import log_to_file

log_to_file(snakemake.log[0])
with atomic_path(snakemake.output[0]) as tmp:
    demo_cohort(snakemake.params.n_slides, snakemake.params.seed).to_csv(tmp, index=False)

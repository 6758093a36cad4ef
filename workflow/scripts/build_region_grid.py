"""Snakemake adapter: write the region grid of one slide's coords."""

from extractors.logs import log_to_file
from querent.data.grid_files import write_slide_grid

log_to_file(snakemake.log[0])
write_slide_grid(snakemake.input[0], snakemake.output[0], int(snakemake.wildcards.region_size))

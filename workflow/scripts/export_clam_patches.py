"""Snakemake adapter: write CLAM's patches file (patch_size at patch_level) of one slide."""

from extractors.exports import export_clam_patches
from extractors.logs import log_to_file

log_to_file(snakemake.log[0])
export_clam_patches(snakemake.input[0], snakemake.output[0])

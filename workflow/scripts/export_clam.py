"""Snakemake adapter: write CLAM's pt_files and h5_files copies of one feature file."""

from extractors.exports import export_clam_features
from extractors.logs import log_to_file

log_to_file(snakemake.log[0])
export_clam_features(snakemake.input[0], snakemake.output.pt, snakemake.output.h5)

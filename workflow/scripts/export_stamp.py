"""Snakemake adapter: write a STAMP copy of one feature file."""

from extractors.exports import export_stamp
from extractors.logs import log_to_file

log_to_file(snakemake.log[0])
export_stamp(snakemake.input[0], snakemake.output[0])

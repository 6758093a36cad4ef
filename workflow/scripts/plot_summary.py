"""Snakemake adapter: the summary table (HTML) and bar chart of every model run."""

from extractors.logs import log_to_file
from querent.figures import draw_summary

log_to_file(snakemake.log[0])
draw_summary(snakemake.input[0], snakemake.output.figure, snakemake.output.table)

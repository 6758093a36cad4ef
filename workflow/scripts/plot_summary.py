"""Snakemake adapter: the summary table (HTML, with the paired comparisons) and bar chart."""

from extractors.logs import log_to_file
from querent.figures import draw_summary

log_to_file(snakemake.log[0])
draw_summary(
    snakemake.input.summary,
    snakemake.output.figure,
    snakemake.output.table,
    snakemake.input.comparisons,
)

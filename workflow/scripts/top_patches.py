"""Snakemake adapter: mosaics of the highest-attention patches, read from the slides."""

from extractors.logs import log_to_file
from querent.figures import PlotSettings, draw_top_patches

log_to_file(snakemake.log[0])
slides = dict(zip(snakemake.params.slides, snakemake.input.slides, strict=True))
draw_top_patches(
    snakemake.input.heatmaps,
    slides,
    snakemake.params.slides,
    snakemake.output[0],
    PlotSettings(**snakemake.params.plots).top_patches,
)

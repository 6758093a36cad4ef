"""Snakemake adapter: ROC / confusion or Kaplan-Meier, and training curves of one model run."""

from pathlib import Path

from extractors.logs import log_to_file
from querent.figures import PlotSettings, draw_run_plots

log_to_file(snakemake.log[0])
draw_run_plots(
    [Path(p).parent for p in snakemake.input.predictions],
    snakemake.input.histories,
    snakemake.output[0],
    PlotSettings(**snakemake.params.plots),
)

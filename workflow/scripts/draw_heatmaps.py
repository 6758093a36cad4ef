"""Snakemake adapter: attention and region heatmaps and QuPath overlays of one model run."""

from pathlib import Path

from extractors.logs import log_to_file
from querent.figures import PlotSettings, draw_run_heatmaps

log_to_file(snakemake.log[0])
draw_run_heatmaps(
    [Path(p).parent for p in snakemake.input.predictions],
    {Path(p).stem: Path(p) for p in snakemake.input.thumbnails},
    {Path(p).stem: Path(p) for p in snakemake.input.tissue},
    snakemake.output[0],
    PlotSettings(**snakemake.params.plots),
)

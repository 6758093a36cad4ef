"""Snakemake adapter: tile one slide's tissue into patch coordinates."""

from extractors.logs import log_to_file
from extractors.wsi import tiling, tissue
from extractors.wsi.reader import Slide

log_to_file(snakemake.log[0])
params = tiling.TilingParams(**snakemake.params.tiling)
with Slide(snakemake.input.slide, **snakemake.params.slide) as slide:
    polygons = tissue.read_geojson(snakemake.input.tissue)
    tiling.tile_slide(
        slide,
        polygons,
        params,
        snakemake.output.coords,
        snakemake.output.qc,
        preview_path=snakemake.output.preview,
    )

"""Snakemake adapter: tile one slide's tissue into patch coordinates."""

from extractors.logs import log_to_file
from extractors.wsi import tiling, tissue
from extractors.wsi.reader import Slide

log_to_file(snakemake.log[0])
params = tiling.TilingParams(**snakemake.params.tiling)
with Slide(
    snakemake.input.slide,
    slide_id=snakemake.wildcards.slide,
    mpp_override=snakemake.params.mpp,
    mpp_default=snakemake.params.mpp_default,
) as slide:
    polygons = tissue.read_geojson(snakemake.input.tissue)
    tiling.tile_slide(slide, polygons, params, snakemake.output.coords, snakemake.output.qc)

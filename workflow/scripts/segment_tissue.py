"""Snakemake adapter: segment one slide's tissue."""

from extractors.logs import log_to_file
from extractors.wsi import tissue
from extractors.wsi.reader import Slide

log_to_file(snakemake.log[0])
params = tissue.tissue_params(**snakemake.params.tissue)
with Slide(snakemake.input.slide, **snakemake.params.slide) as slide:
    tissue.segment_slide(
        slide, params, snakemake.output.geojson, snakemake.output.qc, snakemake.output.thumbnail
    )

"""Snakemake adapter: segment one slide's tissue."""

from extractors.logs import log_to_file
from extractors.wsi import tissue
from extractors.wsi.reader import Slide

log_to_file(snakemake.log[0])
params = tissue.tissue_params(**snakemake.params.tissue)
with Slide(
    snakemake.input.slide,
    slide_id=snakemake.wildcards.slide,
    mpp_override=snakemake.params.mpp,
    mpp_default=snakemake.params.mpp_default,
) as slide:
    tissue.segment_slide(slide, params, snakemake.output.geojson, snakemake.output.qc)

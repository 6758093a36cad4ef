"""Snakemake adapter: segment one slide's tissue (restricted or replaced by its annotations)."""

from extractors.logs import log_to_file
from extractors.wsi import tissue
from extractors.wsi.annotations import Annotations, AnnotationSettings
from extractors.wsi.reader import Slide

log_to_file(snakemake.log[0])
params = tissue.tissue_params(**snakemake.params.tissue)
annotations = None
if snakemake.input.annotations:
    settings = AnnotationSettings.from_config(snakemake.params.annotations)
    annotations = Annotations.load(snakemake.input.annotations[0], settings)
with Slide(snakemake.input.slide, **snakemake.params.slide) as slide:
    tissue.segment_slide(
        slide,
        params,
        snakemake.output.geojson,
        snakemake.output.qc,
        snakemake.output.thumbnail,
        annotations=annotations,
    )

"""Snakemake adapter: put one slide's features from its batch in place, or fail with its reason."""

from extractors.batch import publish_features
from extractors.logs import log_to_file

log_to_file(snakemake.log[0])
publish_features(snakemake.input.manifest, snakemake.wildcards.slide, snakemake.output[0])

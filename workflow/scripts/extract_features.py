"""Snakemake adapter: extract one slide's features (stain-normalised for {encoder}-{method})."""

import torch

from extractors.devices import pick_device
from extractors.encoders import create_encoder
from extractors.extract import ExtractionOptions, extract_slide
from extractors.logs import log_to_file
from extractors.stain import split_feature_set
from extractors.stain_norm import create_normaliser

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
name, method = split_feature_set(snakemake.wildcards.encoder)
encoder = create_encoder(name, checkpoint=snakemake.params.checkpoint or None).to(pick_device(None))
target = snakemake.input.stain_target
extract_slide(
    snakemake.input.slide,
    snakemake.input.coords,
    encoder,
    snakemake.output[0],
    slide_kwargs=snakemake.params.slide,
    options=ExtractionOptions(
        skip_errors=snakemake.params.skip_errors,
        allow_mpp_mismatch=snakemake.params.allow_mpp_mismatch,
    ),
    normaliser=create_normaliser(method, target[0] if target else None),
)

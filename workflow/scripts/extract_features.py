"""Snakemake adapter: extract one slide's patch features."""

import torch

from extractors.devices import pick_device
from extractors.encoders import create_encoder
from extractors.extract import ExtractionOptions, extract_slide
from extractors.logs import log_to_file

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
encoder = create_encoder(
    snakemake.wildcards.encoder, checkpoint=snakemake.params.checkpoint or None
).to(pick_device(None))
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
)

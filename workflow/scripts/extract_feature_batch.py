"""Snakemake adapter: extract a batch of slides with one encoder load; record each outcome."""

from pathlib import Path

import torch

from extractors.batch import BatchSlide, extract_batch
from extractors.devices import pick_device
from extractors.encoders import create_encoder
from extractors.extract import ExtractionOptions
from extractors.logs import log_to_file
from extractors.stain import split_feature_set
from extractors.stain_norm import create_normaliser

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
name, method = split_feature_set(snakemake.wildcards.encoder)
encoder = create_encoder(name, checkpoint=snakemake.params.checkpoint or None).to(pick_device(None))
target = snakemake.input.stain_target
staged = Path(snakemake.output.staged)
slides = [
    BatchSlide(slide_id, Path(slide), Path(coords), staged / f"{slide_id}.h5", kwargs)
    for (slide_id, kwargs), slide, coords in zip(
        snakemake.params.slides.items(), snakemake.input.slides, snakemake.input.coords, strict=True
    )
]
extract_batch(
    slides,
    encoder,
    snakemake.output.manifest,
    options=ExtractionOptions(
        skip_errors=snakemake.params.skip_errors,
        allow_mpp_mismatch=snakemake.params.allow_mpp_mismatch,
    ),
    normaliser=create_normaliser(method, target[0] if target else None),
    log=snakemake.log[0],
)

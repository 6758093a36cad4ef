"""Snakemake adapter: extract a batch of slides with one encoder load; record each outcome."""

from pathlib import Path

import torch

from extractors.batch import BatchSlide, extract_batch
from extractors.devices import pick_device
from extractors.encoders import create_encoder
from extractors.extract import ExtractionOptions
from extractors.logs import log_to_file

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
encoder = create_encoder(
    snakemake.wildcards.encoder, checkpoint=snakemake.params.checkpoint or None
).to(pick_device(None))
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
    log=snakemake.log[0],
)

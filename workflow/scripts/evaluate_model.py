"""Snakemake adapter: evaluate one fold's model on the fold's held-out slides."""

from pathlib import Path

import torch

from extractors.logs import log_to_file
from querent.engine.evaluate import evaluate_fold
from querent.engine.experiment import job_experiment
from querent.engine.threads import intra_op_threads

log_to_file(snakemake.log[0])
torch.set_num_threads(intra_op_threads(snakemake.threads))
experiment = job_experiment(
    snakemake.params.cohort,
    snakemake.params.splits,
    snakemake.input.features,
    encoder=snakemake.wildcards.encoder,
)
_, _, eval_ids = experiment.fold(snakemake.input.splits, int(snakemake.wildcards.fold))
evaluate_fold(
    snakemake.input.model,
    experiment.cohort,
    experiment.files,
    eval_ids,
    Path(snakemake.output.metrics).parent,
)

"""Snakemake adapter: train one model run on one fold (resumes a killed run)."""

from pathlib import Path

import torch

from extractors.logs import log_to_file
from querent.engine.experiment import load_experiment
from querent.engine.train import train_fold

log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
experiment = load_experiment(
    snakemake.config,
    snakemake.wildcards.encoder,
    available={Path(p).stem for p in snakemake.input.features},
)
fold = int(snakemake.wildcards.fold)
train_ids, val_ids, _ = experiment.fold(snakemake.input.splits, fold)
train_fold(
    experiment.runs[snakemake.wildcards.model],
    experiment.cohort,
    experiment.files,
    train_ids,
    val_ids,
    Path(snakemake.output.model).parent,
    encoder=snakemake.wildcards.encoder,
    fold=fold,
    config=snakemake.config,
)

"""Snakemake adapter: train one model run on one fold (resumes a killed run)."""

from pathlib import Path

from extractors.logs import log_to_file
from querent.engine.experiment import job_experiment
from querent.engine.runs import model_runs
from querent.engine.train import train_fold

# Snakemake deletes the job's log before every run; the fold's train.log keeps every attempt
log_to_file(snakemake.log[0], Path(snakemake.output.model).parent / "train.log")
params, wildcards = snakemake.params, snakemake.wildcards
experiment = job_experiment(
    params.cohort,
    params.splits,
    snakemake.input.features,
    encoder=wildcards.encoder,
    runs=model_runs({wildcards.model: params.run}, params.training),
)
run = experiment.runs[wildcards.model]  # params.training holds this job's seed only
fold = int(wildcards.fold)
train_ids, val_ids, _ = experiment.fold(snakemake.input.splits, fold)
train_fold(
    run,
    experiment.cohort,
    experiment.files,
    train_ids,
    val_ids,
    Path(snakemake.output.model).parent,
    encoder=wildcards.encoder,
    fold=fold,
    threads=snakemake.threads,
    # what this job was given, for the checkpoint's provenance
    config={
        "cohort": params.cohort,
        "splits": params.splits,
        "models": {wildcards.model: params.run},
        "training": params.training,
    },
)

"""Snakemake adapter: one summary row per model run, metrics over folds with bootstrap CIs."""

from pathlib import Path

from extractors.logs import log_to_file
from querent.engine.aggregate import aggregate, format_summary, write_summary

log_to_file(snakemake.log[0])
folds = snakemake.params.folds
runs = [
    (model, encoder, [Path(f"results/eval/{model}/{encoder}/fold_{k}") for k in folds])
    for model, encoder in snakemake.params.runs
]
table = aggregate(runs)
write_summary(table, snakemake.output[0])
print(format_summary(table))

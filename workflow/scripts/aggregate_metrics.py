"""Snakemake adapter: one summary row per model run, metrics over folds with bootstrap CIs."""

from pathlib import Path

from extractors.logs import log_to_file
from querent.engine.aggregate import aggregate, format_summary, write_summary

log_to_file(snakemake.log[0])
# the inputs are every run's folds in order: runs (model-major, then encoder), then folds
folds = len(snakemake.params.folds)
dirs = [Path(path).parent for path in snakemake.input.predictions]
runs = [
    (model, encoder, dirs[i * folds : (i + 1) * folds])
    for i, (model, encoder) in enumerate(snakemake.params.runs)
]
table = aggregate(runs)
write_summary(table, snakemake.output[0])
print(format_summary(table))

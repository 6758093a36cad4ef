"""Snakemake adapter: one summary row per model run (over folds and seeds), runs compared."""

from pathlib import Path

from extractors.logs import log_to_file
from querent.engine.aggregate import aggregate, format_summary, write_summary
from querent.engine.compare import format_comparisons

log_to_file(snakemake.log[0])
# the inputs are every run's folds in order: runs (model-major, then encoder), seeds, folds
seeds, folds = len(snakemake.params.seeds), len(snakemake.params.folds)
dirs = [Path(path).parent for path in snakemake.input.predictions]
runs = [
    (model, encoder, [dirs[(i * seeds + s) * folds :][:folds] for s in range(seeds)])
    for i, (model, encoder) in enumerate(snakemake.params.runs)
]
summary, comparisons = aggregate(runs)
write_summary(summary, snakemake.output.summary)
write_summary(comparisons, snakemake.output.comparisons)
print(format_summary(summary))
print(format_comparisons(comparisons))

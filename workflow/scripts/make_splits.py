"""Snakemake adapter: patient-level folds of the cohort (or the user's split file, checked)."""

from extractors.logs import log_to_file
from querent.data.splits import write_splits
from querent.engine.experiment import config_encoders, load_experiment, splits_table

log_to_file(snakemake.log[0])
# one set of folds for every encoder: the first one's feature folder only names the files
encoder = config_encoders(snakemake.config)[0]
experiment = load_experiment(snakemake.config, encoder, available=set(snakemake.params.slides))
write_splits(splits_table(experiment), snakemake.output[0])

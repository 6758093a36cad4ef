"""Snakemake adapter: patient-level folds of the cohort (or the user's split file, checked)."""

from extractors.logs import log_to_file
from querent.data.cohort import CohortSettings, read_cohort
from querent.data.splits import SplitSettings, split_cohort, write_splits

log_to_file(snakemake.log[0])
params = snakemake.params
# the slides that train, as planned (one set of folds for every encoder)
cohort = read_cohort(params.cohort["sheet"], CohortSettings(**params.cohort))
table = split_cohort(cohort.subset(params.slides), SplitSettings(**params.splits))
write_splits(table, snakemake.output[0])

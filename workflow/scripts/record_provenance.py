"""Snakemake adapter: the run's provenance (config, sheet hash, versions, revision) as a table."""

import pandas as pd

from extractors.io import atomic_path
from extractors.logs import log_to_file
from querent.engine.provenance import provenance, provenance_rows

log_to_file(snakemake.log[0])
record = provenance(snakemake.config, snakemake.input.sheet)  # as the models were trained
with atomic_path(snakemake.output[0]) as tmp:
    pd.DataFrame(provenance_rows(record), columns=["key", "value"]).to_csv(
        tmp, sep="\t", index=False
    )

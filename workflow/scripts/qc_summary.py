"""Snakemake adapter: the per-slide QC table (status, MPP, level, tissue, patches, flags)."""

from extractors.logs import log_to_file
from extractors.qc import qc_table, write_table

log_to_file(snakemake.log[0])
write_table(qc_table(**snakemake.params.qc), snakemake.output[0])

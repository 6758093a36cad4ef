"""The JSON schemas of ``config.yaml`` and the cohort sheet, shipped with the package.

Planning checks the config against :data:`CONFIG_SCHEMA` with
:func:`querent.schemas.validation.check_config`; the CLI does the same, so an installed
(non-editable) ``querent`` checks the same rules as the workflow.
"""

from importlib.resources import files
from pathlib import Path

#: The config schema: keys, types, defaults and the description of every setting.
CONFIG_SCHEMA = Path(str(files(__name__) / "config.schema.yaml"))
#: The cohort sheet's columns the workflow checks before any job.
COHORT_SCHEMA = Path(str(files(__name__) / "cohort.schema.yaml"))

"""Logging set-up for the CLI and the Snakemake script adapters."""

from __future__ import annotations

import logging
import re
import sys
from types import TracebackType

#: The line format of every log the workflow writes.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: One record of :data:`LOG_FORMAT` (logging's default asctime), for reading logs back.
LOG_RECORD = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) [^\s:]+: (?P<message>.*)$"
)


def quiet_chatty_loggers() -> None:
    """Keep third-party warnings (tifffile's page notes, the hub client's retries) off the log."""
    for name in ("tifffile", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)


def log_to_file(path: str) -> None:
    """Send library logs to ``path`` and record any uncaught error there before exiting.

    Snakemake shows the log of a failed job, so the error message that names the slide and the
    fix is what the user sees.
    """
    logging.basicConfig(
        filename=path,
        level=logging.INFO,
        format=LOG_FORMAT,
        force=True,
    )
    quiet_chatty_loggers()
    default_hook = sys.excepthook

    def log_uncaught(kind: type[BaseException], error: BaseException, tb: TracebackType | None):
        logging.getLogger("querent").error("%s", error, exc_info=(kind, error, tb))
        default_hook(kind, error, tb)

    sys.excepthook = log_uncaught

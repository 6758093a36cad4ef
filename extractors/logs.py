"""Logging set-up for the CLI and the Snakemake script adapters."""

from __future__ import annotations

import logging
import os
import re
import sys
from types import TracebackType

from extractors.errors import QuerentError

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


def log_to_file(*paths: str | os.PathLike) -> None:
    """Send library logs to ``paths``, appended to, and record any uncaught error there too.

    A user error (:class:`~extractors.errors.QuerentError`: its message names the input and the
    fix) reaches the terminal as one line on stderr, its traceback only the log; an interrupted
    job (Ctrl-C) logs one line and prints nothing; a bug keeps its traceback on stderr as well.
    Snakemake deletes a job's ``log:`` before the job runs, so a log that must outlive a rerun
    (training's, across resumes) is given as a second path.
    """
    logging.basicConfig(
        handlers=[logging.FileHandler(path, mode="a") for path in paths],
        level=logging.INFO,
        format=LOG_FORMAT,
        force=True,
    )
    quiet_chatty_loggers()
    default_hook = sys.excepthook

    def log_uncaught(kind: type[BaseException], error: BaseException, tb: TracebackType | None):
        logger = logging.getLogger("querent")
        if issubclass(kind, KeyboardInterrupt):  # Python then exits as killed by SIGINT
            logger.error("interrupted (Ctrl-C) before it finished; the next run redoes this job")
            return
        logger.error("%s", error, exc_info=(kind, error, tb))
        if issubclass(kind, QuerentError):
            print(f"querent: error: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
        else:
            default_hook(kind, error, tb)

    sys.excepthook = log_uncaught

"""One trainer per fold: a lock in the fold's folder, held for the whole training run.

After ``kill -9`` of Snakemake alone, its training job runs on as an orphan, and the same
command started again would start a second trainer on the same fold, both writing its
``resume.pt`` and ``model.pt``. The trainer takes ``train.lock`` in the fold's folder with
``flock`` and writes its pid and host in it; a second trainer stops at once, naming them.

The lock belongs to the open file, so the operating system releases it when its process ends,
however it ends: a killed trainer leaves no stale lock. On NFS, Linux makes ``flock`` a lock
of the server's (NLM or NFSv4 byte-range locks), which holds across hosts (unless mounted with
``local_lock=flock``) and is released when the holder's host stops renewing its lease (NFSv4:
about 90 s). Lustre holds it across nodes when mounted with ``flock`` (``localflock``: on one
node only). Where the file system refuses locks (Lustre's default ``noflock``), training goes
on with a warning in its log: one trainer per fold is then not enforced.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from extractors.errors import QuerentError

logger = logging.getLogger(__name__)

#: The lock file's name in the fold's folder (removed when training ends).
LOCK_NAME = "train.lock"


class FoldBusyError(QuerentError):
    """Another process is training the same fold; the message names it."""


def _take(path: Path) -> IO[str] | None:
    """The open lock file, locked by this process (None: the file system has no locks).

    The holder removes the file before it lets go, so a file locked after its holder let go may
    no longer be the one at ``path``: then the lock is taken again on the new file.
    """
    while True:
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read()
            handle.close()
            raise FoldBusyError(_busy_message(path, text)) from None
        except OSError as err:
            handle.close()
            logger.warning("%s: cannot lock (%s); another trainer is not kept out", path, err)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return handle
        handle.close()


def _busy_message(path: Path, text: str) -> str:
    try:
        holder = json.loads(text)
        who, pid, host = f"pid {holder['pid']} on {holder['host']}", holder["pid"], holder["host"]
    except (ValueError, KeyError, TypeError):
        who, pid, host = "another process", "PID", "its host"
    return (
        f"{path.parent}: this fold is being trained by {who} (lock {path}). Wait for it to "
        f"finish, or stop it (`kill {pid}` on {host}), then run again."
    )


@contextlib.contextmanager
def fold_lock(folder: str | Path) -> Iterator[None]:
    """Hold the lock of the fold in ``folder`` (created if needed).

    Raises:
        FoldBusyError: Another process holds it; the message names its pid and host.
    """
    path = Path(folder) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = _take(path)
    if handle is None:
        yield
        return
    try:
        handle.truncate(0)
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        handle.flush()
        logger.info("%s: trained by pid %d on %s", folder, os.getpid(), socket.gethostname())
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()

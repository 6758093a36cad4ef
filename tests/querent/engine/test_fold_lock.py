"""One trainer per fold: a second one stops at once naming the first; a killed one frees it."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from querent.engine.fold_lock import LOCK_NAME, FoldBusyError, fold_lock
from tests.helpers import train_synthetic

ROOT = Path(__file__).resolve().parents[3]

# helpers by name from tests/ first on the path: torchstain installs a top-level ``tests``
_TRAINER = """
import sys
from pathlib import Path
sys.path.insert(0, str(Path.cwd() / "tests"))
from helpers import train_synthetic
train_synthetic((Path(sys.argv[1]), Path(sys.argv[2])), sys.argv[3], epochs=10_000, patience=None)
"""

_LOGGER = """
import logging, sys
from extractors.logs import log_to_file
log_to_file(*sys.argv[2:])
logging.getLogger("querent").info(sys.argv[1])
"""


def _start_trainer(synthetic_cohort, out: Path) -> subprocess.Popen:
    """A real trainer in another process, returned once it has finished an epoch."""
    sheet, folder = synthetic_cohort
    command = [sys.executable, "-c", _TRAINER, str(sheet), str(folder), str(out)]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 120
    while not (out / "resume.pt").exists():
        assert process.poll() is None, "the first trainer ended"
        assert time.monotonic() < deadline, "the first trainer never finished an epoch"
        time.sleep(0.05)
    return process


@pytest.mark.slow
def test_a_second_trainer_stops_naming_the_first_until_it_is_killed(synthetic_cohort, tmp_path):
    out = tmp_path / "fold_0"
    first = _start_trainer(synthetic_cohort, out)
    try:
        with pytest.raises(FoldBusyError) as busy:
            train_synthetic(synthetic_cohort, out, epochs=1)
        message = str(busy.value)
        assert f"pid {first.pid} on {socket.gethostname()}" in message
        assert f"kill {first.pid}" in message and str(out) in message
        assert first.poll() is None  # the first one trains on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (out / LOCK_NAME).exists()  # the killed holder could not remove it: no matter
    assert train_synthetic(synthetic_cohort, out, epochs=1).exists()
    assert not (out / LOCK_NAME).exists()


def test_the_lock_is_held_by_one_process_at_a_time(tmp_path):
    holder = (
        "import sys, time\nfrom querent.engine.fold_lock import fold_lock\n"
        "with fold_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", holder, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline() == "held\n"
        with pytest.raises(FoldBusyError, match=f"pid {process.pid} "), fold_lock(tmp_path):
            pass
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
    with fold_lock(tmp_path):
        with pytest.raises(FoldBusyError, match=f"pid {os.getpid()} "), fold_lock(tmp_path):
            pass
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_log_given_twice_keeps_the_lines_of_earlier_runs(tmp_path):
    job_log, kept = tmp_path / "job.log", tmp_path / "train.log"
    for line in ("first attempt", "second attempt"):
        job_log.unlink(missing_ok=True)  # what Snakemake does before each run of a job
        subprocess.run([sys.executable, "-c", _LOGGER, line, job_log, kept], check=True)
    assert "first attempt" not in job_log.read_text()
    lines = kept.read_text().splitlines()
    assert [line.rsplit(": ", 1)[1] for line in lines] == ["first attempt", "second attempt"]
    assert all(" INFO querent: " in line for line in lines)

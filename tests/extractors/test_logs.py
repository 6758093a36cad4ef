"""What a job's script leaves on the terminal and in its log when it stops on an error."""

import signal
import subprocess
import sys


def _job(tmp_path, error):
    """Run a script that logs to a file and raises ``error``: (exit code, stderr, log)."""
    log = tmp_path / "job.log"
    code = (
        "from extractors.errors import SlideError\n"
        "from extractors.logs import log_to_file\n"
        f"log_to_file({str(log)!r})\n"
        f"raise {error}\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return done.returncode, done.stderr, log.read_text()


def test_a_user_error_is_one_line_on_stderr_and_its_traceback_is_in_the_log(tmp_path):
    code, stderr, log = _job(tmp_path, 'SlideError("slide a: no MPP.\\n  Fix: set it.")')
    assert code == 1
    assert stderr == "querent: error: slide a: no MPP. Fix: set it.\n"
    assert "ERROR querent: slide a: no MPP." in log and "Traceback" in log


def test_an_interrupted_job_prints_nothing_and_logs_one_line(tmp_path):
    code, stderr, log = _job(tmp_path, "KeyboardInterrupt")
    assert code == -signal.SIGINT and stderr == ""  # killed by SIGINT, as Ctrl-C does
    assert log.splitlines()[-1].endswith("ERROR querent: interrupted (Ctrl-C) before it finished; "
                                         "the next run redoes this job")  # fmt: skip
    assert "Traceback" not in log


def test_a_bug_keeps_its_traceback_on_stderr(tmp_path):
    code, stderr, log = _job(tmp_path, "ZeroDivisionError('a bug')")
    assert code == 1 and "Traceback" in stderr and "Traceback" in log

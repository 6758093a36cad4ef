import platform
import subprocess
import sys

import pytest

from querent.engine.allocator import keep_freed_memory

# Tensors of 12 to 24 MB allocated and freed over and over, as a training step does; prints the
# minor page faults that cost.
_STEPS = """
import resource, sys, torch
from querent.engine.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for megabytes in [12, 24, 16, 20] * 5:
    x = torch.ones(megabytes * 2**18)
    y = x + 1
    del x, y
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _STEPS, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt thresholds are glibc's",
)
def test_freed_tensors_are_reused_without_faulting_their_pages_in_again():
    assert _page_faults("keep") < _page_faults("default") / 2


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert keep_freed_memory() is False

import json
import platform
import subprocess
import sys

import pytest

from querent.engine.allocator import keep_freed_memory

# In a fresh process: MB of a 24 MB and a 48 MB block that glibc maps (rather than taking from
# its heap), and MB of heap handed back to the OS when the block is freed.
_PROBE = """
import ctypes, json, sys
from querent.engine.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "keep":
    assert keep_freed_memory()
found = {}
for megabytes in (24, 48):
    before = libc.mallinfo2()
    block = libc.malloc(megabytes * 2**20)
    held = libc.mallinfo2()
    libc.free(block)
    found[f"mapped_{megabytes}"] = (held.hblkhd - before.hblkhd) / 2**20
    found[f"released_{megabytes}"] = (held.arena - libc.mallinfo2().arena) / 2**20
print(json.dumps(found))
"""


def _probe(mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt thresholds are glibc's",
)
def test_blocks_below_32_mb_come_from_a_heap_that_keeps_them_and_larger_ones_are_mapped():
    default, kept = _probe("default"), _probe("keep")
    assert default["mapped_24"] >= 24  # glibc's default maps it and unmaps it when freed
    assert kept["mapped_24"] == 0 and kept["released_24"] == 0
    assert kept["mapped_48"] >= 48  # still handed back to the OS: no fragmentation peak


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert keep_freed_memory() is False

"""Keep freed memory in the process while training on the CPU (glibc's malloc).

glibc serves large blocks with ``mmap`` and hands them back to the OS when freed, and trims
the free top of its heap; its adaptive threshold stops at 32 MB. A training step allocates and
frees tensors of tens to hundreds of MB over and over, so without this each of them is
faulted in page by page again: a third of a Querent step at 32k patches. Raising both
thresholds keeps freed blocks for the next allocation (the same peak, far fewer page faults),
as preloading jemalloc or tcmalloc does in PyTorch's CPU tuning guide.
"""

from __future__ import annotations

import ctypes
import platform

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters in glibc's malloc.h
#: Blocks below this come from the heap, whose freed memory the process keeps.
MMAP_THRESHOLD = 256 * 2**20
#: Free memory at the heap's top kept rather than handed back to the OS.
TRIM_THRESHOLD = 2**30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process.

    Returns:
        True where applied; False where the C library is not glibc (nothing changes).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the C library this process runs on
    mmap = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(mmap and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))

"""How many intra-op threads a training or evaluation job gives torch: the free ones it was given.

Threads that wait on each other (OpenMP spins, then sleeps) are slow wherever another process
shares the cores: on 2 cores with another process busy, an epoch took 1.58-2.5x as long with
two threads as with one, at every bag size from 200 to 8,000 patches, while on quiet cores two
threads took 0.57-0.73x as long (``benchmarks/results/threads.csv``). So the count follows the
cores that are idle, not the bag size: :func:`intra_op_threads` samples how busy this
process's CPUs are (``/proc/stat``; a cluster job's cpuset counts only its own CPUs) and takes
what is idle, at least one thread and at most the ``granted`` ones. Training asks again before
every epoch, so a job adapts when a neighbour starts or ends.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

STAT = Path("/proc/stat")


def _cpu_times(cpus: set[int]) -> dict[int, tuple[int, int]]:
    """``{cpu: (idle ticks, all ticks)}`` of the ``cpus`` from ``/proc/stat``."""
    times = {}
    for line in STAT.read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(value) for value in fields[:8]]  # user .. steal
            times[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))  # idle + iowait
    return times


def idle_cores(window: float = 0.1) -> float | None:
    """Idle cores among this process's CPUs over ``window`` seconds; None off Linux."""
    if not STAT.exists() or not hasattr(os, "sched_getaffinity"):
        return None
    cpus = os.sched_getaffinity(0)
    before = _cpu_times(cpus)
    time.sleep(window)
    after = _cpu_times(cpus)
    idle = 0.0
    for cpu, (idle_ticks, total) in after.items():
        elapsed = total - before[cpu][1]
        idle += (idle_ticks - before[cpu][0]) / elapsed if elapsed > 0 else 1.0
    return idle


def intra_op_threads(granted: int, idle: float | None = None) -> int:
    """Threads for a job granted ``granted`` cores: its idle ones, at least one.

    Args:
        granted: Cores the job was given (Snakemake's ``threads``).
        idle: Idle cores among this process's CPUs; None: measured now (:func:`idle_cores`;
            where that cannot be measured, every granted thread is used).
    """
    granted = max(1, granted)
    if idle is None:
        idle = idle_cores()
    if idle is None:
        return granted
    return max(1, min(granted, int(idle + 0.5)))

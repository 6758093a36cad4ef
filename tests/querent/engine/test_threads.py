"""Intra-op threads: the idle cores among those granted, at least one; measured for real."""

import multiprocessing
import os
import time

import pytest

from querent.engine.threads import idle_cores, intra_op_threads


def test_threads_are_the_idle_granted_cores_and_at_least_one():
    assert intra_op_threads(2, idle=2.0) == 2
    assert intra_op_threads(2, idle=1.2) == 1  # a neighbour holds most of a core
    assert intra_op_threads(2, idle=0.1) == 1
    assert intra_op_threads(8, idle=3.6) == 4
    assert intra_op_threads(2, idle=16.0) == 2  # never more than granted
    assert intra_op_threads(0, idle=4.0) == 1


def _spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only: /proc/stat")
def test_a_busy_neighbour_is_seen():
    cpus = len(os.sched_getaffinity(0))
    quiet = idle_cores(window=0.3)
    assert 0.0 <= quiet <= cpus + 0.01
    spinners = [multiprocessing.Process(target=_spin, args=(5,)) for _ in range(cpus)]
    for spinner in spinners:
        spinner.start()
    try:
        time.sleep(0.3)
        busy = idle_cores(window=0.3)
    finally:
        for spinner in spinners:
            spinner.terminate()
            spinner.join()
    assert busy < 0.5  # every CPU spun
    assert intra_op_threads(cpus, idle=busy) == 1

"""Stale locks and GPU job limits, decided without Snakemake."""

import json
import os
import socket

import pytest

from querent.pipeline.housekeeping import (
    cuda_devices,
    gpu_job_limit,
    release_stale_lock,
    settle_lock,
    snakemake_processes_here,
)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty working folder with a Snakemake lock in it."""
    monkeypatch.chdir(tmp_path)
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("")
    return tmp_path


def _owner(folder, host):
    path = folder / ".snakemake" / "querent" / "lock_owner.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": 4242}))
    return path


@pytest.mark.skipif(not os.path.exists("/proc/self/cwd"), reason="needs Linux's /proc")
def test_a_lock_of_a_dead_run_on_this_host_is_removed_and_this_process_recorded(folder):
    owner = _owner(folder, socket.gethostname())
    assert snakemake_processes_here() == []
    message = settle_lock(folder / ".snakemake" / "locks", owner)
    assert "removed the lock" in message and "pid 4242" in message
    assert not (folder / ".snakemake" / "locks").exists()
    assert json.loads(owner.read_text()) == {"host": socket.gethostname(), "pid": os.getpid()}


def test_a_lock_of_another_host_is_kept_and_the_line_says_what_to_type(folder):
    owner = _owner(folder, "node-17")
    message = release_stale_lock(folder / ".snakemake" / "locks", owner)
    assert "host node-17 (pid 4242)" in message and "snakemake --unlock" in message
    assert (folder / ".snakemake" / "locks" / "0.input.lock").exists()


def test_without_a_process_table_nothing_is_removed(folder, tmp_path):
    owner = _owner(folder, socket.gethostname())
    no_proc = tmp_path / "no-proc"
    assert snakemake_processes_here(no_proc) is None
    message = release_stale_lock(folder / ".snakemake" / "locks", owner, proc=no_proc)
    assert "locked by an earlier run" in message
    assert (folder / ".snakemake" / "locks" / "0.input.lock").exists()


def test_no_lock_no_message(tmp_path):
    (tmp_path / "locks").mkdir()
    assert release_stale_lock(tmp_path / "locks", tmp_path / "owner.json") is None


@pytest.mark.parametrize(
    ("visible", "count"), [("0,1", 2), ("", 0), ("1,-1,0", 1), ("GPU-5f3e,MIG-1", 2)]
)
def test_cuda_visible_devices_counts_up_to_the_first_invalid_entry(visible, count, tmp_path):
    assert cuda_devices({"CUDA_VISIBLE_DEVICES": visible}, proc=tmp_path) == count


def test_the_driver_lists_the_gpus_when_cuda_visible_devices_is_unset(tmp_path):
    gpus = tmp_path / "driver" / "nvidia" / "gpus"
    for bus in ("0000:01:00.0", "0000:41:00.0"):
        (gpus / bus).mkdir(parents=True)
    assert cuda_devices({}, proc=tmp_path) == 2


def test_gpu_jobs_are_limited_to_the_devices_unless_given():
    assert gpu_job_limit(None, 2) == (2, None)
    assert gpu_job_limit(3, 2) == (None, None)  # --resources gpu=3 wins
    assert gpu_job_limit(None, 0) == (None, None)
    limit, message = gpu_job_limit(2, 0)
    assert limit is None and "gpu=2" in message and "no CUDA device" in message

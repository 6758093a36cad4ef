"""Housekeeping of the planning process: a lock left by a killed run, GPU jobs at once.

Every function returns what it found (notes for the person at the terminal, counts); the
Snakefile prints the notes and registers the resources.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

from extractors.io import atomic_path

#: The process table of Linux (other systems have none: locks are then never removed here).
PROC = Path(os.sep) / "proc"
UNLOCK_ADVICE = (
    "if no Snakemake runs in this folder (on any machine), type `snakemake --unlock`, then "
    "your command again."
)


def _parent(pid: int, proc: Path) -> int:
    try:
        return int((proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def snakemake_processes_here(proc: Path = PROC) -> list[int] | None:
    """Other live processes of this host that run Snakemake or its jobs in this folder.

    Returns:
        Their process ids, sorted; None where the host cannot tell (no ``/proc``).
    """
    if not (proc / "self" / "cwd").exists():
        return None
    mine, pid = set(), os.getpid()
    while pid > 1 and pid not in mine:  # this process and what started it
        mine.add(pid)
        pid = _parent(pid, proc)
    here, found = os.getcwd(), []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            command, cwd = (entry / "cmdline").read_bytes(), os.readlink(entry / "cwd")
        except OSError:
            continue
        if b"snakemake" in command and cwd == here:
            found.append(int(entry.name))
    return sorted(found)


def release_stale_lock(locks: Path, owner_file: Path, proc: Path = PROC) -> str | None:
    """Remove Snakemake's lock when the run that wrote it no longer runs.

    Snakemake's lock files hold no process id, so the planner records its own (host, pid) in
    ``owner_file`` (:func:`record_lock_owner`). The lock is removed only when that record names
    this host and no process of this host runs Snakemake (or a job of it) in this folder.

    Returns:
        One line for the person: what was done, or what to type; None when nothing is locked.
    """
    if not any(locks.glob("*.lock")):
        return None
    try:
        owner = json.loads(owner_file.read_text())
    except (OSError, ValueError):
        owner = None
    running = snakemake_processes_here(proc)
    host = socket.gethostname()
    if running:
        return (
            f"Snakemake (pid {', '.join(map(str, running))}) is running in this folder; wait for "
            "it to finish (or stop it) before starting another run here."
        )
    if running is not None and owner and owner.get("host") == host:
        shutil.rmtree(locks, ignore_errors=True)
        return (
            f"removed the lock of a run that stopped without cleaning up (pid {owner.get('pid')}"
            ", killed or crashed); going on."
        )
    if owner and owner.get("host") != host:
        return (
            f"a run on host {owner.get('host')} (pid {owner.get('pid')}) locked this folder; "
            + UNLOCK_ADVICE
        )
    return f"this folder is locked by an earlier run; {UNLOCK_ADVICE}"


def record_lock_owner(locks: Path, owner_file: Path) -> None:
    """Name this process as the one whose lock ``locks`` will hold (a live run's record stays)."""
    if any(locks.glob("*.lock")):
        return
    with atomic_path(owner_file) as tmp:
        tmp.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))


def settle_lock(locks: Path, owner_file: Path, proc: Path = PROC) -> str | None:
    """Release a stale lock (:func:`release_stale_lock`), then record this process as its owner.

    Returns:
        The line for the person, if any.
    """
    message = release_stale_lock(locks, owner_file, proc)
    record_lock_owner(locks, owner_file)
    return message


def cuda_devices(environ: dict[str, str] | None = None, proc: Path = PROC) -> int:
    """CUDA devices of this host, counted without torch.

    ``CUDA_VISIBLE_DEVICES`` if set, else the driver's ``/proc`` entries, else ``nvidia-smi -L``.
    """
    visible = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = 0
        for device in visible.split(","):
            if not device.strip() or device.strip().startswith("-"):
                break  # CUDA ignores everything from the first invalid entry on
            devices += 1
        return devices
    driver = proc / "driver" / "nvidia" / "gpus"
    if driver.is_dir():
        return len(list(driver.iterdir()))
    if shutil.which("nvidia-smi"):
        try:
            listing = subprocess.run(
                ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return 0
        return sum(line.startswith("GPU ") for line in listing.splitlines())
    return 0


def gpu_job_limit(given: int | None, devices: int | None = None) -> tuple[int | None, str | None]:
    """How many ``resources: gpu=1`` jobs may run at once on this machine.

    Snakemake leaves a resource that ``--resources`` does not name unlimited, so without a limit
    a local ``--cores 8`` would start four GPU jobs on one GPU. With no CUDA device, GPU jobs run
    on the CPU and only ``--cores`` limits them; ``--resources gpu=N`` wins.

    Args:
        given: ``gpu`` of ``--resources`` (command line or profile); None: not given.
        devices: CUDA devices of this host; None: :func:`cuda_devices` counts them.

    Returns:
        The limit to register (None: leave as is) and a note for the person (None: nothing).
    """
    if devices is None:
        devices = cuda_devices()
    if given is None and devices:
        return devices, None
    if isinstance(given, int) and given > 0 and not devices:
        return None, (
            f"resources gpu={given} were asked for (profile or --resources), but this host has "
            "no CUDA device: GPU jobs run on the CPU. Drop `gpu` from the resources to silence "
            "this."
        )
    return None, None


def unseeded_runs(results: Path = Path("results")) -> list[str]:
    """Notes on model runs trained before repeated seeds, in ``{model}/{encoder}/fold_{k}``.

    Their folds now live in ``seed_{s}/fold_{k}``; moving them there keeps them (trained with
    ``training.seed: s``), else they are trained anew.
    """
    runs = sorted({p.parent for p in results.glob("models/*/*/fold_*/model.pt")})
    if not runs:
        return []
    listed = ", ".join(str(run) for run in runs[:3]) + (", ..." if len(runs) > 3 else "")
    return [
        f"{len(runs)} model runs were trained before repeated seeds ({listed}): runs now live in "
        "{model}/{encoder}/seed_{s}/fold_{k}, so they are trained again. To keep them, move each "
        "run's fold_* folders, in results/models and results/eval, into a seed_0 folder (their "
        "seed, training.seed in the old config, is 0 unless you set it), e.g. "
        "`mkdir results/models/abmil/uni_v2/seed_0 && mv results/models/abmil/uni_v2/fold_* "
        "results/models/abmil/uni_v2/seed_0/`."
    ]

# Housekeeping of the planning process, included by common.smk before the inputs are read:
# a lock left by a killed run, the number of GPU jobs at once, and the encoder and model
# registries read without importing torch here. Uses STATE, PLANNER and note from common.smk.
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

from snakemake.exceptions import WorkflowError


# --- a lock left by a crashed run ---------------------------------------------------------

LOCKS = Path(".snakemake/locks")
LOCK_OWNER = STATE / "lock_owner.json"
UNLOCK_ADVICE = (
    "if no Snakemake runs in this folder (on any machine), type `snakemake --unlock`, then "
    "your command again."
)


#: The process table of Linux (other systems have none: locks are then never removed here).
PROC = Path(os.sep) / "proc"


def _parent(pid):
    try:
        return int((PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def snakemake_processes_here():
    """Other live processes of this host that run Snakemake or its jobs in this folder; None
    where the host cannot tell (no /proc)."""
    proc = PROC
    if not (proc / "self" / "cwd").exists():
        return None
    mine, pid = set(), os.getpid()
    while pid > 1 and pid not in mine:  # this process and what started it
        mine.add(pid)
        pid = _parent(pid)
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


def release_stale_lock():
    """Remove Snakemake's lock when the run that wrote it no longer runs, saying so in one line.

    Snakemake's lock files hold no process id, so the planner records its own (host, pid) in
    LOCK_OWNER. The lock is removed only when that record names this host and no process of
    this host runs Snakemake (or a job of it) in this folder; otherwise the line says what to
    type.
    """
    if not any(LOCKS.glob("*.lock")):
        return
    owner = None
    try:
        owner = json.loads(LOCK_OWNER.read_text())
    except (OSError, ValueError):
        pass
    running = snakemake_processes_here()
    if running:
        note(
            f"Snakemake (pid {', '.join(map(str, running))}) is running in this folder; wait for "
            "it to finish (or stop it) before starting another run here."
        )
    elif running is not None and owner and owner.get("host") == socket.gethostname():
        shutil.rmtree(LOCKS, ignore_errors=True)
        note(
            f"removed the lock of a run that stopped without cleaning up (pid {owner.get('pid')}"
            ", killed or crashed); going on."
        )
    elif owner and owner.get("host") != socket.gethostname():
        note(
            f"a run on host {owner.get('host')} (pid {owner.get('pid')}) locked this folder; "
            + UNLOCK_ADVICE
        )
    else:
        note(f"this folder is locked by an earlier run; {UNLOCK_ADVICE}")


def record_lock_owner():
    """Name this process as the one whose lock .snakemake/locks will hold."""
    if any(LOCKS.glob("*.lock")):  # a live run holds it: its record stays
        return
    STATE.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": os.getpid()}
    tmp = STATE / f"{LOCK_OWNER.name}.{socket.gethostname()}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, LOCK_OWNER)


if PLANNER:
    release_stale_lock()
    record_lock_owner()


# --- GPU jobs: at most one per CUDA device ---------------------------------------------------


def cuda_devices():
    """CUDA devices of this host, counted without torch: CUDA_VISIBLE_DEVICES if set, else the
    driver's /proc entries, else `nvidia-smi -L`."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = []
        for device in visible.split(","):
            if not device.strip() or device.strip().startswith("-"):
                break  # CUDA ignores everything from the first invalid entry on
            devices.append(device)
        return len(devices)
    driver = PROC / "driver" / "nvidia" / "gpus"
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


def limit_gpu_jobs():
    """Run at most one `resources: gpu=1` job per CUDA device at once, on this machine.

    Snakemake leaves a resource that --resources does not name unlimited, so without this a
    local `--cores 8` would start four GPU jobs on one GPU. With no CUDA device, GPU jobs run
    on the CPU and only --cores limits them. `--resources gpu=N` (command line or profile) wins.
    Cluster runs (--jobs with an executor) leave it to the scheduler.
    """
    if workflow.global_resources.get("_nodes").value is not None:
        return
    given, devices = workflow.global_resources.get("gpu").value, cuda_devices()
    if given is None and devices:
        workflow.register_resource("gpu", devices)
    elif isinstance(given, int) and given > 0 and not devices:
        note(
            f"resources gpu={given} were asked for (profile or --resources), but this host has "
            "no CUDA device: GPU jobs run on the CPU. Drop `gpu` from the resources to silence "
            "this."
        )


if PLANNER:
    limit_gpu_jobs()


# --- the encoder and model registries, without importing torch here ------------------------

REGISTRY_CODE = """
import json, sys
from extractors.encoders import get_encoder_spec, list_encoders
from extractors.extract import MPP_MISMATCH_TOLERANCE
from querent.engine.runs import model_arguments
from querent.engine.tasks import TASKS

encoders = {}
for name in list_encoders():
    spec = get_encoder_spec(name)
    input_px = spec.resize_size or spec.input_size
    encoders[name] = {"native_mpp": spec.native_mpp, "input_px": input_px}
json.dump({
    "encoders": encoders,
    "mpp_tolerance": MPP_MISMATCH_TOLERANCE,
    "models": model_arguments(),
    "min_batch": {name: task.min_batch for name, task in TASKS.items()},
}, sys.stdout)
"""
REGISTRY_CACHE = STATE / "registries.json"


def registry_key():
    """Changes whenever the registries may: their source files, this Python, the query."""
    digest = hashlib.sha1(f"{sys.executable}\n{REGISTRY_CODE}".encode())
    for package, folders in (("extractors", ("encoders",)), ("querent", ("models", "engine"))):
        root = Path(find_spec(package).origin).parent
        for folder in folders:
            for path in sorted((root / folder).glob("*.py")):
                info = path.stat()
                digest.update(f"{path}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def start_registries():
    """The registries from the cache, or a subprocess started now that reads them."""
    key = registry_key()
    try:
        cached = json.loads(REGISTRY_CACHE.read_text())
        if cached["key"] == key:
            return key, cached["registries"]
    except (OSError, ValueError, KeyError):
        pass
    reader = subprocess.Popen(
        [sys.executable, "-c", REGISTRY_CODE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return key, reader


def finish_registries(key, started):
    """Wait for the subprocess of start_registries (if any), keep its answer, return it."""
    if isinstance(started, dict):
        return started
    out, err = started.communicate()
    if started.returncode != 0:
        raise WorkflowError(
            "could not read the encoder and model registries (the environment's torch or timm "
            f"failed to import?):\n{err.strip()[-2000:]}"
        )
    registries = json.loads(out)
    STATE.mkdir(parents=True, exist_ok=True)
    tmp = STATE / f"{REGISTRY_CACHE.name}.{socket.gethostname()}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"key": key, "registries": registries}))
    os.replace(tmp, REGISTRY_CACHE)
    return registries


REGISTRIES_STARTED = start_registries() if PLANNER else None

"""A single-node SLURM cluster on this machine: munged, slurmctld and slurmd in a temp folder.

The daemons run in the foreground as children of pytest, with their own munge socket, ports,
config, state and logs, so they leave any system SLURM alone; teardown stops exactly these.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGES = ("slurm-wlm", "munge")
COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scancel")
PATH = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin"))
PARTITION = "querent"


@dataclass(frozen=True)
class Cluster:
    """A running test cluster: its config file, its only partition and the daemons' logs."""

    conf: Path
    partition: str
    logs: tuple[Path, ...]

    def tail(self, lines: int = 30) -> str:
        """The last lines of every daemon's log, for failure messages."""
        return "".join(f"\n--- {log}\n{_tail(log, lines)}" for log in self.logs)


def _tail(path: Path, lines: int) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _install() -> None:
    """Install Debian's SLURM and munge where missing; skip where that is impossible."""
    if all(shutil.which(name, path=PATH) for name in COMMANDS):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"SLURM is not installed; as root: apt-get install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:  # a stale package index: refresh it once
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"apt-get install {PACKAGES} failed:\n{result.stderr[-3000:]}"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _slurm_conf(root: Path, munge_socket: Path) -> str:
    """One node (this host, 2 CPUs, its memory, one stand-in GPU), one partition, no accounting."""
    host = socket.gethostname().split(".")[0]
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    ctld_port, slurmd_port = _free_ports(2)
    # MinJobAge: squeue, the only job status source without accounting, lists ended jobs that long.
    return f"""\
ClusterName=querent-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory={memory_mb} Gres=gpu:1 State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _start(command: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [shutil.which(command[0]), *command[1:]], stdout=out, stderr=subprocess.STDOUT
        )


def _wait_for_socket(path: Path, munged: subprocess.Popen, cluster: Cluster) -> None:
    deadline = time.monotonic() + 20
    while not path.exists():
        assert munged.poll() is None and time.monotonic() < deadline, (
            f"munged did not open {path}:{cluster.tail()}"
        )
        time.sleep(0.2)


def _wait_until_idle(cluster: Cluster, daemons: list[subprocess.Popen]) -> None:
    deadline, state = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        dead = [Path(daemon.args[0]).name for daemon in daemons if daemon.poll() is not None]
        assert not dead, f"{dead} exited at start:{cluster.tail()}"
        sinfo = ["sinfo", "--noheader", "--Node", "--format=%t"]
        result = subprocess.run(sinfo, capture_output=True, text=True, timeout=30)
        state = result.stdout.strip() or result.stderr.strip()
        if state == "idle":
            return
        time.sleep(1)
    raise AssertionError(f"the node is not idle after 60 s (sinfo: {state}):{cluster.tail()}")


def _cancel_jobs() -> None:
    """Cancel what a failed run left queued or running, so that no job outlives slurmd."""
    subprocess.run(["scancel", f"--partition={PARTITION}"], capture_output=True, timeout=30)
    for _ in range(30):
        queue = subprocess.run(["squeue", "--noheader"], capture_output=True, text=True, timeout=30)
        if not queue.stdout.strip():
            return
        time.sleep(1)


def _stop(daemons: list[subprocess.Popen]) -> None:
    for daemon in reversed(daemons):
        daemon.terminate()
    for daemon in reversed(daemons):
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running single-node cluster; SLURM_CONF points every client and job at it."""
    _install()
    root = tmp_path_factory.mktemp("slurm")
    for folder in ("state", "spool", "munge", "bin"):
        (root / folder).mkdir()
    key, munge_socket = root / "munge/munge.key", root / "munge/munge.socket"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, munge_socket))
    # A stand-in GPU without a device, so the --gpus=1 of gpu=1 rules is scheduled for real.
    (root / "gres.conf").write_text("AutoDetect=off\nName=gpu File=/dev/null\n")
    # The slurm-jobstep plugin (0.6) drops SLURM_CONF from the environment of the srun that runs
    # each job's rule (real clusters read /etc/slurm): this srun, first on PATH, puts it back.
    srun = root / "bin/srun"
    srun.write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {shutil.which("srun", path=PATH)} "$@"\n')
    srun.chmod(0o755)

    munged = [
        "munged", "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
        f"--log-file={root}/munge/log", f"--pid-file={root}/munge/pid",
        f"--seed-file={root}/munge/seed",
    ]  # fmt: skip
    commands = {
        "munged": munged,
        "slurmctld": ["slurmctld", "-D", "-i"],
        "slurmd": ["slurmd", "-D"],
    }
    cluster = Cluster(conf, PARTITION, tuple(root / f"{name}.log" for name in commands))
    daemons: list[subprocess.Popen] = []
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SLURM_CONF", str(conf))
        env.setenv("PATH", f"{root / 'bin'}{os.pathsep}{PATH}")
        try:
            for name, command in commands.items():
                daemons.append(_start(command, root / f"{name}.log"))
                if name == "munged":
                    _wait_for_socket(munge_socket, daemons[-1], cluster)
            _wait_until_idle(cluster, daemons)
            yield cluster
            _cancel_jobs()
        finally:
            _stop(daemons)

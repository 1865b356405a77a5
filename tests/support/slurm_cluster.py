"""A throw-away one-node SLURM cluster for tests: munged, slurmctld and slurmd in a temp folder.

Uses Debian's slurm-wlm and munge (installed by tests/setup_system.sh), run as root with every
path (munge key and socket, state, spool, logs, ports) private to the folder, so it neither
needs nor touches a system-wide SLURM. Clients reach it through ``SLURM_CONF`` in :attr:`env`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SLURM_CONF = """\
ClusterName=droidtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=600
InactiveLimit=0
KillWait=10
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """Start with :meth:`start`, stop with :meth:`stop`; :attr:`env` is the clients' environment."""

    def __init__(self, root: Path, cpus: int = 2):
        self.root = Path(root)
        self.cpus = cpus
        self.host = socket.gethostname()
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket.2"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._procs: list[subprocess.Popen] = []

    def start(self, timeout_s: float = 60.0) -> None:
        for tool in ("munged", "slurmctld", "slurmd", "sinfo", "sbatch"):
            if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
                raise RuntimeError(f"{tool} not found: run tests/setup_system.sh")
        for sub in ("munge", "state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        self._start_munge()
        self.conf.write_text(SLURM_CONF.format(
            host=self.host, dir=self.root, munge_socket=self.munge_socket, cpus=self.cpus,
            ctld_port=_free_port(), slurmd_port=_free_port()))
        self._spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld.out")
        self._spawn(["slurmd", "-D", "-f", str(self.conf)], "slurmd.out")
        self._wait_idle(timeout_s)

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()

    def logs(self) -> str:
        """The daemons' logs, for assertion messages."""
        parts = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text()[-4000:]}")
        return "\n".join(parts)

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=60)

    def wait_job(self, job_id: str, timeout_s: float = 300.0) -> None:
        """Wait until the job has left the queue (every array task ended)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = self.run("squeue", "--noheader", "--jobs", job_id, "--format=%i %T").stdout
            if not out.strip():
                return
            time.sleep(1.0)
        raise TimeoutError(f"job {job_id} still queued after {timeout_s} s:\n{out}\n{self.logs()}")

    def job_states(self, job_id: str) -> dict[str, str]:
        """``{array task id: state}`` of a finished array job, from slurmctld's memory."""
        out = self.run("scontrol", "show", "job", "--oneliner", job_id).stdout
        states = {}
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "ArrayTaskId" in fields:
                states[fields["ArrayTaskId"]] = fields["JobState"]
        return states

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._spawn(["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                     f"--key-file={key}", f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                     f"--seed-file={self.root / 'munge' / 'munged.seed'}",
                     f"--log-file={self.root / 'munged.log'}"], "munged.out")
        deadline = time.monotonic() + 20
        while not self.munge_socket.exists():
            if time.monotonic() > deadline or self._procs[-1].poll() is not None:
                raise RuntimeError(f"munged did not start:\n{self.logs()}")
            time.sleep(0.1)

    def _spawn(self, argv: list[str], out_name: str) -> None:
        out = open(self.root / out_name, "wb")
        try:
            self._procs.append(subprocess.Popen(argv, env=self.env, stdout=out,
                                                stderr=subprocess.STDOUT))
        finally:
            out.close()

    def _wait_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{self.logs()}")
            result = self.run("sinfo", "--noheader", "--Node", "--format=%N %t")
            state = result.stdout.strip()
            if state.endswith(" idle"):
                return
            time.sleep(0.5)
        raise TimeoutError(f"node not idle after {timeout_s} s (sinfo: {state!r}):\n{self.logs()}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

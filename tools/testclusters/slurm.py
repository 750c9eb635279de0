"""A real single-node Slurm cluster, started and stopped by the process that uses it.

    with SlurmCluster() as cluster:
        subprocess.run(["sbatch", "--wrap", "true"], env=cluster.env)

``start()`` makes a short temporary directory, writes a munge key, slurm.conf
and gres.conf there, starts a private ``munged`` and then ``slurmctld -D`` and
``slurmd -D`` as child processes, and returns once the node is idle (about a
second). ``stop()`` cancels every job, kills every process the cluster started
(by pid: the daemons, each ``slurmstepd`` and its jobs) and removes the
directory. Give :attr:`SlurmCluster.env` to every Slurm command (sbatch, squeue,
scontrol, scancel, sinfo) and to any process that runs them: it points
``SLURM_CONF`` at this cluster.

Several clusters can run at once (two pytest processes, say): each has its own
directory, ClusterName, munge key and socket, and its own two TCP ports, which
are picked free on 127.0.0.1 just before the configuration is written. Both
daemons listen on 127.0.0.1 only.

If the process that started a cluster dies without stopping it, its daemons
die with it (``PR_SET_PDEATHSIG``, which follows the thread that started them:
start a cluster from a thread that outlives it, the main thread say); the
``slurmstepd`` processes and jobs they leave are killed, and their directory
removed, by the next cluster started on the machine.

Needs root (slurmd runs jobs as their submitter, and SlurmUser is root) and the
Debian packages slurm-wlm and munge (``tools/engines.sh``). Measured facts that
the configuration relies on are in tests/test_slurm_cluster.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

# Debian puts the daemons in /usr/sbin, which is not on every PATH.
SBIN_DIRS = ("/usr/sbin", "/sbin")
# Marks the daemons' environment; slurmstepd inherits it from slurmd, so a sweep
# finds each process that belongs to a cluster directory.
DIR_VAR = "BATON_SLURM_DIR"
DIR_PREFIX = "bslurm-"
# Unix socket paths (munge's, slurmd's in its spool) must stay under 108 bytes.
MAX_BASE_LEN = 60
PR_SET_PDEATHSIG = 1


class SlurmError(RuntimeError):
    """The cluster did not start, or a Slurm command failed."""


def _which(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))
    if path is None:
        raise SlurmError(
            f"{name} is not installed: run tools/engines.sh (as root) to install slurm-wlm and munge"
        )
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _memory_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise SlurmError("no MemTotal in /proc/meminfo")


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGKILL when our parent thread ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat): a pid plus
    this names one process, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _parents() -> dict[int, int]:
    """pid -> parent pid, for every process."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    out[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return out


def _marked(directory: str) -> set[int]:
    """Processes whose environment names ``directory`` as their cluster's."""
    marker = f"{DIR_VAR}={directory}".encode()
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    found.add(int(entry))
        except OSError:
            continue
    return found


def _with_descendants(roots: Iterable[int]) -> set[int]:
    parents = _parents()
    found = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def _kill_all(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def sweep_stale(base: str | Path) -> list[Path]:
    """Kills the processes of clusters under ``base`` whose owner process is gone, and
    removes their directories. Returns the directories removed."""
    removed: list[Path] = []
    for d in Path(base).glob(f"{DIR_PREFIX}*"):
        try:
            pid_text, start = (d / "owner").read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            # Not written yet (a cluster starting right now) or not one of ours.
            continue
        if _start_time(pid) == start:
            continue  # its owner is alive
        victims = _with_descendants(_marked(str(d)))
        _kill_all(victims)
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


class SlurmCluster:
    """One slurmctld and one slurmd (node ``localhost``) in one partition, with a private munged.

    Arguments (all optional):

    - ``cpus``: CPUs the node offers (default: the cores this process may use).
    - ``memory_mb``: the node's RealMemory (default: 90% of the machine's memory).
    - ``gpus``: how many fake GPUs the node offers as the generic resource ``gpu``
      (``--gres=gpu:N``); they are /dev/null device nodes in the cluster directory. 0: none.
    - ``oversubscribe``: above 1, up to this many jobs share each core
      (``OverSubscribe=FORCE:N``); by default a job holds its cores alone, so
      at most ``cpus`` one-CPU jobs run at once.
    - ``def_mem_per_cpu_mb``: the memory a job that gives no ``--mem`` is
      counted as using, per CPU (``DefMemPerCPU``).
    - ``partition``: the one partition's name (the default partition).
    - ``base``: where the cluster directory is made (default: the temporary
      directory if its path is short, else /tmp).
    - ``conf``: slurm.conf settings that replace or add to the defaults of
      :meth:`settings` (an empty value removes one), e.g. ``{"KillWait": "30"}``.
    - ``start_timeout``: seconds to wait for the node to be idle.

    Attributes once started: ``dir`` (the cluster directory), ``conf_path``,
    ``gres_conf_path``, ``munge_socket``, ``cluster_name``, ``node``,
    ``partition``, ``cpus``, ``memory_mb``, ``gpus``, ``ctld_port``,
    ``slurmd_port``, ``env`` and ``startup_seconds``.
    """

    node = "localhost"

    def __init__(
        self,
        *,
        cpus: int | None = None,
        memory_mb: int | None = None,
        gpus: int = 2,
        oversubscribe: int = 1,
        def_mem_per_cpu_mb: int = 100,
        partition: str = "baton",
        base: str | Path | None = None,
        conf: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.cpus = cpus or len(os.sched_getaffinity(0))
        self.memory_mb = memory_mb or int(_memory_mb() * 0.9)
        self.gpus = gpus
        self.oversubscribe = oversubscribe
        self.def_mem_per_cpu_mb = def_mem_per_cpu_mb
        self.partition = partition
        self.conf = dict(conf or {})
        self.start_timeout = start_timeout
        if base is None:
            tmp = tempfile.gettempdir()
            base = tmp if len(tmp) <= MAX_BASE_LEN else "/tmp"
        self.base = Path(base)
        self.dir = Path()
        self.cluster_name = ""
        self.ctld_port = 0
        self.slurmd_port = 0
        self.startup_seconds = 0.0
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._started = False

    # --- paths (valid once start() has made the directory) ---------------------------------

    @property
    def conf_path(self) -> Path:
        return self.dir / "slurm.conf"

    @property
    def gres_conf_path(self) -> Path:
        return self.dir / "gres.conf"

    @property
    def munge_socket(self) -> Path:
        return self.dir / "munge" / "munge.socket"

    @property
    def munge_key(self) -> Path:
        return self.dir / "munge" / "munge.key"

    @property
    def log_dir(self) -> Path:
        return self.dir / "log"

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm commands and for processes that run them: this
        process's, less any SLURM_* variables (of an enclosing job, say), plus
        SLURM_CONF and /usr/sbin on PATH."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update(self.env_overrides)
        path = env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
        env["PATH"] = os.pathsep.join(path + [d for d in SBIN_DIRS if d not in path])
        return env

    @property
    def env_overrides(self) -> dict[str, str]:
        """Only the variables that point Slurm commands at this cluster."""
        return {"SLURM_CONF": str(self.conf_path)}

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        if self._started:
            raise SlurmError("this cluster is already started")
        binaries = {n: _which(n) for n in ("munged", "slurmctld", "slurmd", "scontrol")}
        if os.geteuid() != 0:
            raise SlurmError("a SlurmCluster runs slurmd and SlurmUser as root: run as root")
        t0 = time.monotonic()
        self.base.mkdir(parents=True, exist_ok=True)
        sweep_stale(self.base)
        self.dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=self.base))
        self._started = True
        try:
            (self.dir / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
            # ClusterName: lower case letters and digits, one per live directory.
            self.cluster_name = "baton" + hashlib.sha1(str(self.dir).encode()).hexdigest()[:10]
            for sub in ("munge", "log", "state", "spool"):
                (self.dir / sub).mkdir(mode=0o700)
            self._start_munged(binaries["munged"])
            self.ctld_port, self.slurmd_port = _free_port(), _free_port()
            while self.slurmd_port == self.ctld_port:
                self.slurmd_port = _free_port()
            self._write_conf()
            self._spawn("slurmctld", [binaries["slurmctld"], "-D", "-f", str(self.conf_path)])
            self._spawn("slurmd", [binaries["slurmd"], "-D", "-N", self.node, "-f", str(self.conf_path)])
            self._wait_idle(binaries["scontrol"])
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Cancels every job, kills every process of the cluster, removes its directory.
        Safe to call more than once, and after a failed start()."""
        if not self._started:
            return
        self._started = False
        try:
            if self._procs.get("slurmctld") and self._procs["slurmctld"].poll() is None:
                # Kill the jobs first, through Slurm, so slurmd sees them end.
                with contextlib.suppress(OSError, subprocess.SubprocessError, SlurmError):
                    self.cancel_all(timeout=5)
        finally:
            self._kill_everything()

    def _kill_everything(self) -> None:
        # slurmstepd processes carry the marker (from slurmd); their jobs are their
        # descendants. Take the whole tree before killing anything, since a killed
        # parent's children move to another parent.
        victims = _with_descendants(_marked(str(self.dir)) | {p.pid for p in self._procs.values()})
        victims.discard(os.getpid())
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 3
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
        _kill_all(victims | _with_descendants(_marked(str(self.dir))))
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self._procs.clear()
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in victims) and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.dir.name.startswith(DIR_PREFIX):
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- helpers for callers ---------------------------------------------------------------------

    def run(
        self, *args: str, check: bool = True, timeout: float = 30.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Runs a Slurm command (``cluster.run("squeue", "-h")``) against this cluster."""
        if not self._started:
            # Slurm's commands wait a minute for a missing slurm.conf to appear.
            raise SlurmError(f"{args[0] if args else 'a command'}: this cluster is not started")
        proc = subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, timeout=timeout, input=input
        )
        if check and proc.returncode != 0:
            raise SlurmError(
                f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def sbatch(self, *args: str, script: str | None = None) -> int:
        """Submits a batch job (``--parsable`` is added) and returns its id. Without
        ``script`` the arguments must name one (a path, or ``--wrap=...``)."""
        out = self.run("sbatch", "--parsable", *args, input=script).stdout.strip()
        return int(out.split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job -o``, as a dict (JobState, ExitCode, ...); empty once Slurm
        has forgotten the job (MinJobAge, 300 s by default, after it ended)."""
        proc = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        if proc.returncode != 0:
            return {}
        return parse_scontrol(proc.stdout)

    def cancel_all(self, wait: float = 0.0, timeout: float = 10.0) -> bool:
        """SIGKILLs every running job's processes, cancels the pending ones, and waits up
        to ``wait`` seconds for squeue to list none. Returns whether it lists none.

        ``scancel --signal=KILL`` alone would be taken as a plain cancel (SIGTERM, and
        SIGKILL only KillWait later); with ``--batch --full`` the SIGKILL goes to
        the batch shell and all its descendants at once (the job ends FAILED, 0:9)."""
        self.run(
            "scancel", "--batch", "--full", "--signal=KILL", f"--partition={self.partition}", timeout=timeout
        )
        self.run("scancel", f"--partition={self.partition}", timeout=timeout)
        deadline = time.monotonic() + wait
        while True:
            if not self.run("squeue", "-h", "-o", "%i", timeout=timeout).stdout.strip():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def logs(self, lines: int = 40) -> str:
        """The last lines of each daemon's log, for an error message."""
        parts = []
        for log in sorted(self.log_dir.iterdir()):
            with contextlib.suppress(OSError):
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    # --- internals -------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        daemon_env = dict(env if env is not None else self.env)
        daemon_env[DIR_VAR] = str(self.dir)
        # Its stdout and stderr: munged logs there (in the foreground); the Slurm
        # daemons also copy their log files there (-D).
        with open(self.log_dir / f"{name}.out", "ab") as log:
            self._procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=daemon_env,
                cwd=self.dir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def _start_munged(self, munged: str) -> None:
        self.munge_key.write_bytes(os.urandom(1024))
        self.munge_key.chmod(0o400)
        munge_dir = self.munge_key.parent
        self._spawn(
            "munged",
            [
                munged,
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={self.munge_key}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
                "--num-threads=2",
            ],
        )
        deadline = time.monotonic() + self.start_timeout
        while not self.munge_socket.exists():
            if self._procs["munged"].poll() is not None:
                raise SlurmError(f"munged exited {self._procs['munged'].returncode}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise SlurmError(f"munged made no socket in {self.start_timeout} s\n{self.logs()}")
            time.sleep(0.01)

    def settings(self) -> dict[str, str]:
        """slurm.conf's global settings (node and partition aside), ``conf`` applied."""
        d = self.dir
        out = {
            "ClusterName": self.cluster_name,
            # slurmctld refuses to run unless SlurmctldHost names this host: "localhost"
            # always does. The address in brackets is where clients and slurmd reach it.
            "SlurmctldHost": "localhost(127.0.0.1)",
            "SlurmctldPort": str(self.ctld_port),
            "SlurmdPort": str(self.slurmd_port),
            # slurmd (and the clients) bind to 127.0.0.1, not 0.0.0.0. slurmctld 22.05
            # ignores it ("for all daemons/clients except for the slurmctld") and
            # listens on 0.0.0.0:SlurmctldPort; munge authenticates every request.
            "CommunicationParameters": "NoInAddrAny",
            # Root runs everything: no slurm user or file ownership to set up, and
            # `scontrol suspend/resume` (operator only) works for the test process.
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            # The private munged (own key, own socket): clusters never trust each other.
            "AuthInfo": f"socket={self.munge_socket}",
            "StateSaveLocation": str(d / "state"),
            "SlurmdSpoolDir": str(d / "spool"),
            "SlurmctldPidFile": str(d / "slurmctld.pid"),
            "SlurmdPidFile": str(d / "slurmd.pid"),
            # Without SlurmdLogFile, slurmstepd would log to syslog.
            "SlurmctldLogFile": str(self.log_dir / "slurmctld.log"),
            "SlurmdLogFile": str(self.log_dir / "slurmd.log"),
            # An empty SPANK stack, so nothing in /etc/slurm takes part.
            "PlugStackConfig": str(d / "plugstack.conf"),
            "TmpFS": str(d / "spool"),
            # No cgroups (none to delegate in a container): a job's processes are
            # found by parent pid, and tasks are not bound to cores.
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            # Cores and memory are consumable, and so are GRES (cons_tres is needed
            # for --gres=gpu:N).
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core_Memory",
            # Without a default a job that gives no --mem is given the whole node's
            # memory and runs alone. (Nothing enforces memory: no cgroups.)
            "DefMemPerCPU": str(self.def_mem_per_cpu_mb),
            # Without it each sbatch waits about 2.7 s before the job is scheduled.
            "SchedulerParameters": "batch_sched_delay=0",
            # No slurmdbd and no database: sacct does not work; `scontrol show job`
            # does, for MinJobAge (300 s) after a job ends.
            "AccountingStorageType": "accounting_storage/none",
            "JobCompType": "jobcomp/none",
            "MpiDefault": "none",
            # Seconds between the SIGTERM and the SIGKILL of a cancelled job (Slurm's
            # default is 30): a job that ignores SIGTERM is COMPLETING that long.
            "KillWait": "5",
            # A job asking more than the partition has (CPUs, nodes, memory) is refused
            # by sbatch; without it, it waits PENDING (Reason=PartitionConfig) for ever.
            "EnforcePartLimits": "ALL",
            # A node that was DOWN becomes usable as soon as its slurmd registers.
            "ReturnToService": "2",
        }
        if self.gpus:
            out["GresTypes"] = "gpu"
        out.update(self.conf)
        return {k: v for k, v in out.items() if v != ""}

    def conf_text(self) -> str:
        """slurm.conf as start() writes it."""
        lines = [f"# Written by tools/testclusters/slurm.py for {self.dir} (see SlurmCluster.settings)."]
        lines += [f"{k}={v}" for k, v in self.settings().items()]
        gres = f" Gres=gpu:{self.gpus}" if self.gpus else ""
        lines.append(
            f"NodeName={self.node} NodeAddr=127.0.0.1 NodeHostname={self.node} CPUs={self.cpus} "
            f"RealMemory={self.memory_mb}{gres} State=UNKNOWN"
        )
        oversubscribe = f" OverSubscribe=FORCE:{self.oversubscribe}" if self.oversubscribe > 1 else ""
        lines.append(
            f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP"
            + oversubscribe
        )
        return "\n".join(lines) + "\n"

    def _write_conf(self) -> None:
        (self.dir / "plugstack.conf").write_text("")
        if self.gpus:
            devices = self.dir / "dev"
            devices.mkdir()
            for i in range(self.gpus):
                # slurmd wants a character or block device: each is a /dev/null (1:3).
                os.mknod(devices / f"gpu{i}", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            self.gres_conf_path.write_text(
                f"NodeName={self.node} Name=gpu File={devices}/gpu[0-{self.gpus - 1}]\n"
                if self.gpus > 1
                else f"NodeName={self.node} Name=gpu File={devices}/gpu0\n"
            )
        self.conf_path.write_text(self.conf_text())

    def _wait_idle(self, scontrol: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        state = ""
        while True:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise SlurmError(f"{name} exited {proc.returncode} while starting\n{self.logs()}")
            out = subprocess.run(
                [scontrol, "show", "node", "-o", self.node],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=10,
            )
            if out.returncode == 0:
                state = parse_scontrol(out.stdout).get("State", "")
                if state.split("+")[0] == "IDLE":
                    return
            if time.monotonic() > deadline:
                raise SlurmError(
                    f"node {self.node} not idle after {self.start_timeout} s (state {state!r}: "
                    f"{out.stdout.strip() or out.stderr.strip()})\n{self.logs()}"
                )
            time.sleep(0.05)


def parse_scontrol(text: str) -> dict[str, str]:
    """``Key=Value Key=Value ...`` (one record of ``scontrol show -o``) as a dict. A value
    runs to the next `` Key=``, so values with spaces (Reason, Command) survive."""
    out: dict[str, str] = {}
    key: str | None = None
    for word in text.strip().split(" "):
        name, eq, value = word.partition("=")
        if eq and name and (name[0].isupper() or name[0] == "_" or "/" in name) and "," not in name:
            key = name
            out[key] = value
        elif key is not None:
            out[key] += " " + word
    return out

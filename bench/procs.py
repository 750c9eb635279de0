"""Processes the benchmark starts and inspects: a conductor subprocess on a fresh
temporary home, and /proc readings (PSS, RSS, CPU time, process trees).

Cleanup is thorough because a benchmark that leaks jobs skews the next run:
every job is cancelled through the API while the conductor still supervises
(so it reaps its supervisors), the conductor is stopped, any process still
carrying this home in its ``BATON_RUN_DIR`` or command line is killed, and the
home is deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
from google.protobuf import duration_pb2

from baton.v1 import conductor_pb2 as pb
from baton.v1 import conductor_pb2_grpc, job_pb2
from bench.report import log

REPO = Path(__file__).resolve().parent.parent
# Flags every conductor started here also gets (`python -m bench --conductor-flags`).
CONDUCTOR_FLAGS: list[str] = []
CLK_TCK = os.sysconf("SC_CLK_TCK")
NOT_ENDED = (
    job_pb2.JOB_STATE_QUEUED,
    job_pb2.JOB_STATE_RUNNING,
    job_pb2.JOB_STATE_PAUSING,
    job_pb2.JOB_STATE_PAUSED,
    job_pb2.JOB_STATE_CANCELLING,
)
# Cancel queued jobs first: cancelling a running one frees a slot a queued one would take.
CANCEL_ORDER = (
    job_pb2.JOB_STATE_QUEUED,
    job_pb2.JOB_STATE_PAUSED,
    job_pb2.JOB_STATE_RUNNING,
    job_pb2.JOB_STATE_PAUSING,
)


# ---------------------------------------------------------------------- /proc


_LEFT_BEHIND: list[Path] = []


def remove_left_behind() -> None:
    """Remove the homes left for after the report (``Conductor.remove_later``)."""
    while _LEFT_BEHIND:
        root = _LEFT_BEHIND.pop()
        log(f"removing {root}")
        shutil.rmtree(root, ignore_errors=True)


def filesystem(path: str | Path) -> str:
    """The type of the filesystem ``path`` is on (fsync and file costs depend on it)."""
    real = os.path.realpath(path)
    best, fstype = "", "unknown"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mount = parts[1]
                if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                    best, fstype = mount, parts[2]
    except OSError:
        pass
    return fstype


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def smaps_kb(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/smaps_rollup (Rss, Pss, Pss_Anon, ...); {} if gone."""
    try:
        text = _read(f"/proc/{pid}/smaps_rollup").decode()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            out[parts[0][:-1]] = int(parts[1])
    return out


def stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat split after the command name: index 0 is the state (field 3)."""
    try:
        raw = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].decode().split()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads included."""
    fields = stat_fields(pid)
    if fields is None:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# The conductor's own helper process (conductor/statuswriter.py): its CPU is the conductor's.
STATUS_WRITER = "baton.conductor.statuswriter"


def conductor_cpu_seconds(pid: int) -> float:
    """CPU time of a conductor, all its threads, and of the status writer it runs beside it."""
    helpers = [p.pid for p in all_processes() if p.ppid == pid and STATUS_WRITER in p.cmd]
    return cpu_seconds(pid) + sum(cpu_seconds(h) for h in helpers)


def process_state(pid: int) -> str:
    fields = stat_fields(pid)
    return fields[0] if fields else "?"


def cmdline(pid: int) -> str:
    try:
        return _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def environ(pid: int) -> dict[str, str]:
    try:
        raw = _read(f"/proc/{pid}/environ")
    except OSError:
        return {}
    out: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    state: str
    cmd: str


def all_processes() -> list[Proc]:
    out: list[Proc] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        fields = stat_fields(pid)
        if fields is None:
            continue
        out.append(Proc(pid, int(fields[1]), int(fields[2]), fields[0], cmdline(pid)))
    return out


def descendants(root: int, procs: list[Proc]) -> list[Proc]:
    children: dict[int, list[Proc]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
    out: list[Proc] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child.pid)
    return out


# ---------------------------------------------------------------------- conductor


def _clean_env() -> dict[str, str]:
    """Our environment without BATON_* (those belong to jobs only)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}


class Conductor:
    """``baton conductor`` as a subprocess on 127.0.0.1:0, with a fresh temporary home.

    Use it as a context manager: leaving cancels every job, stops the
    conductor, kills whatever of its jobs is left and deletes the home.
    """

    def __init__(
        self,
        label: str,
        *,
        max_running: int,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        root_dir: Path | None = None,
    ) -> None:
        self.label = label
        self.max_running = max_running
        self.extra_args = extra_args
        # Added to the conductor's environment (SLURM_CONF for a test cluster).
        self.extra_env = {k: v for k, v in (env or {}).items() if not k.startswith("BATON_")}
        # Under ``root_dir`` when given (a tmpfs, or a disk with room), else the temp dir.
        self.root = Path(tempfile.mkdtemp(prefix=f"baton-bench-{label}-", dir=root_dir))
        self.home = self.root / "home"
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self._channel: grpc.Channel | None = None
        self._stub: conductor_pb2_grpc.ConductorStub | None = None
        self.leftovers_killed = 0
        # Removed by ``remove_left_behind`` once the figures are out: a million
        # jobs' trees take minutes to delete, and nobody should wait for them.
        self.remove_later = False

    # -- life

    def start(self, timeout: float = 30.0) -> Conductor:
        info = self.home / "state" / "conductor.json"
        self.log_path = self.root / "conductor.log"
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "baton.client.cli", "conductor",
                    "--listen", "127.0.0.1:0",
                    "--home", str(self.home),
                    "--max-running", str(self.max_running),
                    *CONDUCTOR_FLAGS,
                    *self.extra_args,
                ],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                env=_clean_env() | self.extra_env, cwd=REPO,
                # Out of our process group: a Ctrl-C meant for the benchmark must not
                # stop the conductor before the cleanup has cancelled its jobs.
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"conductor exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                data = json.loads(info.read_text())
                if data["pid"] == self.proc.pid:
                    break
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"conductor did not start within {timeout} s: {self.log_tail()}")
            time.sleep(0.02)
        self.address = data["address"]
        if self._channel is not None:  # started again: a new port
            self._channel.close()
            self._channel = None
            self._stub = None
        log(f"{self.label}: conductor pid {self.proc.pid} on {self.address}, home {self.home}")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def stub(self) -> conductor_pb2_grpc.ConductorStub:
        if self._stub is None:
            self._channel = grpc.insecure_channel(self.address)
            self._stub = conductor_pb2_grpc.ConductorStub(self._channel)
        return self._stub

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Conductor:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None and self.address:
                try:
                    self.cancel_all()
                except Exception as err:  # keep cleaning up whatever happened
                    log(f"{self.label}: cancelling jobs failed: {err!r}")
        finally:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
                self._stub = None
            self.stop()
            self.leftovers_killed = kill_home_processes(self.home)
            if self.leftovers_killed:
                log(f"{self.label}: killed {self.leftovers_killed} leftover process(es)")
            if self.remove_later:
                _LEFT_BEHIND.append(self.root)
            else:
                shutil.rmtree(self.root, ignore_errors=True)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    # -- jobs

    def job_ids(self, states: tuple[int, ...], page_size: int = 1000) -> list[str]:
        """Ids of the jobs in ``states`` (only the first page when ``page_size`` is small)."""
        ids: list[str] = []
        token = ""
        while True:
            resp = self.stub.ListJobs(
                pb.ListJobsRequest(states=states, page_size=page_size, page_token=token),  # type: ignore[arg-type]
                timeout=30,
            )
            ids.extend(j.id for j in resp.jobs)
            token = resp.next_page_token
            if not token or page_size < 1000:
                return ids

    def cancel_all(self, grace_s: float = 2.0, timeout: float = 30.0) -> None:
        """Cancel every job that has not ended and wait until all have."""
        grace = duration_pb2.Duration()
        grace.FromMilliseconds(int(grace_s * 1000))
        stub = self.stub

        def cancel(job_id: str) -> None:
            with contextlib.suppress(grpc.RpcError):  # ended meanwhile: FAILED_PRECONDITION
                stub.CancelJob(
                    pb.CancelJobRequest(job_id=job_id, grace_period=grace, reason="benchmark cleanup"),
                    timeout=30,
                )

        total = 0
        with ThreadPoolExecutor(max_workers=16) as pool:
            for state in CANCEL_ORDER:
                ids = self.job_ids((state,))
                total += len(ids)
                list(pool.map(cancel, ids))
        if total:
            log(f"{self.label}: cancelled {total} job(s)")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.job_ids(NOT_ENDED, page_size=1):
                return
            time.sleep(0.05)
        log(f"{self.label}: some jobs had not ended {timeout} s after cancel")

    # -- processes

    def supervisors(self) -> list[tuple[int, int]]:
        """(shim pid, job pid) of every launch, from <home>/state/launches/*/*/{pids,job.pid}.

        The exit recorder between them (the second pid in ``pids``) is neither:
        it counts with the other processes the conductor adds.
        """
        out: list[tuple[int, int]] = []
        for path in sorted((self.home / "state" / "launches").glob("*/*/pids")):
            try:
                shim = int(path.read_text().split()[0])
                job = int((path.parent / "job.pid").read_text())
            except (OSError, ValueError, IndexError):
                continue
            out.append((shim, job))
        return out


def _belongs_to(pid: int, home: Path) -> bool:
    """A job of this home (its BATON_RUN_DIR is under it) or one of its supervisors."""
    if str(home) in cmdline(pid):
        return True
    run_dir = environ(pid).get("BATON_RUN_DIR", "")
    return run_dir.startswith(str(home) + os.sep)


def kill_home_processes(home: Path) -> int:
    """SIGKILL every process still working for ``home`` (jobs and supervisors)."""
    killed = 0
    me = os.getpid()
    for _ in range(3):
        found = [p.pid for p in all_processes() if p.pid != me and _belongs_to(p.pid, home)]
        if not found:
            break
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.1)
    return killed

"""The local executor: each launch is a process group on this machine.

Every launch gets a small ``/bin/sh`` supervisor (``local_shim.sh``) in a session
of its own. Through a recorder shell, the job's parent, it starts the job in a
new session (so the job's process group is its own and its program leads it),
waits for it, kills whatever of the group is left, and writes the exit status
to the launch directory. Because the supervisor outlives the conductor, a
restarted conductor re-attaches to running jobs and learns how the others
ended. A shell costs well under a megabyte per job, where a Python supervisor
would cost ten.

Exits are noticed through pidfds on the event loop, not by polling, and pids
are checked against their start time so a reused pid is never mistaken for ours.

A supervisor can be lost (``kill -9``, the OOM killer) while its job runs on.
The job is then adopted, never started again: its leader is found by its
recorded pid and start time, and the conductor itself watches it to the end,
takes its exit status from the recorder (``job.exit``), drains and kills what
is left of the group as the supervisor would have, and writes the ``exit``
record for the next conductor. Neither the supervisor nor the recorder is in
the job's process group, so no signal meant for the job reaches them, and none
is trapped or lost on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal as _signal
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from baton.conductor.capacity import Capacity
from baton.conductor.executors import procfs
from baton.conductor.executors.base import (
    ALL_HEALTH_FIELDS,
    Attachment,
    Executor,
    ExitStatus,
    Handle,
    LaunchError,
    LaunchSpec,
    Presence,
    ProcessHealth,
)
from baton.conductor.executors.launchfiles import decode_exit, write_env_file
from baton.v1 import job_pb2

SHIM = Path(__file__).with_name("local_shim.sh")
log = structlog.get_logger(__name__)


def _start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if gone."""
    proc = procfs.read(pid)
    return None if proc is None else proc.start_ticks


def _is_same_process(pid: int, start: int | None) -> bool:
    return start is not None and _start_time(pid) == start




class LocalExecutor(Executor):
    name = "local"
    pause_modes = frozenset({job_pb2.PAUSE_MODE_SUSPEND, job_pb2.PAUSE_MODE_CHECKPOINT})
    health_fields = ALL_HEALTH_FIELDS

    def __init__(self, root: Path, capacity: Capacity | None = None) -> None:
        self._root = root
        self.capacity = capacity
        # Launches whose adopted group is being drained by this executor.
        self._draining: set[str] = set()
        # The shim's own environment: never the BATON_* variables, which belong
        # to jobs only.
        self._base_env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}

    def prepare(self, job_id: str, launch_seq: int, run_dir: str) -> Handle:
        launch_dir = self._root / job_id / str(launch_seq)
        return Handle(self.name, f"{job_id}/{launch_seq}", data={"dir": str(launch_dir)})

    async def launch(self, handle: Handle, spec: LaunchSpec) -> Handle:
        pids = await asyncio.to_thread(self._spawn, Path(handle.data["dir"]), spec)
        handle.data.update(pids, drain=spec.drain_seconds)
        handle.external_id = str(pids["pid"])
        return handle

    def _spawn(self, launch_dir: Path, spec: LaunchSpec) -> dict[str, int | None]:
        launch_dir.mkdir(parents=True, exist_ok=True)
        Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
        write_env_file(launch_dir, spec)
        # The exit records are made now, empty: a disk that runs out of inodes
        # later still takes the few bytes of a status into them.
        for record in ("job.exit", "exit.tmp"):
            (launch_dir / record).touch()
        read_end, write_end = os.pipe()
        try:
            shim_pid = os.posix_spawn(
                "/bin/sh",
                ["/bin/sh", str(SHIM), str(launch_dir), spec.log_path, str(spec.drain_seconds)],
                self._base_env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, write_end, 1),
                    (
                        os.POSIX_SPAWN_OPEN,
                        2,
                        str(launch_dir / "shim.err"),
                        os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                        0o600,
                    ),
                ],
                setsid=True,
            )
        finally:
            os.close(write_end)
        try:
            with os.fdopen(read_end, "rb") as out:
                line = out.readline()
        except OSError:
            line = b""
        job_pid = _until_job_leads(launch_dir, int(line)) if line.strip().isdigit() else None
        if job_pid is None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(shim_pid, 0)
            err = (launch_dir / "shim.err").read_text(errors="replace").strip()
            raise LaunchError(f"the local supervisor did not start the job: {err[-500:] or 'no output'}")
        return _identities(shim_pid, int(line), job_pid)

    def _shim_alive(self, handle: Handle) -> bool:
        pid = handle.data.get("shim_pid")
        return pid is not None and _is_same_process(pid, handle.data.get("shim_start"))

    def _leader_alive(self, handle: Handle) -> bool:
        """The job's group leader is the very process that was launched (blocking)."""
        pid = handle.data.get("pid")
        return pid is not None and _is_same_process(pid, handle.data.get("job_start"))

    def _recorder_alive(self, handle: Handle) -> bool:
        pid = handle.data.get("recorder")
        return pid is not None and _is_same_process(pid, handle.data.get("recorder_start"))

    def _owns_group(self, handle: Handle) -> bool:
        """Whether the job's process group is surely this launch's (blocking).

        So long as its supervisor or its leader lives, the group id cannot
        belong to anyone else; while this executor drains an adopted group,
        the group is held by the members being drained.
        """
        return self._shim_alive(handle) or self._leader_alive(handle) or handle.launch_id in self._draining

    async def reattach(self, handle: Handle) -> Attachment:
        return await asyncio.to_thread(self._reattach, handle)

    def _reattach(self, handle: Handle) -> Attachment:
        launch_dir = Path(handle.data["dir"])
        if "shim_pid" not in handle.data:
            # The conductor stopped between starting the supervisor and recording it.
            pids = _read_pids(launch_dir)
            if pids is None and _process_naming(str(launch_dir)):
                # The supervisor is alive but had not written its pids yet: it will.
                deadline = time.monotonic() + 5.0
                while pids is None and time.monotonic() < deadline:
                    time.sleep(0.01)
                    pids = _read_pids(launch_dir)
            if pids is None:
                return Attachment(Presence.NOT_STARTED)
            shim_pid, recorder = pids
            job_pid = _until_job_leads(launch_dir, recorder)
            if job_pid is None:
                return Attachment(Presence.ENDED, self._read_exit(launch_dir))
            ids = _identities(shim_pid, recorder, job_pid)
            if str(launch_dir) not in _cmdline(shim_pid):
                ids["shim_start"] = None
            handle.data.update(ids)
            handle.external_id = str(job_pid)
        if self._shim_alive(handle) or (not _has_exit(launch_dir) and self._leader_alive(handle)):
            # Either supervised as usual, or a job that lost its supervisor
            # and is adopted by ``wait``: in both cases it is running, once.
            return Attachment(Presence.RUNNING)
        if not _has_exit(launch_dir):
            # Lost its supervisor and its leader: whatever is left of the
            # group is ended here, so nothing of it runs next to a retry.
            _kill_leftovers(int(handle.data["pid"]), handle.data.get("job_start"))
        return Attachment(Presence.ENDED, self._read_exit(launch_dir))

    def _read_exit(self, launch_dir: Path) -> ExitStatus:
        # The supervisor's record is final; without it, the leader's own record.
        # The recorder's record is written the moment the job ends; the
        # supervisor's after the rest of the group is gone: the first says when.
        codes = {name: _record(launch_dir / name) for name in ("exit", "job.exit")}
        for name in ("exit", "job.exit"):
            code = codes[name]
            if code is not None:
                when = _mtime(launch_dir / ("job.exit" if codes["job.exit"] is not None else name))
                return decode_exit(code, when)
        return ExitStatus(None, detail="its supervisor and its exit recorder were lost: exit status unknown")

    async def wait(self, handle: Handle) -> ExitStatus:
        loop = asyncio.get_running_loop()
        pid = int(handle.data["shim_pid"])
        launch_dir = Path(handle.data["dir"])
        # Whether a pid is still the supervisor is a /proc read: done in a thread.
        pidfd = await asyncio.to_thread(self._open_pidfd, handle, "shim_pid", self._shim_alive)
        if pidfd is not None:
            await _until_readable(loop, pidfd)
        # Reap it when it is our child; after a restart it is not, and init reaps it.
        own: int | None = None
        with contextlib.suppress(ChildProcessError):
            reaped, raw = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG never blocks
            own = os.waitstatus_to_exitcode(raw) if reaped == pid else None
        status = await asyncio.to_thread(self._read_exit, launch_dir)
        if status.exit_code is not None:
            return status
        if own is not None and own >= 0 and not await asyncio.to_thread(self._leader_alive, handle):
            # It ended as it should but found no room to write: its exit status says it.
            return decode_exit(own, time.time()) if own != 255 else status
        if await asyncio.to_thread(_has_exit, launch_dir):
            return status
        return await self._adopt(handle)

    async def _adopt(self, handle: Handle) -> ExitStatus:
        """Supervise a job whose supervisor is gone, as the supervisor would have."""
        launch_dir = Path(handle.data["dir"])
        loop = asyncio.get_running_loop()
        leader = await asyncio.to_thread(self._open_pidfd, handle, "pid", self._leader_alive)
        if leader is not None:
            log.warning("supervisor_lost_job_adopted", launch=handle.launch_id, pid=handle.data["pid"])
            await _until_readable(loop, leader)
        # The recorder writes the job's status the moment the job ends.
        recorder = await asyncio.to_thread(self._open_pidfd, handle, "recorder", self._recorder_alive)
        if recorder is not None:
            await _until_readable(loop, recorder)
        self._draining.add(handle.launch_id)
        try:
            status = await asyncio.to_thread(self._read_exit, launch_dir)
            if status.exit_code is None or status.signal is not None:
                # Killed by a signal: the rest of the group may still be saving.
                await asyncio.to_thread(_drain, int(handle.data["pid"]), float(handle.data.get("drain", 60)))
            await asyncio.to_thread(_kill_leftovers, int(handle.data["pid"]), handle.data.get("job_start"))
        finally:
            self._draining.discard(handle.launch_id)
        if status.exit_code is not None:
            # Recorded as the supervisor would have, for a conductor started later.
            await asyncio.to_thread(_record_exit, launch_dir, status.exit_code)
        return status

    def _open_pidfd(self, handle: Handle, key: str, alive: Callable[[Handle], bool]) -> int | None:
        """A pidfd for ``handle.data[key]`` while ``alive`` holds, else None (blocking)."""
        if not alive(handle):
            return None
        try:
            pidfd = os.pidfd_open(int(handle.data[key]))
        except ProcessLookupError:
            return None
        # The pid could have ended and been reused between the check and pidfd_open.
        if not alive(handle):
            os.close(pidfd)
            return None
        return pidfd

    async def terminate(self, handle: Handle) -> bool:
        return await self.signal(handle, _signal.SIGTERM)

    async def request_checkpoint(self, handle: Handle, signal_name: str) -> bool:
        return await self.signal(handle, _signal.Signals[signal_name])

    async def kill(self, handle: Handle) -> bool:
        return await self.signal(handle, _signal.SIGKILL)

    async def signal(self, handle: Handle, signum: int) -> bool:
        """Send ``signum`` to the launch's process group; False when it is gone."""
        return await asyncio.to_thread(self._signal, handle, signum)

    def _signal(self, handle: Handle, signum: int) -> bool:
        if not self._owns_group(handle):
            return False
        try:
            os.killpg(int(handle.data["pid"]), signum)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    async def suspend(self, handle: Handle) -> None:
        await self.signal(handle, _signal.SIGSTOP)

    async def resume(self, handle: Handle) -> None:
        await self.signal(handle, _signal.SIGCONT)

    async def health(self, handle: Handle) -> ProcessHealth:
        return await asyncio.to_thread(procfs.group_health, int(handle.data["pid"]))

    async def kill_all(self, job_id: str) -> None:
        await asyncio.to_thread(self._kill_all, job_id)

    def _kill_all(self, job_id: str) -> None:
        # Each launch left the job's pid; the job itself carries BATON_JOB_ID,
        # which no other process of the machine has with this value.
        mark = f"BATON_JOB_ID={job_id}".encode()
        for pid_file in (self._root / job_id).glob("*/job.pid"):
            try:
                pid = int(pid_file.read_text())
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if mark in f.read().split(b"\0"):
                        os.killpg(pid, _signal.SIGKILL)
            except (OSError, ValueError):
                continue

    async def forget(self, job_id: str) -> None:
        target = self._root / job_id
        await asyncio.to_thread(shutil.rmtree, target, True)

    async def forget_many(self, job_ids: list[str]) -> None:
        # One trip to a thread for the lot, not one each; the paths made there too.
        await asyncio.to_thread(_remove_all, str(self._root), job_ids)


def _remove_all(root: str, job_ids: list[str]) -> None:
    for job_id in job_ids:
        path = os.path.join(root, job_id)
        # A job with no records here (never launched) costs one stat, not rmtree's error path.
        if os.path.lexists(path):
            shutil.rmtree(path, True)


def _read_pids(launch_dir: Path) -> tuple[int, int] | None:
    try:
        shim_pid, job_pid = map(int, (launch_dir / "pids").read_text().split())
    except (OSError, ValueError):
        return None
    return shim_pid, job_pid


def _process_naming(text: str) -> bool:
    """True when a live process has ``text`` in its command line (a /proc scan)."""
    return any(entry.name.isdigit() and text in _cmdline(int(entry.name)) for entry in os.scandir("/proc"))


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _until_readable(loop: asyncio.AbstractEventLoop, pidfd: int) -> None:
    """Wait for a pidfd to say its process ended, then close it."""
    done: asyncio.Future[None] = loop.create_future()
    loop.add_reader(pidfd, _resolve, done)
    try:
        await done
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def _until_job_leads(launch_dir: Path, recorder: int, limit: float = 10.0) -> int | None:
    """The job's pid, once it leads its own group; None if it never started (blocking).

    The job writes its pid after it has made its own session, so once it is
    there a pause or cancel sent to the group finds the group. Until then the
    launch is not reported: such a signal would be lost.
    """
    path = launch_dir / "job.pid"
    deadline = time.monotonic() + limit
    ended = False
    while True:
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        if text.endswith("\n") and text.strip().isdigit():
            return int(text)
        if ended:
            # The recorder ended (or hangs), and the job's pid was not there after.
            return None
        proc = procfs.read(recorder)
        # Look once more after: a short job may have come and gone in between.
        ended = proc is None or proc.state == "Z" or time.monotonic() > deadline
        if not ended:
            time.sleep(0.0002)


def _identities(shim_pid: int, recorder: int, job_pid: int) -> dict[str, int | None]:
    """The launch's pids with their start times, each tied to its parent (blocking).

    A process counts only while it is the child it should be: one that had
    already ended (and whose pid may be reused) gets None and is never adopted.
    """
    rec = procfs.read(recorder)
    job = procfs.read(job_pid)
    return {
        "shim_pid": shim_pid,
        "shim_start": _start_time(shim_pid),
        "recorder": recorder,
        "recorder_start": rec.start_ticks if rec is not None and rec.ppid == shim_pid else None,
        "pid": job_pid,
        "job_start": job.start_ticks if job is not None and job.ppid == recorder else None,
    }


def _record(path: Path) -> int | None:
    """The exit status in a record, or None when it holds none (yet)."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _has_exit(launch_dir: Path) -> bool:
    return (launch_dir / "exit").exists()


def _record_exit(launch_dir: Path, code: int) -> None:
    tmp = launch_dir / "exit.tmp"
    tmp.write_text(f"{code}\n")
    os.replace(tmp, launch_dir / "exit")


def _drain(pgid: int, seconds: float) -> None:
    """Wait up to ``seconds`` for the group's live members to end (blocking; rare)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(p.state != "Z" for p in procfs.group_members(pgid)):
        time.sleep(0.1)


def _kill_leftovers(pgid: int, leader_start: int | None) -> None:
    """SIGKILL what is left of a launch's group once its leader is gone (blocking).

    A group id names our group only while no other process has taken the
    leader's pid: members are killed only then, and only those started no
    earlier than the leader.
    """
    if leader_start is None:
        return
    leader = procfs.read(pgid)
    if leader is not None and leader.start_ticks != leader_start and leader.state != "Z":
        return
    for member in procfs.group_members(pgid):
        if member.start_ticks >= leader_start and member.state != "Z":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(member.pid, _signal.SIGKILL)

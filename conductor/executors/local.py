"""The local executor: each launch is a process group on this machine.

Every launch gets a small ``/bin/sh`` supervisor (``local_shim.sh``) in a session
of its own. The supervisor starts the job in a new session (so the job's process
group is its own), waits for it, kills whatever of the group is left, and writes
the exit status to the launch directory. Because the supervisor outlives the
conductor, a restarted conductor re-attaches to running jobs and learns how the
others ended. A shell costs well under a megabyte per job, where a Python
supervisor would cost ten.

Exits are noticed through pidfds on the event loop, not by polling, and pids
are checked against their start time so a reused pid is never mistaken for ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal as _signal
import time
from pathlib import Path

from baton.v1 import job_pb2
from conductor.executors import procfs
from conductor.executors.base import (
    Attachment,
    Executor,
    ExitStatus,
    Handle,
    LaunchError,
    LaunchSpec,
    Presence,
    ProcessHealth,
)

SHIM = Path(__file__).with_name("local_shim.sh")


def _start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if gone."""
    proc = procfs.read(pid)
    return None if proc is None else proc.start_ticks


def _is_same_process(pid: int, start: int | None) -> bool:
    return start is not None and _start_time(pid) == start


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _decode(code: int) -> ExitStatus:
    """The shell reports death by signal N as 128+N."""
    if code > 128 and code - 128 in _signal.valid_signals():
        return ExitStatus(exit_code=code, signal=code - 128)
    return ExitStatus(exit_code=code)


class LocalExecutor(Executor):
    name = "local"
    pause_modes = frozenset({job_pb2.PAUSE_MODE_SUSPEND, job_pb2.PAUSE_MODE_CHECKPOINT})

    def __init__(self, root: Path) -> None:
        self._root = root
        # The shim's own environment: never the BATON_* variables, which belong
        # to jobs only.
        self._base_env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}

    def prepare(self, job_id: str, launch_seq: int) -> Handle:
        launch_dir = self._root / job_id / str(launch_seq)
        return Handle(self.name, f"{job_id}/{launch_seq}", data={"dir": str(launch_dir)})

    async def launch(self, handle: Handle, spec: LaunchSpec) -> Handle:
        shim_pid, job_pid = await asyncio.to_thread(self._spawn, Path(handle.data["dir"]), spec)
        handle.data.update(
            shim_pid=shim_pid,
            shim_start=_start_time(shim_pid),
            pid=job_pid,
        )
        handle.external_id = str(job_pid)
        return handle

    def _spawn(self, launch_dir: Path, spec: LaunchSpec) -> tuple[int, int]:
        launch_dir.mkdir(parents=True, exist_ok=True)
        Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
        lines = [f"export {k}={_quote(v)}" for k, v in spec.env.items()]
        lines.append(f"baton_workdir={_quote(spec.workdir)}")
        lines.append(f"baton_command={_quote(spec.command)}")
        (launch_dir / "env").write_text("\n".join(lines) + "\n")
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
                        0o644,
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
        if not line.strip().isdigit():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(shim_pid, 0)
            err = (launch_dir / "shim.err").read_text(errors="replace").strip()
            raise LaunchError(f"the local supervisor did not start the job: {err or 'no output'}")
        return shim_pid, int(line)

    def _shim_alive(self, handle: Handle) -> bool:
        pid = handle.data.get("shim_pid")
        return pid is not None and _is_same_process(pid, handle.data.get("shim_start"))

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
            shim_pid, job_pid = pids
            start = _start_time(shim_pid)
            if start is not None and str(launch_dir) in _cmdline(shim_pid):
                handle.data.update(shim_pid=shim_pid, shim_start=start, pid=job_pid)
            else:
                handle.data.update(shim_pid=shim_pid, shim_start=None, pid=job_pid)
            handle.external_id = str(job_pid)
        if self._shim_alive(handle):
            return Attachment(Presence.RUNNING)
        return Attachment(Presence.ENDED, self._read_exit(launch_dir))

    def _read_exit(self, launch_dir: Path) -> ExitStatus:
        try:
            return _decode(int((launch_dir / "exit").read_text().strip()))
        except (OSError, ValueError):
            return ExitStatus(None, detail="its supervisor ended without recording an exit status")

    async def wait(self, handle: Handle) -> ExitStatus:
        loop = asyncio.get_running_loop()
        pid = int(handle.data["shim_pid"])
        # Whether a pid is still the supervisor is a /proc read: done in a thread.
        pidfd = await asyncio.to_thread(self._open_shim, handle)
        if pidfd is not None:
            done: asyncio.Future[None] = loop.create_future()
            loop.add_reader(pidfd, _resolve, done)
            try:
                await done
            finally:
                loop.remove_reader(pidfd)
                os.close(pidfd)
        # Reap it when it is our child; after a restart it is not, and init reaps it.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG never blocks
        return await asyncio.to_thread(self._read_exit, Path(handle.data["dir"]))

    def _open_shim(self, handle: Handle) -> int | None:
        """A pidfd for the live supervisor, or None when it has ended (blocking)."""
        if not self._shim_alive(handle):
            return None
        try:
            pidfd = os.pidfd_open(int(handle.data["shim_pid"]))
        except ProcessLookupError:
            return None
        # The pid could have ended and been reused between the check and pidfd_open.
        if not self._shim_alive(handle):
            os.close(pidfd)
            return None
        return pidfd

    async def signal(self, handle: Handle, signum: int) -> bool:
        return await asyncio.to_thread(self._signal, handle, signum)

    def _signal(self, handle: Handle, signum: int) -> bool:
        # Only while its supervisor lives is the job's process group surely the job's.
        if not self._shim_alive(handle):
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

    async def forget(self, job_id: str) -> None:
        target = self._root / job_id
        await asyncio.to_thread(shutil.rmtree, target, True)


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

"""What every engine executor shares: a launch runs inside ``node_wrapper.sh``.

Slurm and Ray cannot report exit statuses, signals and output the same way
(Slurm forgets exit codes without its accounting database; Ray reports none
for a stopped job and mixes its own lines into the job's log). So each launch
runs inside Baton's wrapper on the engine's node, and the wrapper keeps the
facts in the launch directory, inside the run directory on storage the nodes
share with the conductor: ``started`` once the job runs, ``exit`` when it
ended, and the job's output goes straight to the run's ``output.log``.

This base class reads those records (inotify where it reaches, a poll where
it does not, as on NFS) and asks the engine only what the records cannot
tell: whether a launch is still queued, and what became of one whose wrapper
never wrote its exit (killed by the engine, a lost node). A subclass says how
to submit, find, signal, suspend and cancel on its engine.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import os
import shutil
import signal as _signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from baton.common.filewatch import FileWatcher
from baton.conductor.executors.base import (
    Attachment,
    Executor,
    ExitStatus,
    Handle,
    LaunchSpec,
    Presence,
    ProcessHealth,
)
from baton.conductor.executors.launchfiles import decode_exit, write_env_file

WRAPPER = Path(__file__).with_name("node_wrapper.sh")
# Where a run's launches keep their records, inside the run directory.
LAUNCHES = ".baton-launches"
# How often to look at the records where inotify does not reach, and how often
# to ask the engine about a launch whose wrapper has not reported.
RECORD_POLL_SECONDS = 1.0
ENGINE_POLL_SECONDS = 2.0
# How long a kill waits for the wrapper's record before the engine's cancel.
KILL_RECORD_SECONDS = 2.0
# How long a suspend waits for the wrapper to have stopped the job.
ACK_SECONDS = 5.0


class EngineState(enum.Enum):
    """A launch as its engine sees it."""

    QUEUED = "queued"
    RUNNING = "running"
    SUSPENDED = "suspended"
    ENDED = "ended"
    # The engine holds no record of it (never submitted, or long forgotten).
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class EngineView:
    state: EngineState
    # For an ENDED launch: the engine's own account of how it ended, if any.
    status: ExitStatus | None = None
    # Why it waits or how it ended, in the engine's words ("Resources").
    detail: str = ""



def read_exit(launch_dir: Path) -> ExitStatus | None:
    """The wrapper's exit record, or None while there is none (blocking)."""
    try:
        text = (launch_dir / "exit").read_text().strip()
        when = (launch_dir / "exit").stat().st_mtime
    except OSError:
        return None
    if not text.lstrip("-").isdigit():
        return None
    return decode_exit(int(text), when)


def has_started(launch_dir: Path) -> bool:
    return (launch_dir / "started").exists()


def read_pid_and_start(launch_dir: Path) -> tuple[int, float | None]:
    """The job's pid on its node (0 if not known) and when the wrapper started (blocking)."""
    try:
        pid = int((launch_dir / "job.pid").read_text().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    try:
        started = float((launch_dir / "started").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        started = None
    return pid, started


def end_unstarted(launch_dir: Path) -> bool:
    """Record a launch that never started as killed, so a wrapper that starts
    late runs nothing; False when it had started after all (blocking)."""
    if has_started(launch_dir) or read_exit(launch_dir) is not None:
        return False
    tmp = launch_dir / "exit.tmp"
    tmp.write_text(f"{128 + _signal.SIGKILL}\n")
    os.replace(tmp, launch_dir / "exit")
    return not has_started(launch_dir)


class NodeExecutor(Executor):
    """An engine executor whose launches run inside the node wrapper."""

    def __init__(self) -> None:
        self._watcher = FileWatcher()
        # The conductor's environment, less BATON_* (those belong to jobs).
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}

    # ------------------------------------------------------------ engine side

    @abc.abstractmethod
    async def submit(self, handle: Handle, spec: LaunchSpec, command: list[str]) -> str:
        """Submit ``command`` (the wrapper) under the launch's name; the engine's id for it."""

    @abc.abstractmethod
    async def find(self, handle: Handle) -> str | None:
        """The engine's id of a launch submitted under ``handle``'s name, if any."""

    @abc.abstractmethod
    async def view(self, handle: Handle) -> EngineView:
        """The engine's view of the launch now."""

    @abc.abstractmethod
    async def cancel(self, handle: Handle) -> None:
        """The engine's own cancel: the final kill after Baton's grace."""

    def engine_name(self, handle: Handle) -> str:
        """The name a launch is submitted under: known before it is submitted."""
        return f"baton-{handle.launch_id.replace('/', '-')}"

    # ------------------------------------------------------------ the interface

    def ended_records(self, run_dir: str) -> list[str]:
        # Every launch's wrapper, spec and exit: read again only to re-attach.
        return [str(Path(run_dir) / LAUNCHES)]

    def prepare(self, job_id: str, launch_seq: int, run_dir: str) -> Handle:
        launch_dir = Path(run_dir) / LAUNCHES / str(launch_seq)
        return Handle(self.name, f"{job_id}/{launch_seq}", data={"dir": str(launch_dir)})

    async def launch(self, handle: Handle, spec: LaunchSpec) -> Handle:
        launch_dir = Path(handle.data["dir"])
        await asyncio.to_thread(_write_launch, launch_dir, spec)
        # The wrapper travels in the launch directory: a node needs no Baton installed.
        wrapper = str(launch_dir / WRAPPER.name)
        command = ["/bin/sh", wrapper, str(launch_dir), spec.log_path, str(spec.drain_seconds)]
        handle.external_id = await self.submit(handle, spec, command)
        handle.data["engine_id"] = handle.external_id
        return handle

    async def wait_started(self, handle: Handle) -> None:
        """Return once the launch runs on a node (or has ended)."""
        launch_dir = Path(handle.data["dir"])
        await self._until(handle, lambda: has_started(launch_dir) or read_exit(launch_dir) is not None,
                          [launch_dir / "started", launch_dir / "exit"])  # fmt: skip

    async def wait(self, handle: Handle) -> ExitStatus:
        launch_dir = Path(handle.data["dir"])
        found: list[ExitStatus] = []

        def ended() -> bool:
            status = read_exit(launch_dir)
            if status is not None:
                found.append(status)
            return status is not None

        lost = await self._until(handle, ended, [launch_dir / "exit"])
        if found:
            return found[0]
        assert lost is not None
        return await self._lost_status(launch_dir, lost)

    async def _until(self, handle: Handle, check: Callable[[], bool], paths: list[Path]) -> EngineView | None:
        """Wait until ``check()`` (run off the event loop) holds, and return None; or
        until the engine says the launch ended without it, and return the engine's view."""
        for path in paths:
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        wake = asyncio.Event()
        subs = [self._watcher.subscribe(path, wake) for path in paths]
        try:
            next_engine = time.monotonic() + ENGINE_POLL_SECONDS
            while True:
                wake.clear()
                if await asyncio.to_thread(check):
                    return None
                if time.monotonic() >= next_engine:
                    view = await self.view(handle)
                    if view.state in (EngineState.ENDED, EngineState.UNKNOWN):
                        # The record may land just after the engine's end: look once more.
                        await asyncio.sleep(0.5)
                        if await asyncio.to_thread(check):
                            return None
                        return view
                    next_engine = time.monotonic() + ENGINE_POLL_SECONDS
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), RECORD_POLL_SECONDS)
        finally:
            for sub in subs:
                self._watcher.unsubscribe(sub)

    async def _lost_status(self, launch_dir: Path, view: EngineView) -> ExitStatus:
        """How a launch ended whose wrapper wrote no exit: the engine's word, else unknown."""
        if view.status is not None:
            return view.status
        return ExitStatus(
            exit_code=None,
            detail=f"the {self.name} job ended without Baton's exit record"
            + (f" ({view.detail})" if view.detail else ""),
        )

    async def reattach(self, handle: Handle) -> Attachment:
        launch_dir = Path(handle.data["dir"])
        status = await asyncio.to_thread(read_exit, launch_dir)
        if status is not None:
            return Attachment(Presence.ENDED, status)
        if not handle.external_id:
            # Named before it was submitted: the submission may have happened
            # before the conductor died. Look it up by name, never submit twice.
            found = await self.find(handle)
            if found is None:
                return Attachment(Presence.NOT_STARTED)
            handle.external_id = found
            handle.data["engine_id"] = found
        view = await self.view(handle)
        if view.state in (EngineState.ENDED, EngineState.UNKNOWN):
            status = await asyncio.to_thread(read_exit, launch_dir)
            if status is None:
                status = await self._lost_status(launch_dir, view)
            return Attachment(Presence.ENDED, status)
        return Attachment(Presence.RUNNING)

    async def health(self, handle: Handle) -> ProcessHealth:
        """What the engine and the wrapper's records tell; no process table on a remote node."""
        view = await self.view(handle)
        pid, started = await asyncio.to_thread(read_pid_and_start, Path(handle.data["dir"]))
        alive = view.state in (EngineState.RUNNING, EngineState.SUSPENDED) and started is not None
        return ProcessHealth(
            pid=pid,
            alive=alive,
            zombie=False,
            process_count=0,
            cpu_percent=0.0,
            rss_bytes=0,
            uptime_seconds=max(0.0, time.time() - started) if alive and started else 0.0,
            stopped=view.state is EngineState.SUSPENDED,
        )

    # ------------------------------------------------------------ requests

    async def _request(self, handle: Handle, signal_name: str) -> bool:
        """Hand ``signal_name`` to the wrapper; False when the launch has ended."""
        launch_dir = Path(handle.data["dir"])
        if await asyncio.to_thread(read_exit, launch_dir) is not None:
            return False
        if await asyncio.to_thread(end_unstarted, launch_dir):
            # Still in the engine's queue: nothing to signal, so it ends here,
            # killed before it ran, and leaves the queue.
            await self.cancel(handle)
            return True
        await asyncio.to_thread(write_control, launch_dir, signal_name)
        return True

    async def _acked(self, handle: Handle) -> bool:
        """Wait until the wrapper has delivered the latest request; False if it did not in time."""
        launch_dir = Path(handle.data["dir"])

        def delivered() -> bool:
            try:
                want = (launch_dir / "control").read_text().split()[0]
                return (launch_dir / "control.ack").read_text().strip() == want
            except (OSError, IndexError):
                return False

        wait = self._until(handle, delivered, [launch_dir / "control.ack"])
        try:
            await asyncio.wait_for(wait, ACK_SECONDS)
        except TimeoutError:
            return False
        return True

    async def terminate(self, handle: Handle) -> bool:
        return await self._request(handle, "TERM")

    async def request_checkpoint(self, handle: Handle, signal_name: str) -> bool:
        return await self._request(handle, signal_name)

    async def kill(self, handle: Handle) -> bool:
        launch_dir = Path(handle.data["dir"])
        delivered = await self._request(handle, "KILL")
        if delivered:
            # A moment for the wrapper to record the end: the engine's cancel
            # would end the wrapper too, and the record with it.
            recorded = self._until(handle, lambda: read_exit(launch_dir) is not None, [launch_dir / "exit"])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(recorded, KILL_RECORD_SECONDS)
        # The engine's own cancel is the final word: it also ends a wrapper
        # that is stuck, and a launch still waiting in the engine's queue.
        await self.cancel(handle)
        # Some engines cannot drop a queued launch (Ray keeps a PENDING job):
        # record its end here, and the wrapper, if it ever starts, runs nothing.
        await asyncio.to_thread(end_unstarted, launch_dir)
        return delivered

    async def close(self) -> None:
        self._watcher.close()


def _write_launch(launch_dir: Path, spec: LaunchSpec) -> None:
    launch_dir.mkdir(parents=True, exist_ok=True)
    # The launches' records are the conductor's and the engine job's (same user) alone.
    os.chmod(launch_dir.parent, 0o700)
    Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
    write_env_file(launch_dir, spec)
    shutil.copyfile(WRAPPER, launch_dir / WRAPPER.name)


def write_control(launch_dir: Path, signal_name: str) -> None:
    """Ask the wrapper to send ``signal_name`` to the job's group (blocking)."""
    control = launch_dir / "control"
    try:
        seq = int(control.read_text().split()[0]) + 1
    except (OSError, ValueError, IndexError):
        seq = 1
    tmp = launch_dir / "control.tmp"
    tmp.write_text(f"{seq} {signal_name.removeprefix('SIG')}\n")
    os.replace(tmp, control)

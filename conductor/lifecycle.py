"""The lifecycle: the one state machine of the conductor.

Every rule about jobs lives here: the queue and its limit, the transitions,
steps and retries, pause in both modes, cancel and its grace, time limits,
heartbeats, and recovery after a restart. Everything else is plumbing around
it: the registry remembers, executors run processes, the publisher writes
status.json, the servicer translates.

Each change to a job gets the next revision and is handed to the registry in
revision order. Any step with an outside effect (starting or signalling a
process, answering a submit) waits until the change before it is durable, so
a conductor killed at any moment neither loses a job nor runs one twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal as _signal
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from google.protobuf import timestamp_pb2

from baton.v1 import job_pb2
from common import spec as specs
from common.durations import format_duration
from common.errors import FailedPrecondition, NotFound, invalid_field
from common.jobs import TERMINAL
from common.layout import LOG_FILE, Layout
from common.names import name_problem
from common.paging import decode_token, encode_token, page_size
from common.tailer import offset_of_last_lines, read_range
from conductor import checkpoints as ckpt
from conductor import steps as steps_mod
from conductor.executors.base import (
    Executor,
    ExitStatus,
    Handle,
    LaunchError,
    LaunchSpec,
    Presence,
    ProcessHealth,
    Unsupported,
)
from conductor.publisher import Publisher
from conductor.registry import Registry
from conductor.results import RESULT_FILE, read_result

log = structlog.get_logger(__name__)

S = job_pb2
DEFAULT_CANCEL_GRACE = 10.0
RETRY_BACKOFF_FIRST = 1.0
RETRY_BACKOFF_MAX = 60.0

EventListener = Callable[[job_pb2.JobEvent], None]


def state_name(state: int) -> str:
    return S.JobState.Name(state).removeprefix("JOB_STATE_")


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def _new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def retry_backoff(attempt: int) -> float:
    """Seconds to wait before attempt ``attempt + 1``: 1 s doubling, at most 60 s."""
    return float(min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_FIRST * 2 ** (attempt - 1)))


def describe_exit(status: ExitStatus) -> str:
    if status.exit_code is None:
        return status.detail or "exit status unknown"
    if status.signal is not None:
        return f"killed by {_signal.Signals(status.signal).name}"
    return f"exit code {status.exit_code}"


@dataclass
class _Run:
    """What the lifecycle keeps about one job beyond the Job message itself."""

    seq: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    handle: Handle | None = None
    launch_seq: int = 0
    holds_slot: bool = False
    waiter: asyncio.Task[None] | None = None
    timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    # Persisted notes, so a restarted conductor can finish what was started.
    cancel_reason: str = ""
    kill_at: float | None = None
    killed: bool = False
    # Whether the pause signal reached a process (a step that had already
    # finished by then ended at a step boundary, not because of the pause).
    pause_delivered: bool = True
    retry_at: float | None = None
    resuming: bool = False
    paused_at: float | None = None
    paused_seconds: float = 0.0

    def to_json(self) -> str:
        h = self.handle
        return json.dumps(
            {
                "handle": None
                if h is None
                else {
                    "executor": h.executor,
                    "launch_id": h.launch_id,
                    "external_id": h.external_id,
                    "data": h.data,
                },
                "launch_seq": self.launch_seq,
                "cancel_reason": self.cancel_reason,
                "kill_at": self.kill_at,
                "killed": self.killed,
                "retry_at": self.retry_at,
                "resuming": self.resuming,
                "paused_at": self.paused_at,
                "paused_seconds": self.paused_seconds,
            }
        )

    @classmethod
    def from_json(cls, seq: int, text: str | None) -> _Run:
        run = cls(seq=seq)
        if not text:
            return run
        d: dict[str, Any] = json.loads(text)
        h = d.get("handle")
        if h:
            run.handle = Handle(h["executor"], h["launch_id"], h.get("external_id", ""), h["data"])
        run.launch_seq = d.get("launch_seq", 0)
        run.cancel_reason = d.get("cancel_reason", "")
        run.kill_at = d.get("kill_at")
        run.killed = d.get("killed", False)
        run.retry_at = d.get("retry_at")
        run.resuming = d.get("resuming", False)
        run.paused_at = d.get("paused_at")
        run.paused_seconds = d.get("paused_seconds", 0.0)
        return run


@dataclass(frozen=True)
class JobHealth:
    job: job_pb2.Job
    process: ProcessHealth | None
    detail: str
    last_output: float | None


_ACTIVE = frozenset({S.JOB_STATE_RUNNING, S.JOB_STATE_PAUSING, S.JOB_STATE_PAUSED, S.JOB_STATE_CANCELLING})


@dataclass(frozen=True)
class ListFilter:
    project: str = ""
    group: str = ""
    name: str = ""
    states: tuple[int, ...] = ()

    def matches(self, job: job_pb2.Job) -> bool:
        return (
            (not self.project or job.project == self.project)
            and (not self.group or job.group == self.group)
            and (not self.name or job.name == self.name)
            and (not self.states or job.state in self.states)
        )


class Lifecycle:
    def __init__(
        self,
        registry: Registry,
        executors: dict[str, Executor],
        layout: Layout,
        publisher: Publisher,
        *,
        max_running: int,
        heartbeat_interval: float = 30.0,
    ) -> None:
        self._registry = registry
        self._executors = executors
        self._layout = layout
        self._publisher = publisher
        self.max_running = max_running
        self._heartbeat_interval = heartbeat_interval
        self._jobs: dict[str, job_pb2.Job] = {}
        self._runs: dict[str, _Run] = {}
        self._order: list[int] = []  # seqs, ascending
        self._by_seq: dict[int, str] = {}
        self._by_request: dict[str, str] = {}
        self._durable: dict[str, asyncio.Future[None]] = {}
        self._queue: deque[str] = deque()
        self._slots = 0
        self._revision = 0
        self._next_seq = 1
        self._listeners: list[EventListener] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._name_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._closed = False

    # ------------------------------------------------------------------ start/stop

    async def start(self) -> None:
        """Load the registry and pick up every job that had not ended."""
        stored = await self._registry.open()
        max_rev = self._registry.max_revision
        recent = time.time() - 3600
        for item in stored:
            job = item.job
            self._jobs[job.id] = job
            self._runs[job.id] = _Run.from_json(item.seq, item.runtime)
            self._order.append(item.seq)
            self._by_seq[item.seq] = job.id
            if job.request_id:
                self._by_request[job.request_id] = job.id
            max_rev = max(max_rev, job.revision)
            self._next_seq = max(self._next_seq, item.seq + 1)
            # Repair a status.json whose write a crash may have cut off.
            if job.state not in TERMINAL or job.update_time.seconds >= recent:
                self._publisher.publish(job)
        self._order.sort()
        self._revision = max_rev
        for job_id in [self._by_seq[s] for s in self._order]:
            if self._jobs[job_id].state not in TERMINAL:
                await self._recover(job_id)
        self._schedule()
        self._heartbeat_task = asyncio.create_task(self._heartbeats())
        log.info(
            "lifecycle_started",
            jobs=len(self._jobs),
            revision=self._revision,
            queued=len(self._queue),
            running=self._slots,
        )

    async def stop(self) -> None:
        """Stop supervising; jobs keep running and a new conductor re-attaches."""
        self._closed = True
        if self._heartbeat_task:
            self._heartbeat_task.cancel()
        for run in self._runs.values():
            for timer in run.timers.values():
                timer.cancel()
            if run.waiter:
                run.waiter.cancel()
        for task in list(self._tasks):
            task.cancel()
        waiting = [r.waiter for r in self._runs.values() if r.waiter] + list(self._tasks)
        await asyncio.gather(*waiting, return_exceptions=True)
        for ex in self._executors.values():
            await ex.close()

    def add_listener(self, listener: EventListener) -> None:
        """Call ``listener`` with every change, in revision order."""
        self._listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    @property
    def revision(self) -> int:
        return self._revision

    # ------------------------------------------------------------------ reads

    def get(self, job_id: str) -> job_pb2.Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}", reason="JOB_NOT_FOUND", metadata={"job_id": job_id})
        return job

    def jobs_by_id(self, job_id: str) -> job_pb2.Job | None:
        """The job, or None when there is no such job (any more)."""
        return self._jobs.get(job_id)

    def list_jobs(self, flt: ListFilter, size: int, token: str) -> tuple[list[job_pb2.Job], str]:
        """Matching jobs, newest first, one page at a time."""
        limit = page_size(size)
        key = [flt.project, flt.group, flt.name, sorted(flt.states)]
        after = decode_token("conductor.jobs", key, token)
        if after is not None and not isinstance(after, int):
            raise invalid_field("page_token", "is not a page token from this list")
        # Newest first: walk the seqs downwards from just below the last one sent.
        idx = len(self._order) if after is None else bisect_left(self._order, after)
        out: list[job_pb2.Job] = []
        while idx > 0:
            idx -= 1
            job = self._jobs[self._by_seq[self._order[idx]]]
            if flt.matches(job):
                if len(out) == limit:
                    return out, encode_token("conductor.jobs", key, self._runs[out[-1].id].seq)
                out.append(job)
        return out, ""

    def jobs(self, flt: ListFilter) -> Iterable[job_pb2.Job]:
        """Every matching job, oldest first (for snapshots)."""
        for seq in list(self._order):
            job = self._jobs[self._by_seq[seq]]
            if flt.matches(job):
                yield job

    def counts(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for job in self._jobs.values():
            out[job.state] = out.get(job.state, 0) + 1
        return out

    def executor_modes(self) -> dict[str, frozenset[int]]:
        return {name: ex.pause_modes for name, ex in self._executors.items()}

    # ------------------------------------------------------------------ commands

    async def submit(
        self,
        model: specs.SpecModel,
        *,
        start_step: int = 0,
        request_id: str = "",
        dry_run: bool = False,
        resume_from: str = "",
    ) -> job_pb2.Job:
        """Queue a job; answers once it is durable. Same ``request_id``, same job."""
        if request_id and request_id in self._by_request and not dry_run:
            job_id = self._by_request[request_id]
            pending = self._durable.get(job_id)
            if pending is not None:
                await asyncio.shield(pending)
            return self.get(job_id)
        if len(request_id) > 128:
            raise invalid_field("request_id", "must be at most 128 characters")
        if model.executor not in self._executors:
            offered = ", ".join(sorted(self._executors))
            raise invalid_field(
                "spec.executor", f"unknown executor {model.executor!r}; this conductor offers: {offered}"
            )
        steps = model.effective_steps()
        if start_step < 0 or start_step > len(steps):
            raise invalid_field("start_step", f"must be between 1 and {len(steps)} (the step count)")
        if model.workdir is not None and not os.path.isabs(model.workdir):
            raise invalid_field("spec.workdir", "must be an absolute path")
        if resume_from:
            problem = name_problem(resume_from)
            if problem:
                raise invalid_field("resume_from", problem)
            base = self._layout.checkpoint_dir(model.project, model.group, model.name)
            if not await asyncio.to_thread(os.path.isdir, base / resume_from):
                raise NotFound(
                    f"no checkpoint {resume_from!r} for {model.project}/{model.group}/{model.name}",
                    reason="CHECKPOINT_NOT_FOUND",
                    metadata={"resume_from": resume_from},
                )
        spec = specs.to_proto(model)
        job = job_pb2.Job(
            project=model.project,
            group=model.group,
            name=model.name,
            state=S.JOB_STATE_QUEUED,
            spec=spec,
            executor=model.executor,
            request_id=request_id,
            step_count=len(steps),
            start_step=max(start_step, 1),
            checkpoint_dir=str(self._layout.checkpoint_dir(model.project, model.group, model.name)),
            create_time=_now(),
            resume_from_suffix=resume_from,
        )
        steps_mod.init_steps(job, [s.name for s in steps], max(start_step, 1))
        if dry_run:
            return job
        job_id = _new_id()
        while job_id in self._jobs:
            job_id = _new_id()
        job.id = job.run_id = job_id
        job.run_dir = str(self._layout.run_dir(job.project, job.group, job.name, job_id))
        seq = self._next_seq
        self._next_seq += 1
        run = _Run(seq=seq)
        self._runs[job_id] = run
        self._order.append(seq)
        self._by_seq[seq] = job_id
        self._jobs[job_id] = job
        if request_id:
            self._by_request[request_id] = job_id
        job, fut = self._commit(job_id, lambda j: None)
        self._durable[job_id] = fut
        try:
            await fut
        finally:
            self._durable.pop(job_id, None)
        self._queue.append(job_id)
        self._schedule()
        return job

    async def cancel(self, job_id: str, grace: float | None, reason: str) -> job_pb2.Job:
        run = self._run(job_id)
        async with run.lock:
            job = self._jobs[job_id]
            if job.state in TERMINAL:
                raise FailedPrecondition(
                    f"job {job_id} has already ended ({state_name(job.state)})",
                    reason="JOB_ALREADY_ENDED",
                    metadata={"job_id": job_id, "state": state_name(job.state)},
                )
            if job.state == S.JOB_STATE_CANCELLING:
                return job
            reason = reason or "cancelled by request"
            await self._cancel_locked(job_id, DEFAULT_CANCEL_GRACE if grace is None else grace, reason)
            return self._jobs[job_id]

    async def _cancel_locked(self, job_id: str, grace: float, reason: str) -> None:
        run = self._runs[job_id]
        job = self._jobs[job_id]
        if run.handle is None:
            # Nothing is running: queued, paused with a checkpoint, or between retries.
            with contextlib.suppress(ValueError):
                self._queue.remove(job_id)
            await self._finish(job_id, S.JOB_STATE_CANCELLED, None, reason)
            return
        was_suspended = job.state == S.JOB_STATE_PAUSED
        run.cancel_reason = reason
        run.kill_at = time.time() + grace
        self._stop_timer(run, "deadline")
        await self._commit(job_id, lambda j: _set(j, state=S.JOB_STATE_CANCELLING, reason=reason))[1]
        executor = self._executors[job.executor]
        await executor.signal(run.handle, _signal.SIGTERM)
        if was_suspended:
            await executor.resume(run.handle)
        self._arm_kill(job_id, grace)

    async def pause(self, job_id: str, mode: int) -> job_pb2.Job:
        run = self._run(job_id)
        async with run.lock:
            job = self._jobs[job_id]
            if job.state != S.JOB_STATE_RUNNING:
                raise FailedPrecondition(
                    f"job {job_id} is {state_name(job.state)}; only a RUNNING job can be paused",
                    reason="JOB_NOT_RUNNING",
                    metadata={"job_id": job_id, "state": state_name(job.state)},
                )
            executor = self._executors[job.executor]
            if mode == S.PAUSE_MODE_UNSPECIFIED:
                suspend_ok = S.PAUSE_MODE_SUSPEND in executor.pause_modes
                mode = S.PAUSE_MODE_SUSPEND if suspend_ok else S.PAUSE_MODE_CHECKPOINT
            if mode not in executor.pause_modes:
                raise FailedPrecondition(
                    f"the {executor.name} executor cannot pause with {S.PauseMode.Name(mode)}",
                    reason="PAUSE_MODE_UNSUPPORTED",
                    metadata={"executor": executor.name, "mode": S.PauseMode.Name(mode)},
                )
            self._stop_timer(run, "deadline")
            run.paused_at = time.time()
            if run.handle is None:
                # Between retries: nothing to stop; resume starts the step again.
                self._stop_timer(run, "retry")
                run.retry_at = None
                self._release(job_id)
                await self._commit(
                    job_id,
                    lambda j: _set(
                        j,
                        state=S.JOB_STATE_PAUSED,
                        pause_mode=S.PAUSE_MODE_CHECKPOINT,
                        reason="paused between attempts",
                    ),
                )[1]
            elif mode == S.PAUSE_MODE_SUSPEND:
                try:
                    await executor.suspend(run.handle)
                except Unsupported as exc:
                    raise FailedPrecondition(str(exc), reason="PAUSE_MODE_UNSUPPORTED") from None
                await self._commit(
                    job_id, lambda j: _set(j, state=S.JOB_STATE_PAUSED, pause_mode=mode, reason="suspended")
                )[1]
            else:
                grace = job.spec.pause.grace.ToTimedelta().total_seconds()
                signum = _signal.Signals[job.spec.pause.signal or "SIGTERM"]
                run.kill_at = time.time() + grace
                run.killed = False
                await self._commit(
                    job_id,
                    lambda j: _set(
                        j,
                        state=S.JOB_STATE_PAUSING,
                        pause_mode=mode,
                        reason=f"asked to checkpoint and exit ({signum.name}, "
                        f"grace {format_duration(grace)})",
                    ),
                )[1]
                run.pause_delivered = await executor.signal(run.handle, signum)
                self._arm_kill(job_id, grace)
            self._schedule()
            return self._jobs[job_id]

    async def resume(self, job_id: str) -> job_pb2.Job:
        run = self._run(job_id)
        async with run.lock:
            job = self._jobs[job_id]
            if job.state != S.JOB_STATE_PAUSED:
                raise FailedPrecondition(
                    f"job {job_id} is {state_name(job.state)}; only a PAUSED job can be resumed",
                    reason="JOB_NOT_PAUSED",
                    metadata={"job_id": job_id, "state": state_name(job.state)},
                )
            if run.paused_at is not None:
                run.paused_seconds += max(0.0, time.time() - run.paused_at)
                run.paused_at = None
            if run.handle is not None:
                await self._executors[job.executor].resume(run.handle)
                await self._commit(job_id, lambda j: _set(j, state=S.JOB_STATE_RUNNING, reason=""))[1]
                self._arm_deadline(job_id)
                return self._jobs[job_id]
            run.resuming = True
            if self._slots < self.max_running:
                self._take_slot(job_id)
                await self._continue_paused(job_id)
            else:
                await self._commit(
                    job_id,
                    lambda j: _set(j, state=S.JOB_STATE_QUEUED, reason="resumed; waiting for a free slot"),
                )[1]
                self._queue.appendleft(job_id)
            return self._jobs[job_id]

    async def delete(self, job_id: str) -> int:
        """Remove an ended job and its run directory; checkpoints stay."""
        run = self._run(job_id)
        async with run.lock:
            job = self._jobs[job_id]
            if job.state not in TERMINAL:
                raise FailedPrecondition(
                    f"job {job_id} is {state_name(job.state)}; only an ended job can be deleted",
                    reason="JOB_NOT_ENDED",
                    metadata={"job_id": job_id, "state": state_name(job.state)},
                )
            self._revision += 1
            gone = job_pb2.Job()
            gone.CopyFrom(job)
            gone.revision = self._revision
            fut = self._registry.delete(gone)
            self._emit_when_durable(
                fut, job_pb2.JobEvent(revision=gone.revision, job=gone, type=S.JOB_EVENT_TYPE_DELETED)
            )
            await fut
            del self._jobs[job_id]
            del self._runs[job_id]
            self._order.remove(run.seq)
            del self._by_seq[run.seq]
            if job.request_id:
                self._by_request.pop(job.request_id, None)
            self._publisher.remove(job_id, job.run_dir)
            await self._executors[job.executor].forget(job_id)
            return gone.revision

    # ------------------------------------------------------------ inspection

    @property
    def running_count(self) -> int:
        """Jobs holding a slot: a process, or about to have one."""
        return self._slots

    async def health(self, job_id: str) -> JobHealth:
        """The job's processes now, from its executor, and when it last wrote output."""
        job = self.get(job_id)
        run = self._runs[job_id]
        last_output = await asyncio.to_thread(_mtime, os.path.join(job.run_dir, LOG_FILE))
        if run.handle is None or not run.handle.external_id:
            detail = {
                S.JOB_STATE_QUEUED: "queued: not started yet",
                S.JOB_STATE_PAUSED: "paused with a checkpoint: no process until it is resumed",
                S.JOB_STATE_RUNNING: "between attempts: the next one starts soon"
                if run.retry_at is not None
                else "starting: its process is being launched",
            }.get(job.state, f"{state_name(job.state).lower()}: the job has no process")
            return JobHealth(job, None, detail, last_output)
        executor = self._executors[job.executor]
        try:
            process = await executor.health(run.handle)
        except Unsupported as exc:
            return JobHealth(job, None, str(exc), last_output)
        return JobHealth(job, process, "", last_output)

    async def job_step(self, job_id: str, step: int, tail_lines: int) -> tuple[job_pb2.StepStatus, bytes]:
        """One step's status and the last ``tail_lines`` lines of its own output."""
        job = self.get(job_id)
        if step < 1 or step > len(job.steps):
            raise invalid_field("step", f"must be between 1 and {len(job.steps)} (the step count)")
        if tail_lines < 0:
            raise invalid_field("tail_lines", "must not be negative")
        entry = job.steps[step - 1]
        tail = b""
        if tail_lines and entry.state not in (S.STEP_STATE_PENDING, S.STEP_STATE_SKIPPED):
            path = Path(job.run_dir) / LOG_FILE
            end = entry.log_end if entry.log_end else None
            size = await asyncio.to_thread(_size, job.run_dir)
            start = await asyncio.to_thread(offset_of_last_lines, path, tail_lines, entry.log_start, end)
            tail = await asyncio.to_thread(read_range, path, start, end if end is not None else size)
        return entry, tail

    # ----------------------------------------------------------- checkpoints

    def _name_lock(self, key: tuple[str, str, str]) -> asyncio.Lock:
        return self._name_locks.setdefault(key, asyncio.Lock())

    async def delete_checkpoints(
        self, project: str, group: str, name: str, suffixes: list[str]
    ) -> tuple[int, int]:
        """Remove checkpoints of one job name; all of them when ``suffixes`` is empty."""
        for field_name, value in (("project", project), ("group", group), ("name", name)):
            problem = name_problem(value)
            if problem:
                raise invalid_field(field_name, problem)
        for i, suffix in enumerate(suffixes):
            problem = name_problem(suffix)
            if problem:
                raise invalid_field(f"suffixes[{i}]", problem)
        key = (project, group, name)
        async with self._name_lock(key):
            active = [
                j for j in self._jobs.values()
                if (j.project, j.group, j.name) == key and j.state in _ACTIVE
            ]  # fmt: skip
            if active:
                raise FailedPrecondition(
                    f"{project}/{group}/{name} has a run that is {state_name(active[0].state)} "
                    f"({active[0].id}); its checkpoints stay until it ends or is cancelled",
                    reason="JOB_ACTIVE",
                    metadata={"job_id": active[0].id},
                )
            base = self._layout.checkpoint_dir(project, group, name)
            present = await asyncio.to_thread(ckpt.existing, base)
            if suffixes:
                missing = [s for s in suffixes if s not in present]
                if missing:
                    raise NotFound(
                        f"no checkpoint {missing[0]!r} for {project}/{group}/{name}",
                        reason="CHECKPOINT_NOT_FOUND",
                        metadata={"suffix": missing[0]},
                    )
            return await asyncio.to_thread(ckpt.delete, base, list(suffixes) or present)

    async def clear_jobs(
        self,
        states: list[int],
        project: str,
        group: str,
        name: str,
        older_than: float,
        *,
        clear_all: bool = False,
        dry_run: bool = False,
    ) -> list[str]:
        """Delete ended jobs matching the filters, as DeleteJob does; returns their ids.

        With no filter at all, only when ``clear_all`` says so. With ``dry_run``,
        the ids that would be deleted, deleting nothing.
        """
        for i, st in enumerate(states):
            if st not in TERMINAL:
                raise invalid_field(
                    f"states[{i}]", f"{state_name(st)} is not an ended state (SUCCEEDED, FAILED, CANCELLED)"
                )
        if older_than < 0:
            raise invalid_field("older_than", "must not be negative")
        # An empty request is what a script with an unset variable sends: it must
        # not wipe every ended job unless it says it means to.
        if not (states or project or group or name or older_than > 0 or clear_all):
            raise invalid_field(
                "all",
                "no filter given: set states, project, group, name or older_than, "
                "or set all to clear every ended job",
                reason="CLEAR_FILTER_REQUIRED",
            )
        wanted = set(states) or set(TERMINAL)
        cutoff = time.time() - older_than
        flt = ListFilter(project, group, name, tuple(wanted))
        doomed = [
            j.id for j in self.jobs(flt)
            if j.end_time.ToDatetime().timestamp() <= cutoff or not j.HasField("end_time")
        ]  # fmt: skip
        if dry_run:
            return doomed
        deleted = []
        for job_id in doomed:
            with contextlib.suppress(NotFound, FailedPrecondition):
                await self.delete(job_id)
                deleted.append(job_id)
        return deleted

    # ------------------------------------------------------------------ internals

    def _run(self, job_id: str) -> _Run:
        self.get(job_id)
        return self._runs[job_id]

    def _commit(
        self, job_id: str, mutate: Callable[[job_pb2.Job], None], *, event: bool = True
    ) -> tuple[job_pb2.Job, asyncio.Future[None]]:
        """Apply a change: next revision, registry write, status.json, listeners.

        The new Job replaces the old object (never mutated in place), so a Job
        handed out earlier stays as it was.
        """
        job = job_pb2.Job()
        job.CopyFrom(self._jobs[job_id])
        mutate(job)
        now = _now()
        if event:
            self._revision += 1
            job.revision = self._revision
            job.update_time.CopyFrom(now)
        self._jobs[job_id] = job
        run = self._runs[job_id]
        fut = self._registry.put(run.seq, job, run.to_json(), S.JOB_EVENT_TYPE_UPDATED if event else None)
        self._publisher.publish(job)
        if event:
            self._emit_when_durable(
                fut, job_pb2.JobEvent(revision=job.revision, job=job, type=S.JOB_EVENT_TYPE_UPDATED)
            )
        else:
            fut.add_done_callback(_log_failure)
        return job, fut

    def _emit_when_durable(self, fut: asyncio.Future[None], event: job_pb2.JobEvent) -> None:
        """Tell listeners once the change is on disk.

        The registry settles its futures in write order, so listeners hear of
        changes in revision order, and never of one that a crash could take back.
        """

        def done(f: asyncio.Future[None]) -> None:
            if f.cancelled() or f.exception() is not None:
                _log_failure(f)
                return
            self._emit(event)

        fut.add_done_callback(done)

    def _emit(self, event: job_pb2.JobEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("listener_failed")

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_task_failure)

    def _take_slot(self, job_id: str) -> None:
        run = self._runs[job_id]
        if not run.holds_slot:
            run.holds_slot = True
            self._slots += 1

    def _release(self, job_id: str) -> None:
        run = self._runs.get(job_id)
        if run is not None and run.holds_slot:
            run.holds_slot = False
            self._slots -= 1

    def _schedule(self) -> None:
        """Start queued jobs, in submission order, while slots are free."""
        while not self._closed and self._queue and self._slots < self.max_running:
            job_id = self._queue.popleft()
            if self._jobs.get(job_id, job_pb2.Job()).state != S.JOB_STATE_QUEUED:
                continue
            self._take_slot(job_id)
            self._spawn_task(self._start_queued(job_id))

    async def _start_queued(self, job_id: str) -> None:
        run = self._runs[job_id]
        async with run.lock:
            job = self._jobs.get(job_id)
            if job is None or job.state != S.JOB_STATE_QUEUED:
                self._release(job_id)
                self._schedule()
                return
            if run.resuming:
                await self._continue_paused(job_id)
            else:
                await self._launch(job_id, step=job.start_step or 1, attempt=1, resume=False)

    async def _continue_paused(self, job_id: str) -> None:
        """Go on after a checkpoint pause. Called with the job's lock and a slot held.

        The current step starts again from the newest checkpoint, unless it had
        finished before the pause reached it (then the next step starts), or it
        had failed and was waiting for its retry (then that retry starts).
        """
        job = self._jobs[job_id]
        entry = job.steps[job.step - 1] if 0 < job.step <= len(job.steps) else None
        if entry is not None and entry.state == S.STEP_STATE_SUCCEEDED:
            if job.step < job.step_count:
                await self._launch(job_id, step=job.step + 1, attempt=1, resume=True)
            else:
                self._runs[job_id].resuming = False
                await self._finish(job_id, S.JOB_STATE_SUCCEEDED, ExitStatus(0), "")
        elif entry is not None and entry.state == S.STEP_STATE_FAILED:
            await self._launch(job_id, step=job.step, attempt=job.attempt + 1, resume=True)
        else:
            await self._launch(job_id, step=job.step, attempt=job.attempt, resume=True)

    async def _launch(self, job_id: str, *, step: int, attempt: int, resume: bool) -> None:
        """Start one attempt of one step. Called with the job's lock held."""
        run = self._runs[job_id]
        job = self._jobs[job_id]
        executor = self._executors[job.executor]
        model_steps = list(job.spec.steps) or [job_pb2.Step(name="main", command=job.spec.command)]
        current = model_steps[step - 1]
        first = not job.HasField("start_time")
        log_size = await asyncio.to_thread(_size, job.run_dir)
        # Under the name lock until the job shows as RUNNING, so delete_checkpoints
        # either sees it active or has finished before the checkpoint is chosen.
        async with self._name_lock((job.project, job.group, job.name)):
            resume_from = ""
            if first and job.resume_from_suffix:
                resume_from = os.path.join(job.checkpoint_dir, job.resume_from_suffix)
            elif resume or attempt > 1:
                latest = await asyncio.to_thread(
                    self._layout.latest_checkpoint, job.project, job.group, job.name
                )
                resume_from = str(latest) if latest else ""
            run.launch_seq += 1
            handle = executor.prepare(job_id, run.launch_seq)
            run.handle = handle
            run.resuming = False
            run.retry_at = None
            run.killed = False

            def mark(j: job_pb2.Job) -> None:
                now = _now()
                j.state = S.JOB_STATE_RUNNING
                j.step, j.attempt, j.step_name = step, attempt, current.name
                j.resume_from = resume_from
                j.external_id = ""
                j.reason = ""
                if first:
                    j.start_time.CopyFrom(now)
                    j.heartbeat_time.CopyFrom(now)
                steps_mod.step_started(j, step, attempt, log_size, now)

            durable = self._commit(job_id, mark)[1]
        # Durable before the process exists: a restart then asks the executor
        # about this launch instead of starting it a second time.
        await durable
        env = dict(job.spec.env)
        env.update(
            BATON_JOB_ID=job_id,
            BATON_RUN_DIR=job.run_dir,
            BATON_CHECKPOINT_DIR=job.checkpoint_dir,
            BATON_STEP=str(step),
            BATON_STEP_NAME=current.name,
            BATON_ATTEMPT=str(attempt),
            BATON_RESULT_FILE=os.path.join(job.run_dir, RESULT_FILE),
        )
        if resume_from:
            env["BATON_RESUME_FROM"] = resume_from
        launch = LaunchSpec(
            job_id=job_id,
            command=current.command,
            env=env,
            workdir=job.spec.workdir or job.run_dir,
            log_path=os.path.join(job.run_dir, LOG_FILE),
            resources=job.spec.resources,
            drain_seconds=int(max(job.spec.pause.grace.seconds, DEFAULT_CANCEL_GRACE)) + 30,
        )
        try:
            handle = await executor.launch(handle, launch)
        except (LaunchError, OSError) as exc:
            run.handle = None
            await self._finish(
                job_id, S.JOB_STATE_FAILED, None, f"could not start: {exc}", S.STEP_STATE_FAILED
            )
            return
        run.handle = handle
        self._commit(job_id, lambda j: _set(j, external_id=handle.external_id))
        run.waiter = asyncio.create_task(self._watch(job_id, handle))
        if first:
            self._arm_deadline(job_id)

    async def _watch(self, job_id: str, handle: Handle) -> None:
        executor = self._executors[handle.executor]
        status = await executor.wait(handle)
        run = self._runs.get(job_id)
        if run is None:
            return
        async with run.lock:
            if run.handle is not handle:
                return
            await self._on_exit(job_id, status)

    async def _on_exit(self, job_id: str, status: ExitStatus) -> None:
        """A launch ended. Called with the job's lock held."""
        run = self._runs[job_id]
        job = self._jobs[job_id]
        run.handle = None
        run.waiter = None
        self._stop_timer(run, "kill")
        run.kill_at = None
        log_size = await asyncio.to_thread(_size, job.run_dir)
        step = job.step
        if job.state == S.JOB_STATE_CANCELLING:
            await self._finish(
                job_id, S.JOB_STATE_CANCELLED, status, run.cancel_reason, S.STEP_STATE_CANCELLED, log_size
            )
        elif job.state == S.JOB_STATE_PAUSING:
            at_boundary = not run.pause_delivered and status.exit_code == 0 and status.signal is None
            pause_signal = job.spec.pause.signal or "SIGTERM"
            if at_boundary:
                how = f"at the end of step {step}"
            elif run.killed:
                how = "killed after the grace period"
            elif status.signal is not None and status.signal == _signal.Signals[pause_signal]:
                # Often only the shell in front of the job died of the signal; the
                # job itself saved and exited before the supervisor reported.
                how = f"stopped on {pause_signal}"
            else:
                how = describe_exit(status)
            self._release(job_id)

            def paused(j: job_pb2.Job) -> None:
                _set(j, state=S.JOB_STATE_PAUSED, reason=f"paused with a checkpoint ({how})")
                step_state = S.STEP_STATE_SUCCEEDED if at_boundary else S.STEP_STATE_PAUSED
                steps_mod.step_ended(j, step, step_state, status, log_size, _now(), how)

            await self._commit(job_id, paused)[1]
            self._schedule()
        elif status.exit_code == 0 and status.signal is None:
            if job.step < job.step_count:
                self._commit(
                    job_id,
                    lambda j: steps_mod.step_ended(j, step, S.STEP_STATE_SUCCEEDED, status, log_size, _now()),
                )
                await self._launch(job_id, step=job.step + 1, attempt=1, resume=False)
            else:
                await self._finish(
                    job_id, S.JOB_STATE_SUCCEEDED, status, "", S.STEP_STATE_SUCCEEDED, log_size
                )
        elif job.attempt <= job.spec.retries:
            delay = retry_backoff(job.attempt)
            run.retry_at = time.time() + delay
            what = (
                f"step {job.step_name!r} ({job.step} of {job.step_count})"
                if job.step_count > 1
                else "the job"
            )
            why = (
                f"{what} failed ({describe_exit(status)}); retry "
                f"{job.attempt} of {job.spec.retries} in {format_duration(delay)}"
            )

            def retrying(j: job_pb2.Job) -> None:
                j.reason = why
                steps_mod.step_ended(
                    j, step, S.STEP_STATE_FAILED, status, log_size, _now(), describe_exit(status)
                )

            await self._commit(job_id, retrying)[1]
            self._arm_retry(job_id, delay)
        else:
            what = f"step {job.step_name!r} " if job.step_count > 1 else ""
            await self._finish(
                job_id,
                S.JOB_STATE_FAILED,
                status,
                f"{what}failed: {describe_exit(status)}",
                S.STEP_STATE_FAILED,
                log_size,
            )

    async def _finish(
        self,
        job_id: str,
        state: int,
        status: ExitStatus | None,
        reason: str,
        step_state: int | None = None,
        log_size: int = 0,
    ) -> None:
        """End the job; with ``step_state``, its current step ends that way too."""
        run = self._runs[job_id]
        for name in list(run.timers):
            self._stop_timer(run, name)
        run.handle = None
        run.retry_at = run.kill_at = None
        job = self._jobs[job_id]
        result, problem = await asyncio.to_thread(read_result, Path(job.run_dir) / RESULT_FILE)
        if problem:
            reason = f"{reason}; result dropped: {problem}" if reason else f"result dropped: {problem}"

        def end(j: job_pb2.Job) -> None:
            now = _now()
            j.state = state  # type: ignore[assignment]
            j.reason = reason
            j.end_time.CopyFrom(now)
            if status is not None and status.exit_code is not None:
                j.exit_code = status.exit_code
            if status is not None and status.signal is not None:
                j.signal = status.signal
            if result is not None:
                j.result.CopyFrom(result)
            if step_state is not None and j.step:
                steps_mod.step_ended(j, j.step, step_state, status, log_size, now)

        self._release(job_id)
        await self._commit(job_id, end)[1]
        self._schedule()

    # ------------------------------------------------------------------ timers

    def _stop_timer(self, run: _Run, name: str) -> None:
        timer = run.timers.pop(name, None)
        if timer:
            timer.cancel()

    def _arm(self, job_id: str, name: str, delay: float, action: Callable[[], Any]) -> None:
        run = self._runs[job_id]
        self._stop_timer(run, name)
        loop = asyncio.get_running_loop()

        def fire() -> None:
            run.timers.pop(name, None)
            self._spawn_task(action())

        run.timers[name] = loop.call_later(max(0.0, delay), fire)

    def _arm_kill(self, job_id: str, grace: float) -> None:
        async def kill() -> None:
            run = self._runs.get(job_id)
            if run is None or run.handle is None:
                return
            run.killed = True
            await self._executors[run.handle.executor].signal(run.handle, _signal.SIGKILL)

        self._arm(job_id, "kill", grace, kill)

    def _arm_retry(self, job_id: str, delay: float) -> None:
        async def retry() -> None:
            run = self._runs.get(job_id)
            if run is None:
                return
            async with run.lock:
                job = self._jobs.get(job_id)
                if job is None or job.state != S.JOB_STATE_RUNNING or run.handle is not None:
                    return
                await self._launch(job_id, step=job.step, attempt=job.attempt + 1, resume=False)

        self._arm(job_id, "retry", delay, retry)

    def _arm_deadline(self, job_id: str) -> None:
        job = self._jobs[job_id]
        if not job.spec.HasField("max_duration"):
            return
        limit = job.spec.max_duration.ToTimedelta().total_seconds()
        started = job.start_time.ToDatetime().timestamp()
        run = self._runs[job_id]
        delay = started + limit + run.paused_seconds - time.time()

        async def expire() -> None:
            with contextlib.suppress(FailedPrecondition, NotFound):
                await self.cancel(job_id, None, f"max_duration {format_duration(limit)} exceeded")

        self._arm(job_id, "deadline", delay, expire)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            for job_id, job in list(self._jobs.items()):
                if job.state == S.JOB_STATE_RUNNING:
                    self._commit(job_id, lambda j: j.heartbeat_time.CopyFrom(_now()), event=False)

    # ------------------------------------------------------------------ recovery

    async def _recover(self, job_id: str) -> None:
        run = self._runs[job_id]
        job = self._jobs[job_id]
        state = job.state
        if state == S.JOB_STATE_QUEUED:
            if run.resuming:
                self._queue.appendleft(job_id)
            else:
                self._queue.append(job_id)
            return
        if run.handle is None:
            if state == S.JOB_STATE_RUNNING and run.retry_at is not None:
                self._take_slot(job_id)
                self._arm_retry(job_id, run.retry_at - time.time())
            elif state == S.JOB_STATE_CANCELLING:
                await self._finish(job_id, S.JOB_STATE_CANCELLED, None, run.cancel_reason)
            elif state in (S.JOB_STATE_PAUSING, S.JOB_STATE_RUNNING):
                await self._commit(
                    job_id,
                    lambda j: _set(
                        j,
                        state=S.JOB_STATE_PAUSED,
                        pause_mode=S.PAUSE_MODE_CHECKPOINT,
                        reason="paused: the conductor restarted between attempts",
                    ),
                )[1]
            return
        executor = self._executors.get(run.handle.executor)
        if executor is None:
            await self._finish(
                job_id, S.JOB_STATE_FAILED, None, f"executor {run.handle.executor!r} is not offered any more"
            )
            return
        attachment = await executor.reattach(run.handle)
        self._take_slot(job_id)
        handle = run.handle
        if attachment.presence is Presence.RUNNING:
            log.info("reattached", job_id=job_id, external_id=handle.external_id)
            run.waiter = asyncio.create_task(self._watch(job_id, handle))
            if state in (S.JOB_STATE_CANCELLING, S.JOB_STATE_PAUSING):
                self._arm_kill(job_id, (run.kill_at or time.time()) - time.time())
            elif state == S.JOB_STATE_RUNNING:
                self._arm_deadline(job_id)
            if not job.external_id and handle.external_id:
                self._commit(job_id, lambda j: _set(j, external_id=handle.external_id))
        elif attachment.presence is Presence.ENDED:
            assert attachment.status is not None
            log.info("ended_while_down", job_id=job_id, status=describe_exit(attachment.status))
            async with run.lock:
                await self._on_exit(job_id, attachment.status)
        else:
            log.info("relaunching_unstarted", job_id=job_id, step=job.step, attempt=job.attempt)
            async with run.lock:
                await self._launch(
                    job_id, step=job.step or job.start_step or 1, attempt=job.attempt or 1, resume=False
                )


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return None


def _size(run_dir: str) -> int:
    """The size of a run's output.log (0 before it exists); blocking."""
    try:
        return os.stat(os.path.join(run_dir, LOG_FILE)).st_size
    except FileNotFoundError:
        return 0


def _set(job: job_pb2.Job, **fields: Any) -> None:
    for key, value in fields.items():
        setattr(job, key, value)


def _log_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("registry_write_failed", error=str(fut.exception()))


def _log_task_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("lifecycle_task_failed", error=repr(task.exception()))

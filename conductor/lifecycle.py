"""The lifecycle: the one state machine of the conductor.

It holds the rules about running jobs: the queue, its limit and admission by
resources (see ``_schedule``), launching a step, what an exit means (next
step, retry, pause, end), pause in both modes, cancel and its grace, time
limits, heartbeats, and recovery after a restart.
Every change of state passes the table in ``transitions``. Everything else is
around it: the registry remembers, executors run processes, the publisher
writes status.json, the job book answers reads, the servicer translates.

Each change to a job gets the next revision and is handed to the registry in
revision order. Nothing is published (the job book, status.json, an event, a
reply) before the registry holds it, and any step with an outside effect
(starting or signalling a process, answering a submit) waits until the change
before it is durable, so a conductor killed at any moment neither loses a job
nor runs one twice, and a failed write shows nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import functools
import os
import secrets
import signal as _signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import structlog
from google.protobuf import timestamp_pb2

from baton.common import spec as specs
from baton.common.checkpoint_refs import one_checkpoint
from baton.common.durations import format_duration
from baton.common.errors import (
    AlreadyExists,
    BatonError,
    FailedPrecondition,
    FieldViolation,
    Internal,
    NotFound,
    ResourceExhausted,
    Unavailable,
    invalid_field,
)
from baton.common.jobs import FINAL_STATES
from baton.common.layout import (
    LATEST_REF,
    LOG_FILE,
    Layout,
    checkpoint_ref_problem,
    latest_checkpoint_in,
    make_run_checkpoint_dir,
)
from baton.conductor import logtrim, transitions
from baton.conductor import steps as steps_mod
from baton.conductor.capacity import Capacity, Free, Ledger, Request
from baton.conductor.executors.base import (
    Executor,
    ExitStatus,
    Handle,
    LaunchError,
    LaunchSpec,
    Presence,
    Unsupported,
)
from baton.conductor.jobbook import JobBook, not_found
from baton.conductor.jobenv import job_environment
from baton.conductor.orphans import mark_orphans
from baton.conductor.publisher import Publisher
from baton.conductor.registry import Registry, StorageError
from baton.conductor.results import RESULT_FILE, read_result
from baton.conductor.retention import RetentionPolicy, retain
from baton.conductor.runtime import NEW_RUN_NOTES, Run
from baton.conductor.secrets import SecretStore
from baton.v1 import job_pb2

log = structlog.get_logger(__name__)

S = job_pb2
DEFAULT_CANCEL_GRACE = 10.0
RETRY_BACKOFF_FIRST = 1.0
RETRY_BACKOFF_MAX = 60.0
# Pages a bulk deletion has in the registry's hands at once (``delete_pages``).
BULK_PAGES_IN_FLIGHT = 6
# How long a launch put off for want of storage waits before it is tried again.
STORAGE_RETRY_SECONDS = 2.0
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# The start of the reason of a job QUEUED for want of resources.
WAITING_FOR_RESOURCES = "waiting for resources: "
# States in which a run may still read checkpoints of its name (QUEUED: the one
# it was given to start from).
_ACTIVE = frozenset(
    {S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING, S.JOB_STATE_PAUSING, S.JOB_STATE_PAUSED, S.JOB_STATE_CANCELLING}
)


EventListener = Callable[[job_pb2.JobEvent], None]
T = TypeVar("T")


class Observer:
    """What the lifecycle tells of durable changes, for metrics (``conductor.metrics``).

    Called on the event loop, after the registry holds the change; this one does nothing.
    """

    def loaded(self, jobs: list[job_pb2.Job], ended: dict[int, int] | None = None) -> None:
        """The live jobs found in the registry at start, before any is recovered, and
        how many ended ones it holds by state (those are not read)."""

    def transition(self, job: job_pb2.Job, before: int) -> None:
        """``job`` went from state ``before`` to ``job.state`` (a new job: from UNSPECIFIED)."""

    def deleted(self, job: job_pb2.Job) -> None:
        """``job`` was deleted."""


class ForbiddenTransition(Exception):
    """A change of state that the table does not allow: a bug in the conductor."""


class _GivenCheckpointGone(Exception):
    """The checkpoint a run was submitted to start from was removed behind the conductor."""


# Each state's name without its prefix, made once: names are asked for on every change.
_STATE_NAMES = {value: name.removeprefix("JOB_STATE_") for name, value in S.JobState.items()}


def state_name(state: int) -> str:
    """A state's name without its prefix (RUNNING); a number no JobState has (clients send any) as such."""
    name = _STATE_NAMES.get(state)
    return f"unknown state {state}" if name is None else name


def _now() -> timestamp_pb2.Timestamp:
    # To the microsecond, as GetCurrentTime gives it, without its trip through datetime.
    micros = time.time_ns() // 1000
    return timestamp_pb2.Timestamp(seconds=micros // 1_000_000, nanos=micros % 1_000_000 * 1000)


def _at(status: ExitStatus | None) -> timestamp_pb2.Timestamp:
    """When an exit happened: as the executor recorded it, else now."""
    if status is None or status.time is None:
        return _now()
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(status.time * 1e9))
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


def storage_refusal(fault: StorageError) -> BatonError:
    """The client's answer when the registry cannot write: nothing was changed."""
    if fault.full:
        return ResourceExhausted(
            f"the conductor cannot record this: {fault}; nothing was changed, try again once space is freed",
            reason="STORAGE_FULL",
        )
    return Unavailable(
        f"the conductor cannot record this: {fault}; nothing was changed, try again later",
        reason="STORAGE_UNAVAILABLE",
    )


def log_size(run_dir: str) -> int:
    """The size of a run's output.log (0 before it exists); blocking."""
    try:
        return os.stat(os.path.join(run_dir, LOG_FILE)).st_size
    except FileNotFoundError:
        return 0


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
        backfill_window: float = 300.0,
        secrets: SecretStore | None = None,
        retention: RetentionPolicy | None = None,
        observer: Observer | None = None,
    ) -> None:
        self._registry = registry
        self._observer = observer or Observer()
        self._retention = retention or RetentionPolicy()
        # Ended jobs deleted by retention, since start.
        self.retention_deleted = 0
        self._secrets = secrets or SecretStore(None)
        self._executors = executors
        self.layout = layout
        self._publisher = publisher
        self.max_running = max_running
        self._heartbeat_interval = heartbeat_interval
        self.backfill_window = backfill_window
        # What each executor with a capacity has free; a job holds its share
        # exactly while it holds a slot (``_take_slot``, ``_release``).
        self._ledgers = {
            name: Ledger(ex.capacity) for name, ex in executors.items() if ex.capacity is not None
        }
        # Queued jobs whose reason says they wait for resources (kept true by ``_schedule``).
        self._waiting: set[str] = set()
        # What reads see: each job as the registry durably holds it.
        self.book = JobBook(registry)
        # Ended jobs still in memory, to be evicted once nothing works on them.
        self._ended: set[str] = set()
        # The lifecycle's working copies: ahead of the book by the writes in flight.
        self._jobs: dict[str, job_pb2.Job] = {}
        self._runs: dict[str, Run] = {}
        self._by_request: dict[str, str] = {}
        self._submitting: dict[str, asyncio.Task[job_pb2.Job]] = {}
        self._queue: deque[str] = deque()
        self._slots = 0
        self._revision = 0
        self._next_seq = 1
        self._listeners: list[EventListener] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._name_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._closed = False
        # Until every job found running has taken back its slot and GPUs, none
        # is given out: a job that ended while the conductor was down must not
        # hand a queued job the GPUs of one still being re-attached.
        self._recovering = True

    # ------------------------------------------------------------------ start/stop

    async def start(self) -> None:
        """Load what the registry says is live, and pick up each such job on its own.

        Ended jobs stay in the registry: only their counts are read.
        """
        opened = await self._registry.open()
        max_rev = opened.max_revision
        self._next_seq = opened.next_seq
        self.book.load_counts(opened.ended_counts)
        damaged: dict[str, Exception] = {}
        for item in opened.live:
            job = item.job
            try:
                run = Run.from_json(item.seq, item.runtime)
            except (ValueError, KeyError, TypeError) as exc:
                run = Run(seq=item.seq)
                damaged[job.id] = exc
            self._jobs[job.id] = job
            self._runs[job.id] = run
            self.book.put(item.seq, job)
            if job.request_id:
                self._by_request[job.request_id] = job.id
            max_rev = max(max_rev, job.revision)
        for row in opened.damaged:
            # Unreadable, but its idempotency key stays taken.
            if row.request_id:
                self._by_request[row.request_id] = row.job_id
        self._revision = self.book.revision = max_rev
        self._observer.loaded(list(self._jobs.values()), opened.ended_counts)
        self._publisher.set_published(opened.published_revision or 0)
        self._publisher.set_on_published(self._registry.note_published)
        await self._repair_status_files(opened.published_revision)
        recoveries: list[Coroutine[Any, Any, None]] = []
        for item in opened.live:
            job = item.job
            if job.id not in self._jobs:
                continue
            if job.id in damaged:
                recoveries.append(
                    self._fail_internal(job.id, damaged[job.id], "its runtime notes are damaged")
                )
            elif job.state == S.JOB_STATE_QUEUED:
                run = self._runs[job.id]
                if run.resuming or run.deferred:
                    self._queue.appendleft(job.id)
                else:
                    self._queue.append(job.id)
            else:
                recoveries.append(self._recover_guarded(job.id))
        # Each job on its own, all at once: one that fails cannot hold up the rest.
        await asyncio.gather(*recoveries)
        self._recovering = False
        self._schedule()
        self._spawn_task(self._heartbeats())
        self._spawn_task(self._log_bounds())
        self._spawn_task(self._evictions())
        self._spawn_task(self._mark_orphans(time.time()))
        if self._retention.active:
            self._spawn_task(self._retain())
        log.info(
            "lifecycle_started",
            jobs=len(self._jobs),
            ended=sum(opened.ended_counts.values()),
            revision=self._revision,
            queued=len(self._queue),
            running=self._slots,
        )

    async def _repair_status_files(self, published: int | None) -> None:
        """Write again the status files a crash may have left behind their records.

        Only those the registry knows to be stale: changed after the last
        revision known published, plus running jobs (a heartbeat changes a
        job without a revision). Run directories of jobs deleted since are
        removed again.
        """
        stale = await self._registry.stale(published)
        rewritten = 0
        for job in stale.jobs:
            if job.id in self._jobs:
                job = self._jobs[job.id]
            self._publisher.publish(job)
            rewritten += 1
        for job in self._jobs.values():
            if job.state in _WRITING_STATES and job.revision <= (published or 0):
                self._publisher.publish(job)
                rewritten += 1
        for gone in stale.deleted:
            self._publisher.remove(gone.id, gone.run_dir, gone.revision)
        if rewritten or stale.deleted:
            log.info("status_files_repaired", rewritten=rewritten, removed=len(stale.deleted))

    async def stop(self) -> None:
        """Stop supervising; jobs keep running and a new conductor re-attaches."""
        self._closed = True
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
        # Written before the registry closes, so it keeps how far publishing got.
        await asyncio.to_thread(self._publisher.flush, 5.0)

    def add_listener(self, listener: EventListener) -> None:
        """Call ``listener`` with every durable change, in revision order.

        An event with no job says only that its revision is settled with
        nothing to show (a submission that storage refused).
        """
        self._listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    @property
    def revision(self) -> int:
        return self._revision

    # ------------------------------------------------------------------ reads

    async def get(self, job_id: str) -> job_pb2.Job:
        """The job as reads see it, from memory or the registry; NotFound when there is none."""
        return await self.book.get(job_id)

    async def lookup(self, job_id: str) -> job_pb2.Job | None:
        """The job, or None when there is no such job (any more)."""
        return await self.book.lookup(job_id)

    def jobs_by_id(self, job_id: str) -> job_pb2.Job | None:
        """The job if it is in memory (every live job is), else None; never waits."""
        return self.book.find(job_id)

    @property
    def damaged_rows(self) -> int:
        """Registry rows found unreadable (at start, or by a read since)."""
        return len(self._registry.damaged)

    def executors(self) -> dict[str, Executor]:
        """The executors this conductor offers, by name."""
        return dict(self._executors)

    def executor(self, name: str) -> Executor:
        return self._executors[name]

    def launch_of(self, job_id: str) -> tuple[Handle | None, bool]:
        """The job's current launch, if any, and whether a retry of it is due."""
        run = self._runs.get(job_id)
        if run is None:  # ended and out of memory: nothing runs
            return None, False
        return run.handle, run.retry_at is not None

    def name_lock(self, key: tuple[str, str, str]) -> asyncio.Lock:
        """Held while a run of this job name chooses its checkpoint or its checkpoints go."""
        return self._name_locks.setdefault(key, asyncio.Lock())

    def active_runs(self, key: tuple[str, str, str]) -> list[job_pb2.Job]:
        """Runs of one job name that have not ended."""
        return [j for j in self._jobs.values() if (j.project, j.group, j.name) == key and j.state in _ACTIVE]

    @property
    def running_count(self) -> int:
        """Jobs holding a slot: a process, or about to have one."""
        return self._slots

    def resources(self, executor: str) -> tuple[Capacity, Free] | None:
        """An executor's capacity and what is free of it now; None when Baton does not account for it."""
        ledger = self._ledgers.get(executor)
        return None if ledger is None else (ledger.capacity, ledger.free())

    # ------------------------------------------------------------------ commands

    async def submit(
        self,
        model: specs.SpecModel,
        *,
        start_step: int = 0,
        request_id: str = "",
        dry_run: bool = False,
        resume_from: str = "",
        submitted_by: str = "",
    ) -> job_pb2.Job:
        """Queue a job; answers once it is durable. Same ``request_id``, same job."""
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
        if model.secret_env:
            await self._secrets.check(model.secret_env)
        spec = specs.to_proto(model)
        if request_id and not dry_run:
            existing = await self._submitted(request_id)
            if existing is not None:
                return _same_request(existing, spec, start_step)
        ledger = self._ledgers.get(model.executor)
        if ledger is not None:
            # Refused now rather than queued for ever: no amount of waiting makes it fit.
            _refuse_beyond(model.executor, ledger.capacity, Request.of(spec.resources))
        if resume_from:
            resume_from = await self._resolve_resume_from(model, resume_from)
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
            create_time=_now(),
            resume_from=resume_from,
            submitted_by=submitted_by,
        )
        steps_mod.init_steps(job, [s.name for s in steps], max(start_step, 1))
        if dry_run:
            return job
        return await self._owned(self._create(job))

    async def _create(self, job: job_pb2.Job) -> job_pb2.Job:
        """Record a new job and queue it; in a task of its own, so it is carried through."""
        request_id = job.request_id
        while request_id:
            # Another submit with this key may have got here first (it may have failed).
            existing = await self._submitted(request_id)
            if existing is not None:
                return _same_request(existing, job.spec, job.start_step)
            owner = self._by_request.get(request_id)
            if owner is None:
                break
            if owner in self._submitting or self.book.find(owner) is not None:
                # Made by another submit while this one looked in the registry: ask again.
                continue
            raise AlreadyExists(
                f"request_id {request_id!r} belongs to job {owner}, whose record cannot be read",
                reason="REQUEST_ID_REUSED",
                metadata={"job_id": owner},
            )
        job_id = _new_id()
        while job_id in self._jobs:
            job_id = _new_id()
        job.id = job.run_id = job_id
        # Each run its own checkpoint directory: runs of one name never see or overwrite each other's.
        job.run_dir, job.checkpoint_dir = self.layout.run_paths(job.project, job.group, job.name, job_id)
        self._revision += 1
        job.revision = self._revision
        job.update_time.CopyFrom(job.create_time)
        run = Run(seq=self._next_seq)
        self._next_seq += 1
        self._jobs[job_id] = job
        self._runs[job_id] = run
        if request_id:
            self._by_request[request_id] = job_id
        this = asyncio.current_task()
        assert this is not None
        self._submitting[job_id] = this
        fut = self._registry.insert(run.seq, job, NEW_RUN_NOTES)
        fut.add_done_callback(functools.partial(self._written, run.seq, job, S.JOB_STATE_UNSPECIFIED, True))
        try:
            await fut
        except BaseException as exc:
            # Never written: forget it as if it had not been asked for.
            del self._jobs[job_id]
            del self._runs[job_id]
            if request_id and self._by_request.get(request_id) == job_id:
                del self._by_request[request_id]
            if isinstance(exc, StorageError):
                raise storage_refusal(exc) from None
            if not isinstance(exc, Exception):
                raise
            log.error("submit_not_recorded", job_id=job_id, error=repr(exc)[:200], exc_info=exc)
            raise Internal(
                "the conductor could not record the job; see its log", reason="REGISTRY_FAILED"
            ) from exc
        finally:
            del self._submitting[job_id]
        self._queue.append(job_id)
        self._schedule()
        return job

    async def _submitted(self, request_id: str) -> job_pb2.Job | None:
        """The durable job an earlier submit with ``request_id`` made, if any.

        While that submit is still being recorded, its outcome: the job once it
        is durable, or None when it was refused (the key is free again).
        """
        job_id = self._by_request.get(request_id)
        if job_id is None:
            # Ended jobs' keys are only in the registry.
            stored = await self._registry.find_request(request_id)
            if self._by_request.get(request_id) is not None:
                # Another submit took the key while this one looked.
                return await self._submitted(request_id)
            if stored is None:
                return None
            job = await self.book.lookup(stored)
            if job is None and self._by_request.get(request_id) is not None:
                return await self._submitted(request_id)
            if job is None:
                raise AlreadyExists(
                    f"request_id {request_id!r} belongs to job {stored}, whose record cannot be read",
                    reason="REQUEST_ID_REUSED",
                    metadata={"job_id": stored},
                )
            return job
        pending = self._submitting.get(job_id)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except Exception:
                return None
        return self.book.find(job_id)

    async def _resolve_resume_from(self, model: specs.SpecModel, ref: str) -> str:
        """The one checkpoint ``ref`` names among every run of the name and the plain layout.

        ``SUFFIX``, ``RUN_ID/SUFFIX`` or ``latest`` (the newest of them all);
        returned as the exact ref it resolved to, so the run starts from that
        one whatever is written later.
        """
        problem = checkpoint_ref_problem(ref) if ref != LATEST_REF else None
        if problem:
            raise invalid_field("resume_from", problem)
        key = f"{model.project}/{model.group}/{model.name}"
        found = await asyncio.to_thread(
            self.layout.find_checkpoints, model.project, model.group, model.name, ref
        )
        return one_checkpoint(found, ref, key, "resume_from", lambda f: f.ref).ref

    async def cancel(self, job_id: str, grace: float | None, reason: str) -> job_pb2.Job:
        return await self._owned(self._cancel(job_id, grace, reason))

    async def _cancel(self, job_id: str, grace: float | None, reason: str) -> job_pb2.Job:
        run = await self._live_run(job_id, _already_ended)
        async with run.lock:
            job = await self._locked_job(job_id, _already_ended)
            if job.state in FINAL_STATES:
                raise _already_ended(job)
            if job.state == S.JOB_STATE_CANCELLING:
                return job
            self._refuse_when_degraded()
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
        await executor.terminate(run.handle)
        if was_suspended:
            await executor.resume(run.handle)
        self._arm_kill(job_id, grace)

    async def pause(self, job_id: str, mode: int) -> job_pb2.Job:
        if mode not in S.PauseMode.values():
            raise invalid_field("mode", f"{mode} is not a PauseMode (UNSPECIFIED, SUSPEND or CHECKPOINT)")
        return await self._owned(self._pause(job_id, mode))

    async def _pause(self, job_id: str, mode: int) -> job_pb2.Job:
        run = await self._live_run(job_id, _not_running)
        async with run.lock:
            job = await self._locked_job(job_id, _not_running)
            if job.state != S.JOB_STATE_RUNNING:
                raise _not_running(job)
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
            self._refuse_when_degraded()
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
                run.pause_delivered = await executor.request_checkpoint(run.handle, signum.name)
                self._arm_kill(job_id, grace)
            self._schedule()
            return self._jobs[job_id]

    async def resume(self, job_id: str) -> job_pb2.Job:
        return await self._owned(self._resume(job_id))

    async def _resume(self, job_id: str) -> job_pb2.Job:
        run = await self._live_run(job_id, _not_paused)
        async with run.lock:
            job = await self._locked_job(job_id, _not_paused)
            if job.state != S.JOB_STATE_PAUSED:
                raise _not_paused(job)
            self._refuse_when_degraded()
            if run.paused_at is not None:
                run.paused_seconds += max(0.0, time.time() - run.paused_at)
                run.paused_at = None
            if run.handle is not None:
                await self._executors[job.executor].resume(run.handle)
                await self._commit(job_id, lambda j: _set(j, state=S.JOB_STATE_RUNNING, reason=""))[1]
                self._arm_deadline(job_id)
                return self._jobs[job_id]
            run.resuming = True
            # First in line, as it was admitted once already; but it starts
            # only when its resources are free again (a checkpoint pause gave them up).
            short = self._shortfall(job)
            if self._slots < self.max_running and not short:
                self._take_slot(job_id)
                await self._continue_paused(job_id)
            else:
                reason = WAITING_FOR_RESOURCES + short if short else "resumed; waiting for a free slot"
                if short:
                    run.waiting_since = time.time()
                    self._waiting.add(job_id)
                await self._commit(job_id, lambda j: _set(j, state=S.JOB_STATE_QUEUED, reason=reason))[1]
                self._queue.appendleft(job_id)
                self._schedule()
            return self._jobs[job_id]

    async def delete(self, job_id: str, *, checkpoints: bool = False) -> int:
        """Remove an ended job and its run directory; checkpoints stay unless ``checkpoints``."""
        return await self._owned(self._delete(job_id, checkpoints))

    async def _delete(self, job_id: str, checkpoints: bool) -> int:
        run = self._runs.get(job_id)
        if run is not None and self.book.find(job_id) is not None:
            async with run.lock:
                job = self._jobs.get(job_id)
                if job is not None:
                    if job.state not in FINAL_STATES:
                        raise _not_ended(job)
                    return await self._delete_one(job, checkpoints)
        # Ended and out of memory (or evicted while this waited): from the registry.
        stored = await self.book.lookup(job_id)
        if stored is None:
            raise not_found(job_id)
        if stored.state not in FINAL_STATES:
            raise _not_ended(stored)
        return await self._delete_one(stored, checkpoints)

    async def _delete_one(self, job: job_pb2.Job, checkpoints: bool) -> int:
        self._refuse_when_degraded()
        gone = await self.delete_ended([job], checkpoints=checkpoints)
        if not gone:
            raise not_found(job.id)  # another deletion of it came first
        executor = self._executors.get(job.executor)
        if executor is not None:
            await executor.forget(job.id)
        return gone[0].revision

    async def delete_ended(
        self, jobs: list[job_pb2.Job], *, forget: bool = False, checkpoints: bool = False
    ) -> list[job_pb2.Job]:
        """Delete ended jobs in one registry write; those deleted, each at its deletion's revision.

        Each gets a revision of its own. A job already gone (deleted by
        another call meanwhile) is skipped: its revision settles with nothing
        to show. Run directories go in the background, after the jobs have
        left every answer; with ``forget`` the executors' records of them
        too, with ``checkpoints`` each run's own checkpoint directory too.
        Carried through even when its caller goes away.
        """
        self._refuse_when_degraded()
        return await self._owned(self._delete_ended(jobs, forget, checkpoints))

    async def _delete_ended(
        self, jobs: list[job_pb2.Job], forget: bool, checkpoints: bool
    ) -> list[job_pb2.Job]:
        # Each deletion's event is made here, once: its job is the version the
        # registry logs and the one listeners get (one copy of each job, not two).
        events = []
        for job in jobs:
            self._revision += 1
            event = job_pb2.JobEvent(revision=self._revision, type=S.JOB_EVENT_TYPE_DELETED)
            event.job.CopyFrom(job)
            event.job.revision = self._revision
            events.append(event)
        jobs = [e.job for e in events]
        fut = self._registry.delete(jobs)
        fut.add_done_callback(functools.partial(self._deleted, events, checkpoints))
        try:
            removed = await fut
        except Exception as exc:
            raise Internal("the conductor could not record the deletion; see its log") from exc
        out = [g for g in jobs if g.id in removed]
        for g in out:
            self._jobs.pop(g.id, None)
            self._runs.pop(g.id, None)
            self._ended.discard(g.id)
            if g.request_id and self._by_request.get(g.request_id) == g.id:
                del self._by_request[g.request_id]
        if forget and out:
            self._spawn_task(self._forget([(g.executor, g.id) for g in out]))
        return out

    async def delete_pages(
        self, pages: AsyncIterator[list[job_pb2.Job]], *, checkpoints: bool = False
    ) -> list[str]:
        """Delete the ended jobs ``pages`` give (ClearJobs, retention): each page in one
        registry write, as DeleteJob deletes each job; the ids deleted, in order.

        A page's work on the event loop is bounded by its size. A few pages are
        in flight at once: the next is read while the last ones are written, and
        the registry commits the writes queued together in one transaction.
        """
        out: list[str] = []
        writing: deque[asyncio.Future[list[str]]] = deque()
        try:
            async for page in pages:
                if len(writing) >= BULK_PAGES_IN_FLIGHT:
                    out += await writing.popleft()
                writing.append(asyncio.ensure_future(self._delete_page(page, checkpoints)))
            while writing:
                out += await writing.popleft()
        finally:
            # Failed or cancelled part way: the pages already handed over finish all the same.
            await asyncio.gather(*writing, return_exceptions=True)
            if out:  # one line for the lot, not one a page
                log.info("jobs_deleted", count=len(out), revision=self._revision)
        return out

    async def _delete_page(self, page: list[job_pb2.Job], checkpoints: bool) -> list[str]:
        out = []
        stored = []
        for job in page:
            if self.book.find(job.id) is None:
                stored.append(job)
                continue
            # Still in memory: the lifecycle may be finishing with it, so as DeleteJob does.
            with contextlib.suppress(NotFound, FailedPrecondition):
                await self.delete(job.id, checkpoints=checkpoints)
                out.append(job.id)
        if stored:
            gone = await self.delete_ended(stored, forget=True, checkpoints=checkpoints)
            out += [g.id for g in gone]
        return out

    async def _forget(self, jobs: list[tuple[str, str]]) -> None:
        by_executor: dict[str, list[str]] = {}
        for executor, job_id in jobs:
            by_executor.setdefault(executor, []).append(job_id)
        for executor, job_ids in by_executor.items():
            ex = self._executors.get(executor)
            if ex is not None:
                try:
                    await ex.forget_many(job_ids)
                except Exception as exc:  # records left behind cost disk, not correctness
                    log.warning("forget_failed", executor=executor, error=repr(exc)[:200])

    # ------------------------------------------------------------------ internals

    async def _live_run(self, job_id: str, refusal: Callable[[job_pb2.Job], BatonError]) -> Run:
        """The Run of a job in memory; for an ended job only the registry has, ``refusal`` of it."""
        if self.book.find(job_id) is not None:
            return self._runs[job_id]
        raise await self._refusal_for(job_id, refusal)

    async def _locked_job(self, job_id: str, refusal: Callable[[job_pb2.Job], BatonError]) -> job_pb2.Job:
        """The job, once its lock is held; evicted while waiting means it ended: ``refusal``."""
        job = self._jobs.get(job_id)
        if job is not None:
            return job
        raise await self._refusal_for(job_id, refusal)

    async def _refusal_for(self, job_id: str, refusal: Callable[[job_pb2.Job], BatonError]) -> BatonError:
        stored = await self.book.lookup(job_id)
        return not_found(job_id) if stored is None else refusal(stored)

    def _refuse_when_degraded(self) -> None:
        """Refuse a change up front while storage fails, rather than hang on it."""
        if self._registry.degraded is not None:
            raise storage_refusal(self._registry.degraded)

    def _commit(
        self, job_id: str, mutate: Callable[[job_pb2.Job], None], *, event: bool = True
    ) -> tuple[job_pb2.Job, asyncio.Future[None]]:
        """Apply a change: the table's check, the next revision, the registry write.

        The new Job replaces the old object (never mutated in place), so a Job
        handed out earlier stays as it was. It reaches the book, status.json
        and listeners once the registry holds it (``_written``).
        """
        before = self._jobs[job_id]
        job = job_pb2.Job()
        job.CopyFrom(before)
        mutate(job)
        if not transitions.allowed(before.state, job.state):
            log.error(
                "forbidden_transition",
                job_id=job_id,
                from_state=state_name(before.state),
                to_state=state_name(job.state),
            )
            raise ForbiddenTransition(f"{state_name(before.state)} -> {state_name(job.state)}")
        if event:
            self._revision += 1
            job.revision = self._revision
            job.update_time.CopyFrom(_now())
        self._jobs[job_id] = job
        run = self._runs[job_id]
        fut = self._registry.put(run.seq, job, run.to_json(), S.JOB_EVENT_TYPE_UPDATED if event else None)
        fut.add_done_callback(functools.partial(self._written, run.seq, job, before.state, event))
        return job, fut

    def _written(
        self, seq: int, job: job_pb2.Job, before: int, event: bool, fut: asyncio.Future[None]
    ) -> None:
        """A write settled. The registry settles in write order, so this runs in revision order."""
        if fut.cancelled() or fut.exception() is not None:
            if before != S.JOB_STATE_UNSPECIFIED:
                log.error("registry_write_failed", job_id=job.id, error=_error_text(fut))
            if event:
                # Nothing to show at this revision, but it is settled.
                self._emit(job_pb2.JobEvent(revision=job.revision))
            return
        self.book.put(seq, job)
        self._publisher.publish(job)
        if job.state in FINAL_STATES and job.id not in self._ended:
            self._ended.add(job.id)
            executor = self._executors.get(job.executor)
            # Its exit is recorded for good: the launch records go.
            for path in executor.ended_records(job.run_dir) if executor is not None and job.run_dir else ():
                self._publisher.remove_records(job.id, path, job.revision)
        if not event:
            return
        if before != job.state:
            self._observer.transition(job, before)
            log.info(
                "job_transition",
                job_id=job.id,
                from_state=state_name(before),
                to_state=state_name(job.state),
                reason=job.reason,
                revision=job.revision,
            )
        self._emit(job_pb2.JobEvent(revision=job.revision, job=job, type=S.JOB_EVENT_TYPE_UPDATED))

    def _deleted(
        self, events: list[job_pb2.JobEvent], checkpoints: bool, fut: asyncio.Future[set[str]]
    ) -> None:
        if fut.cancelled() or fut.exception() is not None:
            ids = [e.job.id for e in events[:10]]
            log.error("registry_write_failed", job_ids=ids, error=_error_text(fut))
            for e in events:
                self._emit(job_pb2.JobEvent(revision=e.revision))
            return
        removed = fut.result()
        shown = []
        for e in events:
            if e.job.id in removed:
                self.book.remove(e.job, e.revision)
                self._observer.deleted(e.job)
                shown.append(e.job)
        # Their directories are handed over in one go; they go in the background.
        self._publisher.remove_runs(shown, checkpoints=checkpoints)
        for e in events:
            self._emit(e if e.job.id in removed else job_pb2.JobEvent(revision=e.revision))
        if len(events) == 1 and shown:
            log.info("job_deleted", job_id=shown[0].id, revision=shown[0].revision)

    def _emit(self, event: job_pb2.JobEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("listener_failed")

    async def _owned(self, coro: Coroutine[Any, Any, T]) -> T:
        """Carry a command through to its end even when its caller goes away.

        A handler cancelled by a client's deadline would otherwise stop half
        way: a change written but not carried out (no signal sent), or
        carried out but never shown. The command runs in a task of its own;
        the caller only waits for it.
        """
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_unexpected_failure)
        return await asyncio.shield(task)

    def _spawn_task(self, coro: Coroutine[Any, Any, Any], job_id: str = "") -> asyncio.Task[Any]:
        """Run ``coro`` as a task that is watched: its failure fails ``job_id``'s job.

        It starts with a context of its own: no request caused what it does,
        so no request's log context (method, peer) labels it.
        """
        task = asyncio.create_task(coro, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(functools.partial(self._task_done, job_id))
        return task

    def _task_done(self, job_id: str, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        if job_id and not self._closed:
            self._spawn_task(self._fail_internal(job_id, exc, "an internal error"))
        else:
            log.error("lifecycle_task_failed", error=repr(exc)[:200], exc_info=exc)

    async def _fail_internal(self, job_id: str, exc: BaseException, what: str) -> None:
        """An internal error hit a job: end it FAILED, saying so, and free its slot."""
        log.error("job_internal_error", job_id=job_id, what=what, error=repr(exc)[:200], exc_info=exc)
        run = self._runs.get(job_id)
        if run is None:
            return
        try:
            async with run.lock:
                job = self._jobs.get(job_id)
                if job is None or job.state in FINAL_STATES:
                    return
                # A FAILED job leaves nothing running behind it, even when the
                # record of its launch is what was lost.
                with contextlib.suppress(Exception):
                    if run.handle is not None:
                        await self._executors[run.handle.executor].kill(run.handle)
                    elif job.executor in self._executors:
                        await self._executors[job.executor].kill_all(job_id)
                with contextlib.suppress(ValueError):
                    self._queue.remove(job_id)
                why = f"failed in the conductor: {what}; see its log"
                await self._finish(job_id, S.JOB_STATE_FAILED, None, why, with_result=False)
        except Exception as again:
            log.error("job_internal_error_unhandled", job_id=job_id, error=repr(again)[:200], exc_info=again)
        finally:
            self._release(job_id)
            self._schedule()

    def _take_slot(self, job_id: str, *, restore: bool = False) -> None:
        """Hold a slot and, on an executor with a capacity, the job's resources.

        The caller has checked that they fit; with ``restore`` (a job found
        running, or between retries, after a restart) the GPUs it was given
        before are taken again as they are, fitting or not.
        """
        run = self._runs[job_id]
        if run.holds_slot:
            return
        run.holds_slot = True
        self._slots += 1
        run.waiting_since = None
        self._waiting.discard(job_id)
        job = self._jobs[job_id]
        ledger = self._ledgers.get(job.executor)
        if ledger is not None:
            request = Request.of(job.spec.resources)
            run.gpus = ledger.take(job_id, request, run.gpus if restore else None)

    def _release(self, job_id: str) -> None:
        """Give back the job's slot and resources (its process has exited, or never started)."""
        run = self._runs.get(job_id)
        if run is not None and run.holds_slot:
            run.holds_slot = False
            self._slots -= 1
            run.gpus = ()
            for ledger in self._ledgers.values():
                ledger.release(job_id)

    def _shortfall(self, job: job_pb2.Job) -> str:
        """What of its request the job's executor lacks now ("1 GPU (0 of 2 free)"); empty if none."""
        ledger = self._ledgers.get(job.executor)
        return "" if ledger is None else ledger.shortfall(Request.of(job.spec.resources))

    def _schedule(self) -> None:
        """Start queued jobs while slots are free: in queue order, each once its resources fit.

        The queue is submission order, with resumed jobs and launches put off
        for storage in front. A job with no resource request (or on an
        executor without a capacity) needs only a slot. A job whose request
        does not fit what is free stays QUEUED, its reason saying what it
        waits for, and later jobs that do fit start ahead of it (backfill),
        but only until it has waited ``backfill_window`` seconds: from then
        on no later job asking for resources on its executor starts before it,
        so the running ones drain until it fits. Later jobs asking for no
        resources still go: they hold only a slot, and a slot is freed
        whenever resources are, and goes to the first job in line.
        """
        if self._closed or self._recovering:
            return
        now = time.time()
        # Per executor, the first job that has waited past the window: nothing later passes it.
        held_for: dict[str, str] = {}
        blocked: list[str] = []
        # Jobs that would fit but wait behind such a one, and which one.
        kept_for: dict[str, str] = {}
        while self._queue and self._slots < self.max_running:
            job_id = self._queue.popleft()
            job = self._jobs.get(job_id)
            if job is None or job.state != S.JOB_STATE_QUEUED:
                self._waiting.discard(job_id)
                continue
            ledger = self._ledgers.get(job.executor)
            request = Request.of(job.spec.resources)
            if ledger is None or request.empty:
                self._start(job_id)
                continue
            if ledger.capacity.excess(request):
                # The capacity shrank across a restart: it would wait for ever.
                self._waiting.discard(job_id)
                self._spawn_task(self._never_fits(job_id), job_id)
                continue
            first = held_for.get(job.executor)
            short = ledger.shortfall(request)
            if not short and first is None:
                self._start(job_id)
                continue
            blocked.append(job_id)
            run = self._runs[job_id]
            if short:
                if run.waiting_since is None:
                    run.waiting_since = now
                if first is None and now - run.waiting_since >= self.backfill_window:
                    held_for[job.executor] = job_id
            elif first is not None:
                kept_for[job_id] = first
        # Blocked jobs keep their places, ahead of the rest.
        self._queue.extendleft(reversed(blocked))
        # Said once the pass is over, so the figures count what later jobs took in it.
        for job_id in blocked:
            short = self._shortfall(self._jobs[job_id])
            if short or job_id not in kept_for:
                self._wait_reason(job_id, WAITING_FOR_RESOURCES + short)
            else:
                self._wait_reason(
                    job_id,
                    f"{WAITING_FOR_RESOURCES}they are kept for job {kept_for[job_id]}, queued earlier "
                    f"and waiting longer than {format_duration(self.backfill_window)}",
                )
        self._refresh_waiting(set(blocked))

    def _start(self, job_id: str) -> None:
        self._take_slot(job_id)
        self._spawn_task(self._start_queued(job_id), job_id)

    def _wait_reason(self, job_id: str, reason: str) -> None:
        """Say why a queued job waits; written only when it changes, so passes of the
        scheduler that change nothing write nothing."""
        self._waiting.add(job_id)
        if self._jobs[job_id].reason != reason:
            self._commit(job_id, lambda j: _set(j, reason=reason))

    def _refresh_waiting(self, seen: set[str]) -> None:
        """Keep true the reasons of jobs waiting for resources that the last pass did not reach
        (it stops when the slots run out): freed resources leave them waiting for a slot only."""
        rest = self._waiting - seen
        if not rest:
            return
        queued = set(self._queue)
        for job_id in rest:
            job = self._jobs.get(job_id)
            if job is None or job.state != S.JOB_STATE_QUEUED or job_id not in queued:
                self._waiting.discard(job_id)
                continue
            short = self._shortfall(job)
            if short:
                self._wait_reason(job_id, WAITING_FOR_RESOURCES + short)
            else:
                self._waiting.discard(job_id)
                self._commit(job_id, functools.partial(_set, reason=self._slot_reason()))

    def _slot_reason(self) -> str:
        return f"waiting for a free slot ({self.max_running} run at once)"

    async def _never_fits(self, job_id: str) -> None:
        """End a queued job that asks for more than its executor has in all."""
        run = self._runs[job_id]
        async with run.lock:
            job = self._jobs.get(job_id)
            if job is None or job.state != S.JOB_STATE_QUEUED:
                return
            ledger = self._ledgers[job.executor]
            excess = ledger.capacity.excess(Request.of(job.spec.resources))
            asked = "; ".join(f"{e.asked} asked, {e.has} in all" for e in excess)
            why = f"could not start: the {job.executor} executor has less than it asks ({asked})"
            await self._finish(job_id, S.JOB_STATE_FAILED, None, why)

    async def _start_queued(self, job_id: str) -> None:
        run = self._runs[job_id]
        async with run.lock:
            job = self._jobs.get(job_id)
            if job is None or job.state != S.JOB_STATE_QUEUED:
                self._release(job_id)
                self._schedule()
                return
            if run.deferred is not None:
                step, attempt, resume = run.deferred
                await self._launch(job_id, step=step, attempt=attempt, resume=resume)
            elif run.resuming:
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

    def _prepare_run(self, job: job_pb2.Job) -> int:
        """Make the run's checkpoint directory (there before the job shows RUNNING,
        marked as this run's) and return its log's size (blocking).

        Not flushed: the registry, not the marker, is what says whose it is, and
        every launch writes a lost marker again.
        """
        make_run_checkpoint_dir(
            self.layout, job.project, job.group, job.name, job.id, job_id=job.id, sync=False
        )
        return log_size(job.run_dir)

    def _resume_point(self, job: job_pb2.Job, first: bool, resume: bool, attempt: int) -> str:
        """BATON_RESUME_FROM for a launch (blocking: it looks at the checkpoints).

        A resume or a retry continues this run: from the newest checkpoint it
        wrote itself, else from the one it was submitted with, else from
        nothing. Never from another run's, unless it was asked to start there.
        """
        if not (first or resume or attempt > 1):
            return ""
        if not first:
            own = latest_checkpoint_in(job.checkpoint_dir)
            if own is not None:
                return str(own)
        if not job.resume_from:
            return ""
        given = self.layout.find_checkpoints(job.project, job.group, job.name, job.resume_from)
        if not given:
            raise _GivenCheckpointGone(job.resume_from)
        return str(given[0].path)

    async def _launch(self, job_id: str, *, step: int, attempt: int, resume: bool) -> None:
        """Start one attempt of one step. Called with the job's lock held."""
        run = self._runs[job_id]
        job = self._jobs[job_id]
        executor = self._executors[job.executor]
        model_steps = list(job.spec.steps) or [job_pb2.Step(name="main", command=job.spec.command)]
        current = model_steps[step - 1]
        first = not job.HasField("start_time")
        try:
            size = await asyncio.to_thread(self._prepare_run, job)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                await self._defer_launch(job_id, (step, attempt, resume), exc.strerror or "no space left")
            else:
                why = f"could not make its checkpoint directory: {exc.strerror}"
                await self._finish(job_id, S.JOB_STATE_FAILED, None, why)
            return
        # Under the name lock until the job shows as RUNNING, so delete_checkpoints
        # either sees it active or has finished before the checkpoint is chosen.
        async with self.name_lock((job.project, job.group, job.name)):
            try:
                plain_start = first and not job.resume_from
                # A first launch with nothing to resume from needs no look at the disk.
                resume_from = (
                    ""
                    if plain_start
                    else await asyncio.to_thread(self._resume_point, job, first, resume, attempt)
                )
            except _GivenCheckpointGone as gone:
                why = f"could not start: the checkpoint it was to start from ({gone}) is gone"
                await self._finish(job_id, S.JOB_STATE_FAILED, None, why)
                return
            run.launch_seq += 1
            handle = executor.prepare(job_id, run.launch_seq, job.run_dir)
            run.handle = handle
            run.resuming = False
            run.retry_at = None
            run.killed = False
            run.deferred = None

            def mark(j: job_pb2.Job) -> None:
                now = _now()
                j.state = S.JOB_STATE_RUNNING
                j.step, j.attempt, j.step_name = step, attempt, current.name
                j.resume_dir = resume_from
                j.external_id = ""
                # An engine may keep the launch in its own queue a while.
                j.reason = _queued_reason(executor) if executor.queues else ""
                if first:
                    j.start_time.CopyFrom(now)
                    j.heartbeat_time.CopyFrom(now)
                steps_mod.step_started(j, step, attempt, size, now)

            durable = self._commit(job_id, mark)[1]
        # Durable before the process exists: a restart then asks the executor
        # about this launch instead of starting it a second time.
        await durable
        try:
            secret_values = await self._secrets.values(job.spec.secret_env)
        except LaunchError as exc:
            run.handle = None
            await self._finish(
                job_id, S.JOB_STATE_FAILED, None, f"could not start: {exc}", S.STEP_STATE_FAILED
            )
            return
        launch = LaunchSpec(
            job_id=job_id,
            command=current.command,
            env=job_environment(
                self._jobs[job_id],
                step,
                current.name,
                attempt,
                resume_from,
                run.gpus if job.executor in self._ledgers else None,
                secret_values,
            ),
            workdir=job.spec.workdir or job.run_dir,
            log_path=os.path.join(job.run_dir, LOG_FILE),
            resources=job.spec.resources,
            drain_seconds=int(max(job.spec.pause.grace.seconds, DEFAULT_CANCEL_GRACE)) + 30,
            # Baton's own max_duration timer cancels first, with its grace.
            time_limit_seconds=(
                job.spec.max_duration.ToTimedelta().total_seconds() + DEFAULT_CANCEL_GRACE + 60
                if job.spec.HasField("max_duration")
                else 0
            ),
        )
        try:
            handle = await executor.launch(handle, launch)
        except OSError as exc:
            run.handle = None
            if exc.errno in _NO_SPACE:
                await self._defer_launch(job_id, (step, attempt, resume), exc.strerror or "no space left")
            else:
                await self._finish(
                    job_id, S.JOB_STATE_FAILED, None, f"could not start: {exc.strerror}", S.STEP_STATE_FAILED
                )
            return
        except LaunchError as exc:
            run.handle = None
            await self._finish(
                job_id, S.JOB_STATE_FAILED, None, f"could not start: {exc}", S.STEP_STATE_FAILED
            )
            return
        run.handle = handle
        self._commit(job_id, lambda j: _set(j, external_id=handle.external_id))
        run.waiter = self._spawn_task(self._watch(job_id, handle), job_id)
        if first:
            self._arm_deadline(job_id)

    async def _until_started(self, job_id: str, handle: Handle, executor: Executor) -> None:
        """The job's reason says the engine queues it (set at launch) until it runs."""
        await executor.wait_started(handle)
        run = self._runs.get(job_id)
        if run is None or run.handle is not handle:
            return
        waiting = _queued_reason(executor)

        def started(j: job_pb2.Job) -> None:
            if j.state == S.JOB_STATE_RUNNING and j.reason == waiting:
                j.reason = ""

        self._commit(job_id, started)

    async def _defer_launch(self, job_id: str, launch: tuple[int, int, bool], why: str) -> None:
        """Storage has no room to start the job: it waits, queued, and is tried again."""
        run = self._runs[job_id]
        run.deferred = launch
        self._release(job_id)
        step = launch[0]

        def waiting(j: job_pb2.Job) -> None:
            j.state = S.JOB_STATE_QUEUED
            j.reason = (
                f"waiting for storage to start step {step}: {why}; trying again every "
                f"{format_duration(STORAGE_RETRY_SECONDS)}"
            )
            entry = j.steps[step - 1]
            if entry.state == S.STEP_STATE_RUNNING:
                entry.state = S.STEP_STATE_PENDING

        await self._commit(job_id, waiting)[1]

        async def again() -> None:
            job = self._jobs.get(job_id)
            if job is not None and job.state == S.JOB_STATE_QUEUED and job_id not in self._queue:
                self._queue.appendleft(job_id)
                self._schedule()

        self._arm(job_id, "deferred", STORAGE_RETRY_SECONDS, again)
        self._schedule()

    async def _watch(self, job_id: str, handle: Handle) -> None:
        executor = self._executors[handle.executor]
        if executor.queues:
            await self._until_started(job_id, handle, executor)
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
        size = await asyncio.to_thread(log_size, job.run_dir)
        newest = await asyncio.to_thread(_newest_checkpoint, job.checkpoint_dir)
        if (newest[0] if newest else "") != job.last_checkpoint:
            # Quiet: the change of state that follows carries it.
            job = self._commit(
                job_id, lambda j: _set(j, last_checkpoint=newest[0] if newest else ""), event=False
            )[0]
        step = job.step
        ended = _at(status)
        if job.state == S.JOB_STATE_CANCELLING:
            await self._finish(
                job_id, S.JOB_STATE_CANCELLED, status, run.cancel_reason, S.STEP_STATE_CANCELLED, size
            )
        elif job.state == S.JOB_STATE_PAUSING:
            at_boundary = not run.pause_delivered and status.exit_code == 0 and status.signal is None
            pause_signal = job.spec.pause.signal or "SIGTERM"
            if at_boundary:
                how = f"at the end of step {step}"
            elif run.killed:
                how = "killed after the grace period"
            elif status.signal is not None and status.signal == _signal.Signals[pause_signal]:
                how = f"stopped on {pause_signal}"
            elif status.exit_code == 0 and status.signal is None:
                how = f"exited on {pause_signal}"
            else:
                how = describe_exit(status)
            outcome = _pause_outcome(job, at_boundary, newest, run.paused_at)
            self._release(job_id)

            def paused(j: job_pb2.Job) -> None:
                _set(j, state=S.JOB_STATE_PAUSED, reason=f"paused ({how}): {outcome}")
                step_state = S.STEP_STATE_SUCCEEDED if at_boundary else S.STEP_STATE_PAUSED
                steps_mod.step_ended(j, step, step_state, status, size, ended, how)

            await self._commit(job_id, paused)[1]
            self._schedule()
        elif status.exit_code == 0 and status.signal is None:
            if job.step < job.step_count:
                self._commit(
                    job_id,
                    lambda j: steps_mod.step_ended(j, step, S.STEP_STATE_SUCCEEDED, status, size, ended),
                )
                await self._launch(job_id, step=job.step + 1, attempt=1, resume=False)
            else:
                await self._finish(job_id, S.JOB_STATE_SUCCEEDED, status, "", S.STEP_STATE_SUCCEEDED, size)
        elif job.attempt <= job.spec.retries and status.exit_code is not None:
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
                steps_mod.step_ended(j, step, S.STEP_STATE_FAILED, status, size, ended, describe_exit(status))

            await self._commit(job_id, retrying)[1]
            self._arm_retry(job_id, delay)
        else:
            what = f"step {job.step_name!r} " if job.step_count > 1 else ""
            # An end of unknown outcome may well have done its work: not retried,
            # as running it again could do it twice.
            how = (
                f"failed: {describe_exit(status)}"
                if status.exit_code is not None
                else f"ended, but how is unknown ({describe_exit(status)}); not retried"
            )
            await self._finish(job_id, S.JOB_STATE_FAILED, status, what + how, S.STEP_STATE_FAILED, size)

    async def _finish(
        self,
        job_id: str,
        state: int,
        status: ExitStatus | None,
        reason: str,
        step_state: int | None = None,
        size: int = 0,
        *,
        with_result: bool = True,
    ) -> None:
        """End the job; with ``step_state``, its current step ends that way too.

        Without ``with_result`` the job's result file is not read: the way out
        for a job an internal error hit, which must not depend on the job's files.
        """
        run = self._runs[job_id]
        for name in list(run.timers):
            self._stop_timer(run, name)
        run.handle = None
        run.retry_at = run.kill_at = None
        run.deferred = None
        job = self._jobs[job_id]
        result, problem = (
            await asyncio.to_thread(read_result, Path(job.run_dir) / RESULT_FILE, self.layout.status_dir)
            if with_result
            else (None, "")
        )
        if problem:
            reason = f"{reason}; result dropped: {problem}" if reason else f"result dropped: {problem}"
        ended = _at(status)

        def end(j: job_pb2.Job) -> None:
            j.state = state  # type: ignore[assignment]
            j.reason = reason
            j.end_time.CopyFrom(ended)
            if status is not None and status.exit_code is not None:
                j.exit_code = status.exit_code
            if status is not None and status.signal is not None:
                j.signal = status.signal
            if result is not None:
                j.result.CopyFrom(result)
            if step_state is not None and j.step:
                steps_mod.step_ended(j, j.step, step_state, status, size, ended)

        self._release(job_id)
        await self._commit(job_id, end)[1]
        self._schedule()

    # ------------------------------------------------------------------ timers

    def _stop_timer(self, run: Run, name: str) -> None:
        timer = run.timers.pop(name, None)
        if timer:
            timer.cancel()

    def _arm(
        self, job_id: str, name: str, delay: float, action: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        run = self._runs[job_id]
        self._stop_timer(run, name)
        loop = asyncio.get_running_loop()

        def fire() -> None:
            run.timers.pop(name, None)
            self._spawn_task(action(), job_id)

        run.timers[name] = loop.call_later(max(0.0, delay), fire)

    def _arm_kill(self, job_id: str, grace: float) -> None:
        async def kill() -> None:
            run = self._runs.get(job_id)
            if run is None or run.handle is None:
                return
            run.killed = True
            await self._executors[run.handle.executor].kill(run.handle)

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
            with contextlib.suppress(FailedPrecondition, NotFound, ResourceExhausted, Unavailable):
                await self.cancel(job_id, None, f"max_duration {format_duration(limit)} exceeded")

        self._arm(job_id, "deadline", delay, expire)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            running = [j for j in self._jobs.values() if j.state == S.JOB_STATE_RUNNING]
            # The newest checkpoint of each, so Job.last_checkpoint follows the run.
            newest = await asyncio.to_thread(_newest_checkpoints, [j.checkpoint_dir for j in running])
            for job, found in zip(running, newest, strict=True):
                if self._jobs.get(job.id) is None or self._jobs[job.id].state != S.JOB_STATE_RUNNING:
                    continue
                name = found[0] if found else ""

                def beat(j: job_pb2.Job, name: str = name) -> None:
                    j.heartbeat_time.CopyFrom(_now())
                    j.last_checkpoint = name

                self._commit(job.id, beat, event=False)

    async def _log_bounds(self) -> None:
        """Keep each live job's output.log to its spec's max_log_bytes (``conductor.logtrim``).

        A check a second, not the 30 s heartbeat: between two checks a log grows
        by what its job writes in a second, past twice its bound at most.
        """
        while True:
            await asyncio.sleep(LOG_TRIM_INTERVAL)
            bounded = [
                (j.id, os.path.join(j.run_dir, LOG_FILE), j.spec.max_log_bytes)
                for j in self._jobs.values()
                if j.spec.HasField("max_log_bytes") and j.state in _WRITING_STATES and j.run_dir
            ]
            if bounded:
                await asyncio.to_thread(_trim_logs, bounded)

    # ------------------------------------------------------------------ recovery

    async def _mark_orphans(self, started: float) -> None:
        marked = await asyncio.to_thread(
            mark_orphans,
            self.layout.status_dir,
            _Known(self._jobs, self._registry),
            self._registry.ids_blocking,
            started,
        )
        if marked:
            log.warning("orphaned_runs_marked", count=len(marked))

    async def _evictions(self) -> None:
        """Let go of ended jobs that nothing works on any more: the registry serves them."""
        while True:
            await asyncio.sleep(EVICT_INTERVAL)
            self.evict_ended()

    def evict_ended(self) -> int:
        """Evict every ended job that is durable and idle now; how many went."""
        evicted = 0
        # A new id is checked against memory only, and ids start with their
        # second: a job made this second (or the last) stays until it is past.
        recent = int(time.time()) - 2
        for job_id in list(self._ended):
            job = self._jobs.get(job_id)
            run = self._runs.get(job_id)
            if job is None or run is None:
                self._ended.discard(job_id)
                continue
            # Its newest version durable and shown, its lock free, nothing of it pending.
            busy = run.lock.locked() or run.timers or (run.waiter is not None and not run.waiter.done())
            if busy or self.book.find(job_id) is not job or job.create_time.seconds >= recent:
                continue
            self._ended.discard(job_id)
            del self._jobs[job_id]
            del self._runs[job_id]
            if job.request_id and self._by_request.get(job.request_id) == job_id:
                del self._by_request[job.request_id]
            self._name_locks_drop((job.project, job.group, job.name))
            self.book.evict(job_id)
            evicted += 1
        return evicted

    def _name_locks_drop(self, key: tuple[str, str, str]) -> None:
        lock = self._name_locks.get(key)
        # Unheld and unawaited: whoever asks next makes a new one.
        if lock is not None and not lock.locked() and not getattr(lock, "_waiters", None):
            del self._name_locks[key]

    async def _retain(self) -> None:
        """Delete ended jobs past the retention policy, now and then, in the background."""
        while True:
            try:
                self.retention_deleted += await retain(self, self._retention)
            except Exception as exc:  # a failed pass is tried again at the next
                log.error("retention_failed", error=repr(exc)[:200], exc_info=exc)
            await asyncio.sleep(self._retention.interval)

    async def _recover_guarded(self, job_id: str) -> None:
        try:
            await self._recover(job_id)
        except Exception as exc:
            await self._fail_internal(job_id, exc, "an internal error while re-attaching it after a restart")

    async def _recover(self, job_id: str) -> None:
        run = self._runs[job_id]
        job = self._jobs[job_id]
        state = job.state
        if run.handle is None:
            if state == S.JOB_STATE_RUNNING and run.retry_at is not None:
                # Between retries it keeps what it held, its GPUs included.
                self._take_slot(job_id, restore=True)
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
            end = S.JOB_STATE_CANCELLED if state == S.JOB_STATE_CANCELLING else S.JOB_STATE_FAILED
            await self._finish(job_id, end, None, f"executor {run.handle.executor!r} is not offered any more")
            return
        attachment = await executor.reattach(run.handle)
        # A job that runs on holds the GPUs it was started with; none goes to another job.
        self._take_slot(job_id, restore=True)
        handle = run.handle
        if attachment.presence is Presence.RUNNING:
            log.info("reattached", job_id=job_id, external_id=handle.external_id)
            run.waiter = self._spawn_task(self._watch(job_id, handle), job_id)
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


# How often ended jobs are let go of from memory (seconds).
EVICT_INTERVAL = 1.0


class _Known:
    """Job ids the conductor has: in memory, or in the registry (read from the orphan scan's thread)."""

    def __init__(self, live: dict[str, job_pb2.Job], registry: Registry) -> None:
        self._live = live
        self._registry = registry

    def __contains__(self, job_id: object) -> bool:
        # The live dict, not a copy: membership reads are safe from a thread.
        return isinstance(job_id, str) and (job_id in self._live or self._registry.contains_blocking(job_id))


# States in which a job's processes may still write its log.
_WRITING_STATES = frozenset(
    {S.JOB_STATE_RUNNING, S.JOB_STATE_PAUSING, S.JOB_STATE_CANCELLING, S.JOB_STATE_PAUSED}
)
LOG_TRIM_INTERVAL = 1.0


def _trim_logs(bounded: list[tuple[str, str, int]]) -> None:
    """Cut each log past twice its bound back to the bound; blocking."""
    for job_id, path, keep in bounded:
        try:
            if not logtrim.over_bound(os.stat(path).st_size, keep):
                continue
            removed, lossless = logtrim.trim_log(path, keep)
        except OSError as exc:
            log.warning("log_trim_failed", job_id=job_id, error=exc.strerror or type(exc).__name__)
            continue
        if removed:
            log.info("log_trimmed", job_id=job_id, removed_bytes=removed, kept_bytes=keep, lossless=lossless)


def _queued_reason(executor: Executor) -> str:
    return f"waiting in the {executor.name} queue"


def _newest_checkpoint(directory: str) -> tuple[str, float] | None:
    """The newest complete checkpoint a run wrote, with its time (blocking)."""
    path = latest_checkpoint_in(directory) if directory else None
    if path is None:
        return None
    try:
        return path.name, path.stat().st_mtime
    except OSError:
        return None


def _newest_checkpoints(directories: list[str]) -> list[tuple[str, float] | None]:
    return [_newest_checkpoint(d) for d in directories]


def _pause_outcome(
    job: job_pb2.Job, at_boundary: bool, newest: tuple[str, float] | None, asked_at: float | None
) -> str:
    """What a checkpoint pause left behind, and where a resume will start: said plainly."""
    if at_boundary:
        if job.step < job.step_count:
            return f"step {job.step} had finished; resume starts step {job.step + 1}"
        return "its last step had finished; resume ends it"
    if newest is not None:
        name, written = newest
        if asked_at is None or written >= asked_at - 1.0:
            return f"saved checkpoint {name}; resume continues from it"
        return f"no new checkpoint; resume continues from {name}, written before the pause"
    if job.resume_from:
        return (
            f"no checkpoint written; resume starts step {job.step} again from "
            f"{job.resume_from}, the one it was given"
        )
    return f"no checkpoint written; resume starts step {job.step} from the beginning"


def _refuse_beyond(executor: str, capacity: Capacity, request: Request) -> None:
    """FAILED_PRECONDITION when ``request`` is larger than all of ``capacity``: it could never start."""
    excess = capacity.excess(request)
    if not excess:
        return
    violations = [
        FieldViolation(
            f"spec.resources.{e.field}", f"asks for {e.asked}; the {executor} executor has {e.has} in all"
        )
        for e in excess
    ]
    raise FailedPrecondition(
        f"the {executor} executor cannot run this job: "
        + "; ".join(f"{v.field}: {v.description}" for v in violations),
        reason="RESOURCES_UNAVAILABLE",
        metadata={
            "executor": executor,
            "requested": request.describe(),
            "capacity": capacity.describe(),
            "requested_cpus": f"{request.cpus:g}",
            "requested_memory_bytes": str(request.memory),
            "requested_gpus": str(request.gpus),
            "capacity_cpus": f"{capacity.cpus:g}",
            "capacity_memory_bytes": str(capacity.memory),
            "capacity_gpus": str(len(capacity.gpus)),
        },
        field_violations=violations,
    )


def _same_request(existing: job_pb2.Job, spec: job_pb2.JobSpec, start_step: int) -> job_pb2.Job:
    """The job a repeated submit made, or ALREADY_EXISTS when the key came with another request."""
    if existing.spec != spec or existing.start_step != max(start_step, 1):
        raise AlreadyExists(
            f"request_id {existing.request_id!r} was already used for job {existing.id} with a different "
            "spec; use a new request_id for a new job",
            reason="REQUEST_ID_REUSED",
            metadata={"job_id": existing.id},
        )
    return existing


def _unexpected_failure(task: asyncio.Task[Any]) -> None:
    """Log a command's failure that is not an answer to its caller (a domain error is one)."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, BatonError):
        log.error("command_failed", error=repr(exc)[:200], exc_info=exc)


def _wrong_state(job: job_pb2.Job, reason: str, why: str) -> BatonError:
    """FAILED_PRECONDITION for a job whose state does not allow the call."""
    return FailedPrecondition(
        f"job {job.id} {why}",
        reason=reason,
        metadata={"job_id": job.id, "state": state_name(job.state)},
    )


def _already_ended(job: job_pb2.Job) -> BatonError:
    return _wrong_state(job, "JOB_ALREADY_ENDED", f"has already ended ({state_name(job.state)})")


def _not_running(job: job_pb2.Job) -> BatonError:
    only = "only a RUNNING job can be paused"
    return _wrong_state(job, "JOB_NOT_RUNNING", f"is {state_name(job.state)}; {only}")


def _not_paused(job: job_pb2.Job) -> BatonError:
    only = "only a PAUSED job can be resumed"
    return _wrong_state(job, "JOB_NOT_PAUSED", f"is {state_name(job.state)}; {only}")


def _not_ended(job: job_pb2.Job) -> BatonError:
    only = "only an ended job can be deleted"
    return _wrong_state(job, "JOB_NOT_ENDED", f"is {state_name(job.state)}; {only}")


def _error_text(fut: asyncio.Future[Any]) -> str:
    return "cancelled" if fut.cancelled() else repr(fut.exception())[:200]


def _set(job: job_pb2.Job, **fields: Any) -> None:
    for key, value in fields.items():
        setattr(job, key, value)

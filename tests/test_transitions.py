"""Every change of state passes one table: real jobs walk every entry of it.

Jobs on real conductors (in-process on loopback ports, and one subprocess that
is killed and started again) are driven through each allowed change, and
WatchJobs reports what happened: the consecutive states of one job are its
changes. Each change seen must be in ``transitions.ALLOWED``, and each entry of
the table must be seen but one (``NOT_WALKED``).
"""

from __future__ import annotations

import asyncio
import shlex
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from baton.conductor import transitions
from baton.conductor.executors.base import ExitStatus, Handle
from baton.conductor.transitions import (
    ALLOWED,
    CANCELLED,
    CANCELLING,
    FAILED,
    NEW,
    PAUSED,
    PAUSING,
    QUEUED,
    RUNNING,
    SUCCEEDED,
)
from baton.v1 import conductor_pb2 as pb
from baton.v1 import conductor_pb2_grpc, job_pb2
from tests.harness import InProcessConductor, SubprocessConductor
from tests.procs import log_text, spec_yaml, wait_until

Factory = Callable[..., InProcessConductor]
Start = Callable[[Path], SubprocessConductor]
CONDUCTOR_ARGS = ("--max-running", "2")
Client = InProcessConductor | SubprocessConductor
Change = tuple[int, int]

S = job_pb2
ALL_STATES = [v.number for v in S.JobState.DESCRIPTOR.values]
ENDS = (SUCCEEDED, FAILED, CANCELLED)
# The one entry the walk leaves out: a launch put off for want of storage waits
# QUEUED (RUNNING -> QUEUED). It needs a full filesystem; test_storage_faults
# (a retry with no room to start) has one and walks it.
NOT_WALKED: set[Change] = {(RUNNING, QUEUED)}
# Jobs are signalled once they say "ready", so a pause or cancel finds the
# job's own program (not a shell still starting it) and the walk stays exact.
SLEEPER = "echo ready; sleep 60"
# A job that ignores SIGTERM (a pause signal or a cancel).
DEAF = "trap '' TERM; echo ready; sleep 60"


def name(state: int) -> str:
    return S.JobState.Name(state).removeprefix("JOB_STATE_")


def named(changes: set[Change]) -> list[str]:
    return sorted(f"{name(a)} -> {name(b)}" for a, b in changes)


def table() -> set[Change]:
    return {(a, b) for a, targets in ALLOWED.items() for b in targets}


# ---------------------------------------------------------------------- the table itself


def test_the_table_covers_every_state_and_no_entry_leaves_an_end() -> None:
    assert set(ALLOWED) == set(ALL_STATES)
    assert [name(a) for a, b in table() if a in ENDS] == []
    for end in ENDS:
        assert [name(b) for b in ALL_STATES if transitions.allowed(end, b)] == [], name(end)
    # Nothing goes back to "not yet in the registry", which only goes to QUEUED.
    assert [name(a) for a, b in table() if b == NEW] == []
    assert ALLOWED[NEW] == {QUEUED}
    assert set(transitions.table()) == {(name(a), name(b)) for a, b in table()}


def test_allowed_refuses_every_change_outside_the_table() -> None:
    wrong = [
        f"{name(a)} -> {name(b)}"
        for a in ALL_STATES
        for b in ALL_STATES
        if a != b and transitions.allowed(a, b) != ((a, b) in table())
    ]
    assert wrong == []
    # Keeping its state (a new step, a heartbeat) is no change: allowed while a
    # job can still change, never for an ended job or one not yet recorded.
    keeps = [name(s) for s in ALL_STATES if transitions.allowed(s, s)]
    assert keeps == [name(s) for s in ALL_STATES if s != NEW and s not in ENDS]


# ---------------------------------------------------------------------- the walk


class Recorder:
    """One conductor's WatchJobs, read on a thread; it follows the conductor across restarts."""

    def __init__(self) -> None:
        self.events: list[job_pb2.JobEvent] = []
        self.problems: list[str] = []
        self.revision = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._call: Any = None
        self._channel: grpc.Channel | None = None

    def follow(self, c: Client) -> None:
        """Watch ``c`` from the last revision seen: 0 (an empty conductor) the first time."""
        self.join()
        self._channel = grpc.insecure_channel(c.address)
        stub = conductor_pb2_grpc.ConductorStub(self._channel)
        call = stub.WatchJobs(pb.WatchJobsRequest(since_revision=self.revision))
        self._call = call
        self._thread = threading.Thread(target=self._read, args=(call,), daemon=True)
        self._thread.start()

    def _read(self, call: Iterator[pb.WatchJobsResponse]) -> None:
        try:
            for event in (event for response in call for event in response.events):
                with self._cond:
                    if event.type not in (S.JOB_EVENT_TYPE_HEARTBEAT, S.JOB_EVENT_TYPE_SNAPSHOT_END):
                        if event.type != S.JOB_EVENT_TYPE_UPDATED or event.revision <= self.revision:
                            self.problems.append(f"{S.JobEventType.Name(event.type)} at {event.revision}")
                        self.events.append(event)
                    self.revision = max(self.revision, event.revision)
                    self._cond.notify_all()
        except grpc.RpcError:
            pass  # cancelled, or its conductor was killed: follow() picks up from self.revision

    def wait_revision(self, revision: int, timeout: float = 15.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.revision >= revision, timeout):
                raise AssertionError(f"WatchJobs reached revision {self.revision}, not {revision}")

    def join(self) -> None:
        """Wait for the stream of a killed conductor to end (a no-op before the first follow)."""
        if self._thread is not None:
            self._thread.join(10)
            assert not self._thread.is_alive(), "the watch of a killed conductor did not end"
        if self._channel is not None:
            self._channel.close()

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self.join()

    def changes(self) -> dict[Change, str]:
        """Each change seen, with the name of a job that made it."""
        last: dict[str, int] = {}
        out: dict[Change, str] = {}
        for event in self.events:
            job = event.job
            before = last.get(job.id, NEW)
            if job.state != before:
                out.setdefault((before, job.state), job.name)
            last[job.id] = job.state
        return out


def pause(c: Client, job_id: str, mode: job_pb2.PauseMode) -> job_pb2.Job:
    return c.stub.PauseJob(pb.PauseJobRequest(job_id=job_id, mode=mode), timeout=30)


def resume(c: Client, job_id: str) -> job_pb2.Job:
    return c.stub.ResumeJob(pb.ResumeJobRequest(job_id=job_id), timeout=30)


def cancel(c: Client, job_id: str, grace: int | None = None) -> job_pb2.Job:
    request = pb.CancelJobRequest(job_id=job_id)
    if grace is not None:
        request.grace_period.seconds = grace
    return c.stub.CancelJob(request, timeout=30)


def started(c: Client, job_id: str) -> job_pb2.Job:
    return c.wait_for(job_id, lambda j: j.external_id != "")


def ready(c: Client, job_id: str) -> job_pb2.Job:
    """The job once it has printed "ready" (its signal handling is in place)."""
    job = started(c, job_id)
    wait_until(lambda: "ready" in log_text(job), 20, f"{job.name} to be ready")
    return job


def expect(job: job_pb2.Job, state: int, why: str = "") -> job_pb2.Job:
    assert job.state == state, f"{job.name} is {name(job.state)} ({job.reason!r}), expected {name(state)}" + (
        f": {why}" if why else ""
    )
    return job


def slots_and_checkpoints(c: InProcessConductor, tmp: Path) -> None:
    """One slot (max_running 1): queued, paused with a checkpoint, resumed into the queue."""
    mark = shlex.quote(str(tmp / "once.mark"))
    # The first run leaves a mark and waits for its pause; resumed, it ends at once.
    once = c.submit(
        spec_yaml(name="once", command=f"[ -e {mark} ] && exit 0; touch {mark}; echo ready; sleep 60")
    )
    once = ready(c, once.id)  # NEW -> QUEUED -> RUNNING
    waiting = expect(c.submit(spec_yaml(name="waiting", command="true")), QUEUED)
    expect(cancel(c, waiting.id), CANCELLED)  # QUEUED -> CANCELLED
    expect(pause(c, once.id, S.PAUSE_MODE_CHECKPOINT), PAUSING)  # RUNNING -> PAUSING
    c.wait_for(once.id, "paused")  # PAUSING -> PAUSED: the job stopped on SIGTERM
    blocker = ready(c, c.submit(spec_yaml(name="blocker", command=SLEEPER)).id)
    expect(resume(c, once.id), QUEUED, "the blocker holds the only slot")  # PAUSED -> QUEUED
    expect(cancel(c, blocker.id, grace=30), CANCELLING)  # RUNNING -> CANCELLING
    expect(c.wait_ended(blocker.id), CANCELLED)  # CANCELLING -> CANCELLED
    expect(c.wait_ended(once.id), SUCCEEDED)  # QUEUED -> RUNNING -> SUCCEEDED


def suspended(c: InProcessConductor) -> None:
    job = ready(c, c.submit(spec_yaml(name="frozen", command=SLEEPER)).id)
    expect(pause(c, job.id, S.PAUSE_MODE_SUSPEND), PAUSED)  # RUNNING -> PAUSED
    expect(resume(c, job.id), RUNNING)  # PAUSED -> RUNNING: thawed
    expect(pause(c, job.id, S.PAUSE_MODE_SUSPEND), PAUSED)
    expect(cancel(c, job.id, grace=30), CANCELLING)  # PAUSED -> CANCELLING: thawed and signalled
    expect(c.wait_ended(job.id), CANCELLED)


def failing(c: InProcessConductor) -> None:
    expect(c.wait_ended(c.submit(spec_yaml(name="fails", command="exit 3")).id), FAILED)  # RUNNING -> FAILED


def cancelled_between_attempts(c: InProcessConductor) -> None:
    job = c.submit(spec_yaml(name="flaky", command="exit 1", retries=2))
    # After its second failure it waits 2 s for the last retry with nothing running.
    c.wait_for(job.id, lambda j: "retry 2 of 2" in j.reason)
    expect(cancel(c, job.id), CANCELLED, "the retry started before the cancel came")  # RUNNING -> CANCELLED


def cancelled_while_paused(c: InProcessConductor) -> None:
    job = ready(c, c.submit(spec_yaml(name="saved", command=SLEEPER)).id)
    expect(pause(c, job.id, S.PAUSE_MODE_CHECKPOINT), PAUSING)
    c.wait_for(job.id, "paused")
    expect(cancel(c, job.id), CANCELLED)  # PAUSED -> CANCELLED: nothing to signal


def cancelled_while_pausing(c: InProcessConductor) -> None:
    job = c.submit(spec_yaml(name="stubborn", command=DEAF, pause={"grace": "60s"}))
    job = ready(c, job.id)
    expect(pause(c, job.id, S.PAUSE_MODE_CHECKPOINT), PAUSING)
    expect(cancel(c, job.id, grace=1), CANCELLING)  # PAUSING -> CANCELLING
    expect(c.wait_ended(job.id), CANCELLED)  # killed at the end of the cancel's grace


def hold_exit_reports(
    c: InProcessConductor, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Event, threading.Event]:
    """Delay the executor's report of an exit until ``gate`` is set; ``reached`` says one is held.

    A fault injected into a collaborator: a slow report of an exit, as a remote
    engine's may be. The lifecycle is the real one.
    """
    assert c.running is not None
    executor = c.running.lifecycle.executor("local")
    real_wait = executor.wait
    gate, reached = threading.Event(), threading.Event()

    async def wait(handle: Handle) -> ExitStatus:
        status = await real_wait(handle)
        reached.set()
        await asyncio.to_thread(gate.wait, 60)
        return status

    monkeypatch.setattr(executor, "wait", wait)
    return gate, reached


def paused_after_its_last_step(
    c: InProcessConductor, gate: threading.Event, reached: threading.Event
) -> None:
    """A pause that comes as the last step ends: resumed, the job has nothing left but to succeed."""
    try:
        job = started(c, c.submit(spec_yaml(name="boundary", command="echo done")).id)
        assert reached.wait(30), "the job did not end"
        # Its process is gone (supervisor reaped), but the conductor has not heard yet:
        # the pause signal reaches no process.
        expect(pause(c, job.id, S.PAUSE_MODE_CHECKPOINT), PAUSING)
    finally:
        gate.set()
    paused = c.wait_for(job.id, "paused")
    assert "at the end of step 1" in paused.reason, paused.reason
    expect(resume(c, job.id), SUCCEEDED)  # PAUSED -> SUCCEEDED


def damaged_at_a_restart(start: Start, home: Path, recorder: Recorder) -> None:
    """QUEUED, PAUSING, PAUSED and CANCELLING end FAILED only by an internal error: damaged notes."""
    c = start(home)  # --max-running 2
    recorder.follow(c)
    paused = ready(c, c.submit(spec_yaml(name="paused", command=SLEEPER)).id)
    pausing = c.submit(spec_yaml(name="pausing", command=DEAF, pause={"grace": "60s"}))
    expect(pause(c, paused.id, S.PAUSE_MODE_CHECKPOINT), PAUSING)
    c.wait_for(paused.id, "paused")
    cancelling = c.submit(spec_yaml(name="cancelling", command=DEAF))
    pausing, cancelling = ready(c, pausing.id), ready(c, cancelling.id)
    queued = expect(c.submit(spec_yaml(name="queued", command="true")), QUEUED)
    expect(pause(c, pausing.id, S.PAUSE_MODE_CHECKPOINT), PAUSING)
    expect(cancel(c, cancelling.id, grace=60), CANCELLING)
    expect(c.get(queued.id), QUEUED, "both slots are held")
    c.kill9()
    recorder.join()

    ids = [paused.id, pausing.id, cancelling.id, queued.id]
    db = sqlite3.connect(home / "state" / "registry.db")
    try:
        with db:
            for job_id in ids:
                db.execute("UPDATE jobs SET runtime = '{damaged' WHERE id = ?", (job_id,))
    finally:
        db.close()
    c = start(home)
    recorder.follow(c)
    for job_id in ids:  # X -> FAILED for each of the four
        failed = expect(c.wait_ended(job_id, timeout=15), FAILED)
        assert "runtime notes are damaged" in failed.reason, failed.reason
    recorder.wait_revision(max(j.revision for j in c.stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs))


def test_real_jobs_walk_every_entry_of_the_table_and_nothing_else(
    conductor_factory: Factory,
    start_conductor: Start,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    one = conductor_factory(max_running=1)
    many = conductor_factory(max_running=8)
    gated = conductor_factory(max_running=1)
    gate, reached = hold_exit_reports(gated, monkeypatch)
    recorders = {c.address: Recorder() for c in (one, many, gated)}
    for c in (one, many, gated):
        recorders[c.address].follow(c)
        c.stub  # noqa: B018 - made here, before the threads share it
    restarted = Recorder()

    scenarios: list[Callable[[], None]] = [
        lambda: damaged_at_a_restart(start_conductor, tmp_path / "restarted", restarted),
        lambda: slots_and_checkpoints(one, tmp_path),
        lambda: suspended(many),
        lambda: failing(many),
        lambda: cancelled_between_attempts(many),
        lambda: cancelled_while_paused(many),
        lambda: cancelled_while_pausing(many),
        lambda: paused_after_its_last_step(gated, gate, reached),
    ]
    try:
        with ThreadPoolExecutor(len(scenarios)) as pool:
            for done in [pool.submit(s) for s in scenarios]:
                done.result()
    finally:
        gate.set()

    seen: dict[Change, str] = {}
    for c in (one, many, gated):
        recorder = recorders[c.address]
        recorder.wait_revision(
            max(j.revision for j in c.stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs)
        )
        recorder.close()
        seen.update(recorder.changes())
    restarted.close()
    seen.update(restarted.changes())
    # Only updates, each at a revision above the last: the conductors started empty.
    assert [r.problems for r in (*recorders.values(), restarted)] == [[]] * 4

    assert table() >= NOT_WALKED
    outside = set(seen) - table()
    assert named(outside) == [], {f"{name(a)} -> {name(b)}": seen[a, b] for a, b in outside}
    assert named(table() - NOT_WALKED - set(seen)) == []

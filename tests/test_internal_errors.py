"""An internal error fails the one job it hit, and nothing else.

A fault in the conductor's own handling of a job (exit handling, a timer,
recovery after a restart) ends that job FAILED with a reason saying the
conductor failed, logs ``job_internal_error``, kills whatever of the job still
runs and frees its slot; the other jobs and the service carry on. Faults are
injected into collaborators of the lifecycle (the result reader, the
executor's signal, the registry file while the conductor is down); the
lifecycle itself is the real one, behind a real gRPC server, running real
processes.
"""

from __future__ import annotations

import json
import shlex
import sqlite3
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from baton.conductor import lifecycle
from baton.conductor.executors.base import Handle
from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from tests.checks import live_group_members, wait_group_gone
from tests.harness import InProcessConductor, SubprocessConductor
from tests.procs import PY, log_text, spec_yaml, wait_until

Factory = Callable[..., InProcessConductor]
Start = Callable[[Path], SubprocessConductor]
CONDUCTOR_ARGS = ("--max-running", "5")
S = job_pb2
CONDUCTOR_FAILED = "failed in the conductor: "


def wait_for_file(path: Path) -> str:
    """A job command that runs until ``path`` exists, then exits 0."""
    return f"until [ -e {shlex.quote(str(path))} ]; do sleep 0.05; done"


def started(c: InProcessConductor | SubprocessConductor, job_id: str) -> job_pb2.Job:
    return c.wait_for(job_id, lambda j: j.external_id != "")


def internal_errors(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "job_internal_error"]


def described(job: job_pb2.Job) -> str:
    return f"{job.name} is {S.JobState.Name(job.state)} ({job.reason!r})"


def assert_failed_by_the_conductor(job: job_pb2.Job, *words: str) -> None:
    assert job.state == S.JOB_STATE_FAILED, described(job)
    assert job.reason.startswith(CONDUCTOR_FAILED), job.reason
    assert job.reason.endswith("; see its log"), job.reason
    for w in words:
        assert w in job.reason, job.reason


def damage_rows(home: Path, *, blob: tuple[str, ...] = (), runtime: tuple[str, ...] = ()) -> None:
    """Damage registry rows of a stopped conductor: unparsable Job blobs, unreadable runtime notes."""
    db = sqlite3.connect(home / "state" / "registry.db")
    try:
        with db:
            for job_id in blob:
                cur = db.execute("UPDATE jobs SET job = ? WHERE id = ?", (b"\xff\xff", job_id))
                assert cur.rowcount == 1, job_id
            for job_id in runtime:
                cur = db.execute("UPDATE jobs SET runtime = '{damaged' WHERE id = ?", (job_id,))
                assert cur.rowcount == 1, job_id
    finally:
        db.close()


def log_records(c: SubprocessConductor) -> list[dict[str, Any]]:
    """The JSON lines a subprocess conductor logged (over all its starts on this home)."""
    path = c.home.parent / f"{c.home.name}-conductor.log"
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def fail_result_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int | None]:
    """Make the lifecycle's result reader raise for the run directories put in the returned map.

    The value is how many more reads of that directory's result fail (None: every one).
    """
    broken: dict[str, int | None] = {}
    real = lifecycle.read_result

    def read_result(path: Path, root: Path) -> Any:
        key = str(path.parent)
        if key in broken:
            left = broken[key]
            if left is None or left > 0:
                broken[key] = None if left is None else left - 1
                raise RuntimeError("injected: the result reader failed")
        return real(path, root)

    monkeypatch.setattr(lifecycle, "read_result", read_result)
    return broken


# ---------------------------------------------------------------------- exit handling


def test_an_exception_in_exit_handling_fails_that_job_frees_its_slot_and_leaves_nothing_running(
    conductor_factory: Factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The first read of the job's result raises: the handling of its exit fails.
    broken = fail_result_reads(monkeypatch)
    c = conductor_factory(max_running=1)
    release = tmp_path / "release"
    with capture_logs() as logs:
        hit = c.submit(spec_yaml(name="hit", command=wait_for_file(release)))
        broken[hit.run_dir] = 1
        behind = c.submit(spec_yaml(name="behind", command="echo ran"))
        hit = started(c, hit.id)
        assert c.get(behind.id).state == S.JOB_STATE_QUEUED
        release.touch()
        failed = c.wait_ended(hit.id, timeout=15)
        done = c.wait_ended(behind.id, timeout=15)

    assert_failed_by_the_conductor(failed)
    assert broken[hit.run_dir] == 0, "the injected fault was never hit"
    errors = internal_errors(logs)
    assert [e["job_id"] for e in errors] == [hit.id], errors
    assert errors[0]["log_level"] == "error"
    assert "injected: the result reader failed" in errors[0]["error"]
    # Its slot was freed: the job queued behind it (max_running 1) ran.
    assert (done.state, done.exit_code) == (S.JOB_STATE_SUCCEEDED, 0), described(done)
    wait_group_gone(int(hit.external_id))


def test_a_job_whose_exit_handling_fails_every_time_still_ends_failed(
    conductor_factory: Factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = fail_result_reads(monkeypatch)
    c = conductor_factory(max_running=1)
    release = tmp_path / "release"
    hit = c.submit(spec_yaml(name="hit", command=wait_for_file(release)))
    broken[hit.run_dir] = None
    behind = c.submit(spec_yaml(name="behind", command="echo ran"))
    started(c, hit.id)
    release.touch()
    # The job behind runs once the conductor has let go of the failed job's slot.
    assert c.wait_ended(behind.id, timeout=15).state == S.JOB_STATE_SUCCEEDED
    assert_failed_by_the_conductor(c.get(hit.id))


def test_a_result_nested_too_deeply_is_dropped_and_the_job_ends(conductor_factory: Factory) -> None:
    c = conductor_factory(max_running=1)
    # Within the 64 KiB bound, but 60000 arrays deep. The job itself exits 0.
    deep = "import os; open(os.environ['BATON_RESULT_FILE'], 'w').write('[' * 60000)"
    hit = c.submit(spec_yaml(name="deep", command=f"{PY} -c {shlex.quote(deep)}"))
    behind = c.submit(spec_yaml(name="behind", command="echo ran"))
    assert c.wait_ended(behind.id, timeout=15).state == S.JOB_STATE_SUCCEEDED
    job = c.get(hit.id)
    assert (job.state, job.exit_code) == (S.JOB_STATE_SUCCEEDED, 0), described(job)
    assert "result dropped" in job.reason, job.reason


# ---------------------------------------------------------------------- timers


def test_an_exception_in_a_timer_fails_that_job_and_kills_its_process_group(
    conductor_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = conductor_factory(max_running=1)
    assert c.running is not None
    executor = c.running.lifecycle._executors["local"]

    async def sigterm_fails(handle: Handle) -> bool:
        raise RuntimeError("injected: SIGTERM could not be sent")

    # The max_duration timer cancels the job, and sending its SIGTERM raises.
    monkeypatch.setattr(executor, "terminate", sigterm_fails)
    with capture_logs() as logs:
        hit = c.submit(spec_yaml(name="overdue", command="sleep 60", max_duration="1s"))
        behind = c.submit(spec_yaml(name="behind", command="echo ran"))
        hit = started(c, hit.id)
        pgid = int(hit.external_id)
        failed = c.wait_ended(hit.id, timeout=15)
        done = c.wait_ended(behind.id, timeout=15)

    assert_failed_by_the_conductor(failed)
    assert [e["job_id"] for e in internal_errors(logs)] == [hit.id]
    # The process that outlived the failed cancel is killed: a FAILED job runs nothing.
    wait_group_gone(pgid)
    assert (done.state, done.exit_code) == (S.JOB_STATE_SUCCEEDED, 0), described(done)


# ---------------------------------------------------------------------- recovery


def test_recovery_skips_a_damaged_row_fails_a_job_with_damaged_notes_and_reattaches_the_rest(
    start_conductor: Start, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    stops = tmp_path / "stops"
    stops.mkdir()
    c = start_conductor(home)
    jobs = {
        name: c.submit(spec_yaml(name=name, command=wait_for_file(stops / name)))
        for name in ("healthy", "notes", "blob")
    }
    jobs = {name: started(c, job.id) for name, job in jobs.items()}
    healthy, notes, blob = jobs["healthy"], jobs["notes"], jobs["blob"]
    c.kill9()
    damage_rows(home, blob=(blob.id,), runtime=(notes.id,))

    c = start_conductor(home)
    # The conductor serves, and lists the two rows it could read.
    listed = c.stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs
    assert sorted(j.id for j in listed) == sorted([healthy.id, notes.id])
    with pytest.raises(grpc.RpcError) as info:
        c.get(blob.id)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    failed = c.wait_ended(notes.id, timeout=15)
    assert_failed_by_the_conductor(failed, "runtime notes are damaged")

    again = c.get(healthy.id)
    assert again.state == S.JOB_STATE_RUNNING, described(again)
    assert again.external_id == healthy.external_id, "the healthy job was started again"
    (stops / "healthy").touch()
    done = c.wait_ended(healthy.id, timeout=15)
    assert (done.state, done.exit_code) == (S.JOB_STATE_SUCCEEDED, 0), described(done)

    records = log_records(c)
    damaged = [r for r in records if r.get("event") == "registry_row_damaged"]
    assert [(r["job_id"], r["level"]) for r in damaged] == [(blob.id, "error")], damaged
    errors = [r for r in records if r.get("event") == "job_internal_error"]
    assert [(r["job_id"], r["level"]) for r in errors] == [(notes.id, "error")], errors


def test_a_job_failed_for_damaged_runtime_notes_leaves_no_process_running(
    conductor_factory: Factory, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    c = conductor_factory(home)
    job = started(c, c.submit(spec_yaml(name="notes", command="sleep 60")).id)
    c.stop()  # the job keeps running, as it would through a conductor crash
    damage_rows(home, runtime=(job.id,))
    c = conductor_factory(home)
    assert_failed_by_the_conductor(c.wait_ended(job.id, timeout=15), "runtime notes are damaged")
    wait_until(lambda: not live_group_members(int(job.external_id)), 3, "the failed job's processes to end")


def test_a_submission_after_a_damaged_row_was_skipped_is_accepted(
    conductor_factory: Factory, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    c = conductor_factory(home)
    first = c.submit(spec_yaml(name="first", command="true"))
    last = c.submit(spec_yaml(name="last", command="true"))
    for job in (first, last):
        c.wait_ended(job.id)
    c.stop()
    damage_rows(home, blob=(last.id,))
    c = conductor_factory(home)
    job = c.submit(spec_yaml(name="after", command="true"))
    assert c.wait_ended(job.id).state == S.JOB_STATE_SUCCEEDED


# ---------------------------------------------------------------------- a call that gives up


def gives_up_during_a_slow_write(c: InProcessConductor, call: Callable[[float], object]) -> None:
    """Make ``call(timeout)`` run out of time while its change waits to be written.

    Another process holds the registry's write lock (a backup, say); it lets go
    once the conductor has seen the call end (the writer waits up to 5 s).
    """
    db = sqlite3.connect(c.home / "state" / "registry.db", isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        with pytest.raises(grpc.RpcError) as info:
            call(0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(1.0)
        db.execute("COMMIT")
    finally:
        db.close()


def registry_state(home: Path, job_id: str) -> int | None:
    db = sqlite3.connect(home / "state" / "registry.db")
    try:
        row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        db.close()
    return None if row is None else int(row[0])


def test_a_submission_whose_call_gave_up_during_a_slow_write_runs_once_when_sent_again(
    conductor: InProcessConductor,
) -> None:
    spec = spec_yaml(name="late", command="echo ran")
    request = pb.SubmitJobRequest(spec_yaml=spec, request_id="late-1")
    gives_up_during_a_slow_write(conductor, lambda t: conductor.stub.SubmitJob(request, timeout=t))
    # What a client is told to do: send it again with the same request_id.
    job = conductor.stub.SubmitJob(request, timeout=10)
    done = conductor.wait_ended(job.id)
    assert (done.state, done.exit_code) == (S.JOB_STATE_SUCCEEDED, 0), described(done)
    listed = conductor.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs
    assert [j.id for j in listed] == [job.id]


def test_a_pause_whose_call_gave_up_during_a_slow_write_leaves_one_consistent_state(
    conductor: InProcessConductor,
) -> None:
    job = conductor.submit(spec_yaml(name="paused", command="echo ready; sleep 60", pause={"grace": "1s"}))
    job = started(conductor, job.id)
    wait_until(lambda: "ready" in log_text(job), 20, "the job to be ready")
    request = pb.PauseJobRequest(job_id=job.id, mode=S.PAUSE_MODE_CHECKPOINT)
    gives_up_during_a_slow_write(conductor, lambda t: conductor.stub.PauseJob(request, timeout=t))
    # Writes are durable in order: once a later submission is answered, the pause's write is done.
    conductor.submit(spec_yaml(name="later", command="true"))

    def settled() -> bool:
        # Paused or not, but the same everywhere; a pause under way ends within its 1 s grace.
        shown = conductor.get(job.id).state
        return shown == registry_state(conductor.home, job.id) and shown != S.JOB_STATE_PAUSING

    wait_until(settled, 4, "GetJob and the registry to agree on a settled state")
    if conductor.get(job.id).state == S.JOB_STATE_PAUSED:
        wait_group_gone(int(job.external_id))

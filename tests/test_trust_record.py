"""What the conductor reports is what its record holds: end times, request ids, transitions.

- A job that ends while the conductor is down gets the time it really ended
  (its exit record's), not the time a restarted conductor noticed.
- A ``request_id`` names one job: the same spec under it returns that job, a
  different spec is ALREADY_EXISTS (REQUEST_ID_REUSED, naming the job), and
  neither makes a second job, before or after a restart.
- Every change of state logs one structured ``job_transition`` line.

The conductors and jobs are real: in-process on a loopback port, or
``baton conductor`` as a subprocess when it has to die or its log is read.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from baton.v1 import conductor_pb2 as pb
from baton.v1 import conductor_pb2_grpc, job_pb2
from tests.checks import error_info
from tests.harness import InProcessConductor, SubprocessConductor, kill_job_groups
from tests.procs import PY, TICKER, spec_yaml, wait_until


def ticker(ran: Path, ticks: int) -> str:
    return f"{TICKER} --ran-file {shlex.quote(str(ran))} --ticks {ticks}"


def seconds(ts: timestamp_pb2.Timestamp) -> float:
    return float(ts.ToNanoseconds()) / 1e9


# ---------------------------------------------------------------------- end time


def test_a_job_that_ends_while_the_conductor_is_down_keeps_the_time_it_really_ended(tmp_path: Path) -> None:
    home = tmp_path / "home"
    stop, ended = tmp_path / "stop", tmp_path / "ended"
    # The job waits for the stop file, then writes the time and exits at once.
    write_time = "import sys, time; open(sys.argv[1], 'w').write(repr(time.time()))"
    command = (
        f"while [ ! -e {shlex.quote(str(stop))} ]; do sleep 0.05; done; "
        f"exec {PY} -c {shlex.quote(write_time)} {shlex.quote(str(ended))}"
    )
    first = SubprocessConductor(home).start()
    second: SubprocessConductor | None = None
    try:
        job = first.submit(spec_yaml(name="ends-while-down", command=command))
        job = first.wait_for(job.id, lambda j: j.external_id != "")
        first.kill9()
        stop.touch()
        wait_until(lambda: ended.exists() and ended.read_text() != "", what="the job to end")
        really_ended = float(ended.read_text())
        wait_until(
            lambda: any((home / "state" / "launches" / job.id).glob("*/exit")),
            what="the supervisor to record the exit",
        )
        time.sleep(3)
        restarted_at = time.time()
        second = SubprocessConductor(home).start()
        done = second.wait_ended(job.id)
        assert (done.state, done.exit_code) == (job_pb2.JOB_STATE_SUCCEEDED, 0), done
        assert abs(seconds(done.end_time) - really_ended) < 1.0, (
            f"end_time {seconds(done.end_time):.3f}, the job ended at {really_ended:.3f}, "
            f"the conductor restarted at {restarted_at:.3f}"
        )
        assert abs(seconds(done.steps[0].end_time) - really_ended) < 1.0, done.steps[0]
    finally:
        if second is not None:
            second.stop()
        first.stop()
        kill_job_groups(home / "status")


# ---------------------------------------------------------------------- request_id


def run_dir_count(status_dir: Path) -> int:
    return sum(1 for d in status_dir.glob("*/*/*/*") if d.is_dir())


def assert_reused(c: InProcessConductor, spec: str, request_id: str, first: job_pb2.Job, **kw: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        c.submit(spec, request_id=request_id, **kw)
    err = caught.value
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS, (err.code(), err.details())
    info = error_info(err)
    assert info.reason == "REQUEST_ID_REUSED", info
    assert info.metadata["job_id"] == first.id, info


def test_a_request_id_names_one_job_and_a_different_spec_under_it_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ran = tmp_path / "ran"
    spec = spec_yaml(
        name="once", steps=[{"name": "a", "command": "true"}, {"name": "b", "command": ticker(ran, 2)}]
    )
    other_spec = spec_yaml(
        name="once", steps=[{"name": "a", "command": "true"}, {"name": "b", "command": ticker(ran, 5)}]
    )
    live: list[InProcessConductor] = []
    try:
        c = InProcessConductor(home).start()
        live.append(c)
        first = c.submit(spec, request_id="req-1")
        assert c.submit(spec, request_id="req-1").id == first.id
        # start_step 0 means the first step: the same request.
        assert c.submit(spec, request_id="req-1", start_step=1).id == first.id

        assert_reused(c, other_spec, "req-1", first)
        assert_reused(c, spec, "req-1", first, start_step=2)

        done = c.wait_ended(first.id)
        assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done
        # Asked again after it ended: still that job, and still refused with another spec.
        assert c.submit(spec, request_id="req-1").id == first.id
        assert_reused(c, other_spec, "req-1", first)
        assert [j.id for j in c.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs] == [first.id]
        assert run_dir_count(c.status_dir) == 1
        assert Counter(ran.read_text().split()) == Counter({first.id: 1})
        c.stop()
        live.remove(c)

        # The record outlives the conductor: the same answers after a restart.
        c = InProcessConductor(home).start()
        live.append(c)
        assert c.submit(spec, request_id="req-1").id == first.id
        assert_reused(c, other_spec, "req-1", first)
        assert [j.id for j in c.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs] == [first.id]
        assert run_dir_count(c.status_dir) == 1
        assert Counter(ran.read_text().split()) == Counter({first.id: 1})
    finally:
        for c in live:
            c.stop()
        kill_job_groups(home / "status")


def storm(address: str, request_ids: list[str], copies: int) -> list[tuple[str, grpc.StatusCode, str]]:
    """Submit each request id ``copies`` times, every call in flight at once; (request id, code, job id)."""

    async def run() -> list[tuple[str, grpc.StatusCode, str]]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = conductor_pb2_grpc.ConductorStub(channel)

            async def one(request_id: str) -> tuple[str, grpc.StatusCode, str]:
                spec = spec_yaml(name=request_id, command="true")
                try:
                    job = await stub.SubmitJob(
                        pb.SubmitJobRequest(spec_yaml=spec, request_id=request_id), timeout=30
                    )
                except grpc.aio.AioRpcError as err:
                    return request_id, err.code(), ""
                return request_id, grpc.StatusCode.OK, job.id

            return list(await asyncio.gather(*(one(r) for r in request_ids for _ in range(copies))))

    return asyncio.run(run())


def test_retries_of_one_request_id_in_flight_together_all_get_its_one_job(tmp_path: Path) -> None:
    home = tmp_path / "home"
    c = InProcessConductor(home, max_running=8).start()
    try:
        every: dict[str, set[str]] = {}
        # The race is narrow: a few rounds of 100 request ids sent four times each.
        for round_ in range(6):
            answers = storm(c.address, [f"r{round_}-{i:03d}" for i in range(100)], 4)
            failed = [(r, code.name) for r, code, _ in answers if code != grpc.StatusCode.OK]
            assert failed == [], f"round {round_}: {len(failed)} of {len(answers)} calls failed: {failed[:3]}"
            for r, _, job_id in answers:
                every.setdefault(r, set()).add(job_id)
        assert [r for r, ids in every.items() if len(ids) != 1] == []
        jobs = [j for ids in every.values() for j in ids]
        for job_id in jobs:
            done = c.wait_ended(job_id, timeout=60)
            assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done
        listed = c.stub.ListJobs(pb.ListJobsRequest(page_size=1000), timeout=10).jobs
        assert sorted(j.id for j in listed) == sorted(jobs)
    finally:
        c.stop()
        kill_job_groups(home / "status")


def test_a_submit_whose_caller_gave_up_on_a_slow_registry_is_the_job_its_retry_gets(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ran = tmp_path / "ran"
    spec = spec_yaml(name="slow-write", command=ticker(ran, 2))
    live: list[InProcessConductor] = []
    try:
        c = InProcessConductor(home).start()
        live.append(c)
        # Another program holds the registry's write lock (an operator's sqlite3
        # shell, a backup), so the conductor's write waits behind it.
        holder = sqlite3.connect(c.config.state_dir / "registry.db", isolation_level=None, timeout=0)
        try:
            holder.execute("BEGIN IMMEDIATE")
            with pytest.raises(grpc.RpcError) as caught:
                c.stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=spec, request_id="req-slow"), timeout=1)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            if holder.in_transaction:
                holder.execute("COMMIT")
            holder.close()
        # The caller tries again with its request_id, as the client library does.
        job = c.submit(spec, request_id="req-slow")
        done = c.wait_ended(job.id)
        assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done
        assert [j.id for j in c.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs] == [job.id]
        c.stop()
        live.remove(c)
        c = InProcessConductor(home).start()
        live.append(c)
        assert [j.id for j in c.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs] == [job.id]
        time.sleep(1)  # a job started again would have written its start by now
        assert Counter(ran.read_text().split()) == Counter({job.id: 1})
    finally:
        for c in live:
            c.stop()
        kill_job_groups(home / "status")


def test_a_cancel_whose_caller_gave_up_on_a_slow_registry_still_cancels_the_job(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ran = tmp_path / "ran"
    c = InProcessConductor(home).start()
    try:
        job = c.submit(spec_yaml(name="to-cancel", command=f"{TICKER} --ran-file {shlex.quote(str(ran))}"))
        c.wait_for(job.id, lambda j: j.external_id != "")
        request = pb.CancelJobRequest(job_id=job.id, grace_period={"seconds": 1}, reason="no longer needed")
        holder = sqlite3.connect(c.config.state_dir / "registry.db", isolation_level=None, timeout=0)
        try:
            holder.execute("BEGIN IMMEDIATE")
            with pytest.raises(grpc.RpcError) as caught:
                c.stub.CancelJob(request, timeout=1)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            if holder.in_transaction:
                holder.execute("COMMIT")
            holder.close()
        c.stub.CancelJob(request, timeout=10)  # the caller tries again
        # SIGTERM ends the ticker at once; the grace is 1 s.
        done = c.wait_ended(job.id, timeout=6)
        assert (done.state, done.reason) == (job_pb2.JOB_STATE_CANCELLED, "no longer needed"), done
    finally:
        c.stop()
        kill_job_groups(home / "status")


# ---------------------------------------------------------------------- transitions


def transitions(log: Path, job_id: str) -> list[dict[str, Any]]:
    """The ``job_transition`` lines about ``job_id`` in a conductor's JSON log."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if (
            isinstance(entry, dict)
            and entry.get("event") == "job_transition"
            and entry.get("job_id") == job_id
        ):
            found.append(entry)
    return found


def wait_for_lines(log: Path, job_id: str, count: int) -> None:
    wait_until(lambda: len(transitions(log, job_id)) >= count, timeout=10, what=f"{count} lines of {job_id}")


def test_each_change_of_state_logs_exactly_one_job_transition_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ran = tmp_path / "ran"
    c = SubprocessConductor(home)
    try:
        c.start()
        log = home.parent / f"{home.name}-conductor.log"  # where SubprocessConductor sends its stderr
        # Two steps: the step change is a change of the job, not of its state.
        spec = spec_yaml(
            name="logged", steps=[{"name": "a", "command": "true"}, {"name": "b", "command": ticker(ran, 3)}]
        )
        job = c.submit(spec)
        # One that is cancelled, with a reason, while it runs.
        doomed = c.submit(spec_yaml(name="doomed", command=f"{TICKER} --ran-file {shlex.quote(str(ran))}"))
        c.wait_for(doomed.id, lambda j: j.external_id != "")
        c.stub.CancelJob(
            pb.CancelJobRequest(job_id=doomed.id, grace_period={"seconds": 5}, reason="no longer needed"),
            timeout=10,
        )
        done = c.wait_ended(job.id)
        assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done
        cancelled = c.wait_ended(doomed.id)
        assert cancelled.state == job_pb2.JOB_STATE_CANCELLED, cancelled

        want = {
            job.id: [("QUEUED", "RUNNING", ""), ("RUNNING", "SUCCEEDED", "")],
            doomed.id: [
                ("QUEUED", "RUNNING", ""),
                ("RUNNING", "CANCELLING", "no longer needed"),
                ("CANCELLING", "CANCELLED", "no longer needed"),
            ],
        }
        for job_id, changes in want.items():
            wait_for_lines(log, job_id, len(changes) + 1)
        time.sleep(0.5)  # a line logged twice would be there by now
        for job_id, changes in want.items():
            lines = transitions(log, job_id)
            for entry in lines:
                assert {"job_id", "from_state", "to_state", "reason"} <= entry.keys(), entry
            # The first says the job was made (QUEUED); then one line per change, none twice.
            assert lines[0]["to_state"] == "QUEUED", lines
            assert [(e["from_state"], e["to_state"], e["reason"]) for e in lines[1:]] == changes, lines
    finally:
        c.stop()
        kill_job_groups(home / "status")


def test_a_job_transition_no_request_caused_names_no_request(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ran = tmp_path / "ran"
    c = SubprocessConductor(home)
    try:
        c.start()
        log = home.parent / f"{home.name}-conductor.log"
        job = c.submit(spec_yaml(name="exits", command=ticker(ran, 2)))
        assert c.wait_ended(job.id).state == job_pb2.JOB_STATE_SUCCEEDED
        wait_for_lines(log, job.id, 3)
        made, _, ended = transitions(log, job.id)
        assert made.get("method") == "/baton.v1.Conductor/SubmitJob", made
        # The job's end came from its exit, not from the SubmitJob call that queued it.
        assert ended.get("method") is None, ended
    finally:
        c.stop()
        kill_job_groups(home / "status")

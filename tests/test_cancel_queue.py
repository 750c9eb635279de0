"""Cancel (SIGTERM, then SIGKILL at the grace), the run queue, and delete."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2

from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from tests.checks import live_group_members, log_path, wait_for_text, wait_group_gone, wait_until
from tests.harness import InProcessConductor, state

Factory = Callable[..., InProcessConductor]


def cancel(c: InProcessConductor, job_id: str, grace: float | None = None, reason: str = "") -> job_pb2.Job:
    req = pb.CancelJobRequest(job_id=job_id, reason=reason)
    if grace is not None:
        req.grace_period.CopyFrom(duration_pb2.Duration(seconds=int(grace), nanos=int(grace % 1 * 1e9)))
    return c.stub.CancelJob(req, timeout=30)


def started(c: InProcessConductor, job_id: str) -> job_pb2.Job:
    """Wait until the job runs and its process group is known."""
    return c.wait_for(job_id, lambda j: j.state == state("running") and j.external_id != "")


def wait_file_cmd(path: Path) -> str:
    return f"while [ ! -e {path} ]; do sleep 0.05; done"


def test_job_that_traps_sigterm_and_exits_ends_cancelled(conductor: InProcessConductor) -> None:
    spec = (
        "name: polite\ncommand: |\n"
        "  trap 'echo got-term; exit 0' TERM\n"
        "  echo ready\n"
        "  while :; do sleep 0.1; done\n"
    )
    job = conductor.submit(spec)
    running = started(conductor, job.id)
    wait_for_text(log_path(running), "ready")

    # A long grace: the job must end because it obeyed SIGTERM, not because of SIGKILL.
    answer = cancel(conductor, job.id, grace=60, reason="user changed their mind")
    assert answer.state in (state("cancelling"), state("cancelled"))

    done = conductor.wait_ended(job.id, timeout=20)
    assert done.state == state("cancelled"), done
    assert done.HasField("exit_code") and done.exit_code == 0
    assert not done.HasField("signal"), "the job exited on its own; nothing killed it"
    assert done.reason == "user changed their mind"
    assert "got-term" in log_path(done).read_text()
    wait_group_gone(int(running.external_id))


def test_job_that_ignores_sigterm_is_killed_at_the_grace(conductor: InProcessConductor) -> None:
    spec = "name: stubborn\ncommand: |\n  trap '' TERM\n  echo ready\n  sleep 60\n"
    job = conductor.submit(spec)
    running = started(conductor, job.id)
    pgid = int(running.external_id)
    wait_for_text(log_path(running), "ready")

    asked_at = time.time()
    answer = cancel(conductor, job.id, grace=1.0)
    assert answer.state == state("cancelling"), answer

    # SIGTERM is ignored, so the job is still there until the grace runs out.
    time.sleep(0.3)
    assert live_group_members(pgid), "the job ignores SIGTERM; only SIGKILL at the grace may end it"
    assert conductor.get(job.id).state == state("cancelling")

    done = conductor.wait_ended(job.id, timeout=20)
    assert done.state == state("cancelled"), done
    assert done.HasField("signal") and done.signal == 9
    assert done.reason, "a cancelled job says why"
    ended_at = done.end_time.ToNanoseconds() / 1e9
    assert ended_at >= asked_at + 0.9, "SIGKILL must wait for the grace period"
    wait_group_gone(pgid)


def test_cancel_with_zero_grace_kills_at_once(conductor: InProcessConductor) -> None:
    job = conductor.submit("name: zero\ncommand: |\n  trap '' TERM\n  echo ready\n  sleep 60\n")
    running = started(conductor, job.id)
    wait_for_text(log_path(running), "ready")
    cancel(conductor, job.id, grace=0)
    done = conductor.wait_ended(job.id, timeout=20)
    assert done.state == state("cancelled"), done
    assert done.signal == 9
    wait_group_gone(int(running.external_id))


def test_cancel_leaves_no_process_of_the_group(conductor: InProcessConductor) -> None:
    # The leader obeys SIGTERM, but a child of it ignores SIGTERM and would live on.
    spec = (
        "name: family\ncommand: |\n"
        "  (trap '' TERM; echo child-ready; sleep 60) &\n"
        "  trap 'exit 0' TERM\n"
        "  echo ready\n"
        "  wait\n"
    )
    job = conductor.submit(spec)
    running = started(conductor, job.id)
    pgid = int(running.external_id)
    wait_for_text(log_path(running), "child-ready")
    wait_for_text(log_path(running), "ready\n")
    assert len(live_group_members(pgid)) >= 2

    cancel(conductor, job.id, grace=60)
    done = conductor.wait_ended(job.id, timeout=20)

    assert done.state == state("cancelled"), done
    wait_group_gone(pgid)


def test_cancelling_a_queued_job_ends_it_without_running(conductor_factory: Factory, tmp_path: Path) -> None:
    c = conductor_factory(max_running=1)
    go = tmp_path / "go"
    ran = tmp_path / "ran"
    blocker = c.submit(f"name: blocker\ncommand: {wait_file_cmd(go)}\n")
    queued = c.submit(f"name: queued\ncommand: touch {ran}\n")
    started(c, blocker.id)
    assert c.get(queued.id).state == state("queued")

    answer = cancel(c, queued.id, reason="not needed")

    assert answer.state == state("cancelled"), answer
    done = c.get(queued.id)
    assert done.state == state("cancelled")
    assert done.reason == "not needed"
    assert not done.HasField("start_time")
    assert not done.HasField("exit_code")
    go.touch()
    assert c.wait_ended(blocker.id).state == state("succeeded")
    time.sleep(0.3)
    assert c.get(queued.id).state == state("cancelled")
    assert not ran.exists(), "a job cancelled while queued must never run"
    assert not log_path(done).exists()


def test_cancel_records_the_default_reason(conductor: InProcessConductor) -> None:
    job = conductor.submit("name: sleeper\ncommand: sleep 60\n")
    started(conductor, job.id)
    cancel(conductor, job.id, grace=5)
    done = conductor.wait_ended(job.id, timeout=20)
    assert done.state == state("cancelled")
    assert "cancel" in done.reason


def test_cancel_of_an_ended_job_is_failed_precondition(conductor: InProcessConductor) -> None:
    job = conductor.submit("name: quick\ncommand: 'true'\n")
    conductor.wait_ended(job.id)
    with pytest.raises(grpc.RpcError) as err:
        cancel(conductor, job.id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert conductor.get(job.id).state == state("succeeded")


def test_jobs_beyond_max_running_wait_queued_and_start_in_order(
    conductor_factory: Factory, tmp_path: Path
) -> None:
    c = conductor_factory(max_running=2)
    gos = [tmp_path / f"go{i}" for i in range(4)]
    jobs = [c.submit(f"name: q{i}\ncommand: {wait_file_cmd(go)}\n") for i, go in enumerate(gos)]
    ids = [j.id for j in jobs]

    started(c, ids[0])
    started(c, ids[1])
    assert [c.get(i).state for i in ids[2:]] == [state("queued")] * 2

    gos[0].touch()
    assert c.wait_ended(ids[0]).state == state("succeeded")
    started(c, ids[2])
    assert c.get(ids[3]).state == state("queued"), "one free slot: the older queued job goes first"
    assert c.get(ids[1]).state == state("running")

    gos[1].touch()
    assert c.wait_ended(ids[1]).state == state("succeeded")
    started(c, ids[3])

    for go in gos[2:]:
        go.touch()
    done = [c.wait_ended(i) for i in ids]
    assert [j.state for j in done] == [state("succeeded")] * 4
    starts = [j.start_time.ToNanoseconds() for j in done]
    assert starts == sorted(starts), "jobs start in submission order"


def test_queue_never_runs_more_than_max_running(conductor_factory: Factory, tmp_path: Path) -> None:
    c = conductor_factory(max_running=2)
    jobs = [c.submit(f"name: burst{i}\ncommand: sleep 0.2\n") for i in range(5)]
    most = 0
    ended: set[str] = set()
    deadline = time.monotonic() + 30
    while len(ended) < len(jobs) and time.monotonic() < deadline:
        listed = c.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs
        most = max(most, sum(1 for j in listed if j.state == state("running")))
        ended = {j.id for j in listed if j.state == state("succeeded")}
        time.sleep(0.02)
    assert len(ended) == len(jobs)
    assert 1 <= most <= 2


def test_delete_of_a_running_job_is_failed_precondition(conductor: InProcessConductor) -> None:
    job = conductor.submit("name: busy\ncommand: sleep 60\n")
    running = started(conductor, job.id)
    with pytest.raises(grpc.RpcError) as err:
        conductor.stub.DeleteJob(pb.DeleteJobRequest(job_id=job.id), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert conductor.get(job.id).state == state("running")
    assert Path(running.run_dir).is_dir()
    assert live_group_members(int(running.external_id)), "a refused delete must not touch the job"


def test_delete_of_an_ended_job_removes_it_and_keeps_checkpoints(conductor: InProcessConductor) -> None:
    spec = (
        "name: trainer\ncommand: |\n"
        '  mkdir -p "$BATON_CHECKPOINT_DIR/epoch-1"\n'
        '  echo weights > "$BATON_CHECKPOINT_DIR/epoch-1/model.bin"\n'
        "  echo trained\n"
    )
    job = conductor.submit(spec)
    sibling = conductor.submit(spec)
    done = conductor.wait_ended(job.id)
    conductor.wait_ended(sibling.id)
    assert done.state == state("succeeded"), done
    run_dir = Path(done.run_dir)
    wait_until(lambda: (run_dir / "status.json").exists(), "status.json")

    answer = conductor.stub.DeleteJob(pb.DeleteJobRequest(job_id=job.id), timeout=10)

    assert answer.job_id == job.id
    assert answer.revision > done.revision
    with pytest.raises(grpc.RpcError) as err:
        conductor.get(job.id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = [j.id for j in conductor.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs]
    assert listed == [sibling.id]
    wait_until(lambda: not run_dir.exists(), f"{run_dir} to be removed")
    time.sleep(0.2)
    assert not run_dir.exists(), "nothing may write the deleted run's directory again"
    assert (Path(done.checkpoint_dir) / "epoch-1" / "model.bin").read_text() == "weights\n"
    assert (Path(sibling.run_dir) / "output.log").read_text() == "trained\n"
    assert (Path(sibling.run_dir) / "status.json").exists()

    with pytest.raises(grpc.RpcError) as again:
        conductor.stub.DeleteJob(pb.DeleteJobRequest(job_id=job.id), timeout=10)
    assert again.value.code() == grpc.StatusCode.NOT_FOUND

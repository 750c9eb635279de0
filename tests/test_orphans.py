"""Runs the registry does not know are never shown as live after a restart.

A status.json that says QUEUED or RUNNING for a job the registry never held
(a submit whose write failed under an older conductor, a registry restored
from a backup) would show in the viewer as live forever. The conductor marks
such runs of its own FAILED at start, saying why, and leaves everything else
alone.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from baton.common.jobfile import read_job, write_job
from baton.conductor.orphans import ORPHAN_REASON
from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from tests.checks import wait_until
from tests.harness import InProcessConductor

S = job_pb2


def _run(status: Path, run_id: str, state: int, *, revision: int = 3, name: str = "ghost") -> Path:
    run_dir = status / "p" / "default" / name / run_id
    run_dir.mkdir(parents=True)
    job = job_pb2.Job(id=run_id, run_id=run_id, project="p", group="default", name=name, state=state)  # type: ignore[arg-type]
    job.revision = revision
    job.run_dir = str(run_dir)
    job.create_time.FromSeconds(1_700_000_000)
    write_job(run_dir / "status.json", job)
    (run_dir / "output.log").write_text("half a job\n")
    return run_dir


def test_unknown_live_runs_are_marked_failed_at_start_and_nothing_else_is_touched(
    conductor_factory: object, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    status = home / "status"
    phantom = _run(status, "20231114-221320-aaaaaa", S.JOB_STATE_QUEUED)
    running = _run(status, "20231114-221320-bbbbbb", S.JOB_STATE_RUNNING)
    ended = _run(status, "20231114-221320-cccccc", S.JOB_STATE_SUCCEEDED)
    # Written by another program: no revision, its own naming.
    foreign = _run(status, "their-run", S.JOB_STATE_RUNNING, revision=0, name="other")
    untouched = {p: (p / "status.json").read_bytes() for p in (ended, foreign)}

    c: InProcessConductor = conductor_factory(home=home)  # type: ignore[operator]
    fresh = c.submit("name: ghost\nproject: p\ncommand: sleep 0.2\n")
    for run_dir in (phantom, running):
        wait_until(lambda d=run_dir: read_job(d / "status.json").state == S.JOB_STATE_FAILED, str(run_dir))
        job = read_job(run_dir / "status.json")
        assert job.reason == ORPHAN_REASON
        assert job.HasField("end_time")
        assert (run_dir / "output.log").read_text() == "half a job\n", "the log is kept"
        with pytest.raises(grpc.RpcError) as missing:
            c.stub.GetJob(pb.GetJobRequest(job_id=job.id), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert {p: (p / "status.json").read_bytes() for p in untouched} == untouched
    # A job submitted while the sweep ran is its own, whatever its state.
    assert c.wait_ended(fresh.id).state == S.JOB_STATE_SUCCEEDED
    # Its status.json follows the registry, off the request path: a moment later, not at once.
    wait_until(
        lambda: read_job(Path(fresh.run_dir) / "status.json").state == S.JOB_STATE_SUCCEEDED,
        "the fresh job's status.json to say it ended",
    )

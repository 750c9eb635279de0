"""Bad input: rejected with the right code and a BadRequest naming the field; nothing written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from tests.checks import bad_request_fields, error_info_reason, files_under
from tests.harness import InProcessConductor, state

Factory = Callable[..., InProcessConductor]

# (id, request fields, the field the BadRequest must name)
BAD_SUBMISSIONS: list[tuple[str, dict[str, Any], str]] = [
    ("missing-name", {"spec_yaml": "command: echo hi\n"}, "spec.name"),
    ("name-dotdot", {"spec_yaml": "name: ../x\ncommand: echo hi\n"}, "spec.name"),
    ("name-space-upper", {"spec_yaml": "name: A B\ncommand: echo hi\n"}, "spec.name"),
    ("project-dotdot", {"spec_yaml": "name: ok\nproject: ..\ncommand: echo hi\n"}, "spec.project"),
    ("group-slash", {"spec_yaml": "name: ok\ngroup: a/b\ncommand: echo hi\n"}, "spec.group"),
    ("unknown-field", {"spec_yaml": "name: ok\ncommand: echo hi\ncolour: red\n"}, "spec.colour"),
    ("bad-duration", {"spec_yaml": "name: ok\ncommand: echo hi\nmax_duration: 5q\n"}, "spec.max_duration"),
    ("broken-yaml", {"spec_yaml": "name: ok\ncommand: [echo, hi\n"}, "spec_yaml"),
    ("broken-yaml-indent", {"spec_yaml": "name: ok\n  command: x\n bad: [\n"}, "spec_yaml"),
    ("empty-command", {"spec_yaml": "name: ok\ncommand: ''\n"}, "spec.command"),
    ("blank-command", {"spec_yaml": "name: ok\ncommand: '   '\n"}, "spec.command"),
    # `command:` with nothing after it is how YAML writes an empty command.
    ("null-command", {"spec_yaml": "name: ok\ncommand:\n"}, "spec.command"),
    (
        "empty-step-command",
        {"spec_yaml": "name: ok\nsteps:\n  - name: one\n    command: ''\n"},
        "spec.steps[0].command",
    ),
    ("proto-name-dotdot", {"spec": job_pb2.JobSpec(name="../x", command="echo hi")}, "spec.name"),
    ("proto-empty-command", {"spec": job_pb2.JobSpec(name="ok", command="")}, "spec.command"),
    ("no-spec-at-all", {}, "spec"),
    (
        "relative-workdir",
        {"spec_yaml": "name: ok\ncommand: echo hi\nworkdir: ../elsewhere\n"},
        "spec.workdir",
    ),
    ("unknown-executor", {"spec_yaml": "name: ok\ncommand: echo hi\nexecutor: nope\n"}, "spec.executor"),
    ("baton-env", {"spec_yaml": "name: ok\ncommand: echo hi\nenv:\n  BATON_JOB_ID: x\n"}, "spec.env"),
    ("start-step-too-large", {"spec_yaml": "name: ok\ncommand: echo hi\n", "start_step": 2}, "start_step"),
    ("dry-run-still-validates", {"spec_yaml": "name: A B\ncommand: echo hi\n", "dry_run": True}, "spec.name"),
]


def assert_nothing_written(c: InProcessConductor) -> None:
    assert files_under(c.status_dir) == [], "a rejected request must write nothing"
    assert files_under(c.home / "checkpoints") == []
    assert files_under(c.home / "state" / "launches") == []
    assert list(c.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs) == []
    info = c.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10)
    assert info.revision == 0 and list(info.job_counts) == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [(f, name) for _, f, name in BAD_SUBMISSIONS],
    ids=[case for case, _, _ in BAD_SUBMISSIONS],
)
def test_bad_submission_is_invalid_argument_naming_the_field(
    conductor: InProcessConductor, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        conductor.stub.SubmitJob(pb.SubmitJobRequest(**fields), timeout=10)

    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert field in bad_request_fields(err.value), (
        f"BadRequest should name {field!r}; it names {bad_request_fields(err.value)} ({err.value.details()})"
    )
    assert error_info_reason(err.value), "an ErrorInfo detail says what kind of error it is"
    assert err.value.details(), "the status message explains the problem to a person"
    assert_nothing_written(conductor)


def test_server_keeps_serving_after_every_bad_input(conductor: InProcessConductor) -> None:
    for _, fields, _ in BAD_SUBMISSIONS:
        with pytest.raises(grpc.RpcError) as err:
            conductor.stub.SubmitJob(pb.SubmitJobRequest(**fields), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_nothing_written(conductor)

    job = conductor.submit("name: fine\ncommand: echo still-serving\n")
    done = conductor.wait_ended(job.id)
    assert done.state == state("succeeded")
    assert (Path(done.run_dir) / "output.log").read_text() == "still-serving\n"


UNKNOWN_JOB_CALLS: dict[str, Callable[[Any, str], Any]] = {
    "GetJob": lambda s, i: s.GetJob(pb.GetJobRequest(job_id=i), timeout=10),
    "CancelJob": lambda s, i: s.CancelJob(pb.CancelJobRequest(job_id=i), timeout=10),
    "DeleteJob": lambda s, i: s.DeleteJob(pb.DeleteJobRequest(job_id=i), timeout=10),
    "PauseJob": lambda s, i: s.PauseJob(pb.PauseJobRequest(job_id=i), timeout=10),
    "ResumeJob": lambda s, i: s.ResumeJob(pb.ResumeJobRequest(job_id=i), timeout=10),
}


@pytest.mark.parametrize("job_id", ["20990101-000000-abcdef", "../../state/registry.db"])
@pytest.mark.parametrize("method", list(UNKNOWN_JOB_CALLS))
def test_unknown_job_is_not_found(conductor: InProcessConductor, method: str, job_id: str) -> None:
    real = conductor.submit("name: real\ncommand: 'true'\n")
    conductor.wait_ended(real.id)

    with pytest.raises(grpc.RpcError) as err:
        UNKNOWN_JOB_CALLS[method](conductor.stub, job_id)

    assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()
    assert conductor.get(real.id).state == state("succeeded"), "the other job is untouched"
    assert [j.id for j in conductor.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs] == [real.id]


@pytest.mark.parametrize("method", list(UNKNOWN_JOB_CALLS))
def test_empty_job_id_is_invalid_argument(conductor: InProcessConductor, method: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        UNKNOWN_JOB_CALLS[method](conductor.stub, "")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "job_id" in bad_request_fields(err.value)


def test_negative_cancel_grace_is_invalid_argument(conductor: InProcessConductor) -> None:
    job = conductor.submit("name: sleeper\ncommand: sleep 60\n")
    conductor.wait_for(job.id, "running")
    req = pb.CancelJobRequest(job_id=job.id)
    req.grace_period.seconds = -1
    with pytest.raises(grpc.RpcError) as err:
        conductor.stub.CancelJob(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "grace_period" in bad_request_fields(err.value)
    assert conductor.get(job.id).state == state("running")


def test_pause_of_a_job_that_is_not_running_is_failed_precondition(
    conductor_factory: Factory, tmp_path: Path
) -> None:
    c = conductor_factory(max_running=1)
    go = tmp_path / "go"
    blocker = c.submit(f"name: blocker\ncommand: while [ ! -e {go} ]; do sleep 0.05; done\n")
    queued = c.submit("name: queued\ncommand: 'true'\n")
    c.wait_for(blocker.id, "running")
    before = c.get(queued.id)
    assert before.state == state("queued")

    for mode in (job_pb2.PAUSE_MODE_UNSPECIFIED, job_pb2.PAUSE_MODE_SUSPEND, job_pb2.PAUSE_MODE_CHECKPOINT):
        with pytest.raises(grpc.RpcError) as err:
            c.stub.PauseJob(pb.PauseJobRequest(job_id=queued.id, mode=mode), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert c.get(queued.id).revision == before.revision, "a refused pause changes nothing"

    go.touch()
    ended = c.wait_ended(queued.id)
    with pytest.raises(grpc.RpcError) as err:
        c.stub.PauseJob(pb.PauseJobRequest(job_id=queued.id), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert c.get(queued.id) == ended


def test_resume_of_a_job_that_is_not_paused_is_failed_precondition(conductor: InProcessConductor) -> None:
    running = conductor.submit("name: running\ncommand: sleep 60\n")
    before = conductor.wait_for(running.id, lambda j: j.state == state("running") and j.external_id != "")
    with pytest.raises(grpc.RpcError) as err:
        conductor.stub.ResumeJob(pb.ResumeJobRequest(job_id=running.id), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert conductor.get(running.id).revision == before.revision

    ended = conductor.submit("name: ended\ncommand: 'true'\n")
    done = conductor.wait_ended(ended.id)
    with pytest.raises(grpc.RpcError) as err:
        conductor.stub.ResumeJob(pb.ResumeJobRequest(job_id=ended.id), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert conductor.get(ended.id) == done

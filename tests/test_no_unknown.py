"""No RPC answers UNKNOWN (issue 15 item 8): each hostile request found by fuzzing is
INVALID_ARGUMENT naming its field, an unforeseen failure is INTERNAL with an
error id its log line carries, and every error stays small.

Real servers on loopback port 0, called over real sockets; the raw-bytes cases
go through a generic channel method with identity serializers, as any client
that sends broken bytes would.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from google.protobuf import duration_pb2
from grpc_status import rpc_status
from structlog.testing import capture_logs

from baton.common import logs
from baton.common.jobs import JobFilter
from baton.common.paging import _fingerprint, encode_token
from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from baton.v1 import viewer_pb2 as vpb
from tests.checks import bad_request_fields, error_info
from tests.harness import InProcessConductor
from tests.viewer_harness import InProcessViewer


def _token(body: str) -> str:
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def _deep_token(scope: str, key: Any) -> str:
    """A token with the right fingerprint whose position is nested 100,000 deep."""
    deep = "[" * 100_000 + "1" + "]" * 100_000
    return _token(json.dumps({"f": _fingerprint(scope, key), "p": 0}).replace("0}", deep + "}"))


def _huge(seconds: int = 10**15) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds)


CONDUCTOR_CASES: list[tuple[str, str, Any, str]] = [
    # (id, method, request, the field the BadRequest must name)
    ("nested-page-token", "ListJobs", pb.ListJobsRequest(page_token=_token("[" * 100_000)), "page_token"),
    (
        "nested-position",
        "ListJobs",
        pb.ListJobsRequest(page_token=_deep_token("conductor.jobs", JobFilter().token_key())),
        "page_token",
    ),
    (
        "huge-int-position",
        "ListJobs",
        pb.ListJobsRequest(page_token=encode_token("conductor.jobs", JobFilter().token_key(), 10**300)),
        "page_token",
    ),
    (
        "cancel-grace-out-of-range",
        "CancelJob",
        pb.CancelJobRequest(job_id="x", grace_period=_huge()),
        "grace_period",
    ),
    ("clear-older-than-out-of-range", "ClearJobs", pb.ClearJobsRequest(older_than=_huge()), "older_than"),
    ("clear-unknown-state", "ClearJobs", pb.ClearJobsRequest(states=[99]), "states[0]"),  # type: ignore[list-item]
    ("pause-unknown-mode", "PauseJob", pb.PauseJobRequest(job_id="x", mode=77), "mode"),  # type: ignore[arg-type]
    (
        "memory-past-int64",
        "SubmitJob",
        pb.SubmitJobRequest(
            spec_yaml="name: a\ncommand: 'true'\nresources: {memory: 99999999999999999999999}\n"
        ),
        "spec.resources.memory",
    ),
    (
        "memory-size-past-float",
        "SubmitJob",
        pb.SubmitJobRequest(
            spec_yaml="name: a\ncommand: 'true'\nresources: {memory: '" + "9" * 400 + "G'}\n"
        ),
        "spec.resources.memory",
    ),
    (
        "gpus-past-int32",
        "SubmitJob",
        pb.SubmitJobRequest(spec_yaml="name: a\ncommand: 'true'\nresources: {gpus: 99999999999}\n"),
        "spec.resources.gpus",
    ),
    (
        "max-duration-inf",
        "SubmitJob",
        pb.SubmitJobRequest(spec_yaml="name: a\ncommand: 'true'\nmax_duration: .inf\n"),
        "spec.max_duration",
    ),
    (
        "max-duration-mapping",
        "SubmitJob",
        pb.SubmitJobRequest(spec_yaml="name: a\ncommand: 'true'\nmax_duration: {h: 1}\n"),
        "spec.max_duration",
    ),
    (
        "pause-grace-inf",
        "SubmitJob",
        pb.SubmitJobRequest(spec_yaml="name: a\ncommand: 'true'\npause: {grace: .inf}\n"),
        "spec.pause.grace",
    ),
    (
        "proto-max-duration-out-of-range",
        "SubmitJob",
        pb.SubmitJobRequest(spec=job_pb2.JobSpec(name="a", command="true", max_duration=_huge())),
        "spec.max_duration",
    ),
    (
        "proto-grace-out-of-range",
        "SubmitJob",
        pb.SubmitJobRequest(
            spec=job_pb2.JobSpec(name="a", command="true", pause=job_pb2.PausePolicy(grace=_huge(-(10**13))))
        ),
        "spec.pause.grace",
    ),
    (
        "deep-yaml",
        "SubmitJob",
        pb.SubmitJobRequest(spec_yaml="name: a\ncommand: 'true'\nenv: " + "[" * 50_000 + "]" * 50_000 + "\n"),
        "spec",
    ),
]


def _call(channel: grpc.Channel, service: str, method: str, request: Any) -> grpc.RpcError:
    """Call ``method`` with ``request`` (a message, or raw bytes); the error it answered."""
    raw = request if isinstance(request, bytes) else request.SerializeToString()
    rpc = channel.unary_stream if method in {"StreamLogs", "StreamLog", "WatchJobs"} else channel.unary_unary
    call = rpc(f"/baton.v1.{service}/{method}", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as err:
        result = call(raw, timeout=20)
        if not isinstance(result, bytes):
            list(result)
    return err.value


def assert_small(err: grpc.RpcError, sent: str = "") -> None:
    """The error's message is at most 1 KiB, its trailers at most 4 KiB, and it quotes at most 200 chars."""
    details = err.details() or ""
    assert len(details.encode()) <= 1024, len(details.encode())
    trailers = sum(len(k) + len(v) for k, v in err.trailing_metadata() or ())  # type: ignore[attr-defined]
    assert trailers <= 4096, trailers
    if len(sent) > 200:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
        blob = details + (status.SerializeToString().decode("utf-8", "replace") if status else "")
        for start in range(0, len(sent) - 200, 97):
            assert sent[start : start + 201] not in blob, "an error quotes more than 200 characters of input"


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [(m, r, f) for _, m, r, f in CONDUCTOR_CASES],
    ids=[c[0] for c in CONDUCTOR_CASES],
)
def test_conductor_answers_invalid_argument_naming_the_field(
    conductor: InProcessConductor, method: str, request_: Any, field: str
) -> None:
    with grpc.insecure_channel(conductor.address) as channel:
        err = _call(channel, "Conductor", method, request_)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert any(f == field or f.startswith(field) for f in bad_request_fields(err)), bad_request_fields(err)
    assert_small(err)


def test_pause_with_an_unknown_mode_of_a_running_job_is_invalid_argument(
    conductor: InProcessConductor,
) -> None:
    job = conductor.submit("name: sleeper\ncommand: sleep 60\n")
    conductor.wait_for(job.id, lambda j: j.state == job_pb2.JOB_STATE_RUNNING and j.external_id != "")
    with pytest.raises(grpc.RpcError) as err:
        conductor.stub.PauseJob(pb.PauseJobRequest(job_id=job.id, mode=77), timeout=10)  # type: ignore[arg-type]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value) == ["mode"]
    assert conductor.get(job.id).state == job_pb2.JOB_STATE_RUNNING


@pytest.fixture
def viewer(viewer_factory: Callable[..., InProcessViewer], tmp_path: Path) -> InProcessViewer:
    (tmp_path / "status").mkdir()
    (tmp_path / "ckpt").mkdir()
    return viewer_factory(status_dir=tmp_path / "status", checkpoints_dir=tmp_path / "ckpt")


VIEWER_CASES: list[tuple[str, str, Any, str]] = [
    (
        "nested-page-token",
        "ListJobs",
        vpb.ViewerListJobsRequest(page_token=_token("[" * 100_000)),
        "page_token",
    ),
    (
        "huge-int-position",
        "ListJobs",
        vpb.ViewerListJobsRequest(
            page_token=encode_token("viewer.jobs", JobFilter().token_key(), [10**400, "a", "b", "c", "d"])
        ),
        "page_token",
    ),
    (
        "huge-int-running",
        "ListRunningJobs",
        vpb.ListRunningJobsRequest(
            page_token=encode_token("viewer.running", ["", False, 300.0], [10**400, "a", "b", "c", "d"])
        ),
        "page_token",
    ),
    (
        "stale-after-out-of-range",
        "ListRunningJobs",
        vpb.ListRunningJobsRequest(stale_after=_huge()),
        "stale_after",
    ),
    (
        "stale-after-huge-nanos",
        "ListRunningJobs",
        vpb.ListRunningJobsRequest(stale_after=duration_pb2.Duration(seconds=1, nanos=2_000_000_000)),
        "stale_after",
    ),
]


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [(m, r, f) for _, m, r, f in VIEWER_CASES],
    ids=[c[0] for c in VIEWER_CASES],
)
def test_viewer_answers_invalid_argument_naming_the_field(
    viewer: InProcessViewer, method: str, request_: Any, field: str
) -> None:
    with grpc.insecure_channel(viewer.address) as channel:
        err = _call(channel, "Viewer", method, request_)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert field in bad_request_fields(err), bad_request_fields(err)
    assert_small(err)


@pytest.mark.parametrize("method", ["GetJob", "SubmitJob", "StreamLogs", "WatchJobs", "ClearJobs"])
def test_conductor_answers_undecodable_bytes_invalid_argument(
    conductor: InProcessConductor, method: str
) -> None:
    with grpc.insecure_channel(conductor.address) as channel:
        err = _call(channel, "Conductor", method, b"\xff\xff\xff\xff\x0f")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert bad_request_fields(err) == ["request"]
    assert error_info(err).reason == "REQUEST_UNDECODABLE"
    assert "baton.v1." in (err.details() or ""), "the message names the request type"
    assert conductor.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs == []


@pytest.mark.parametrize("method", ["ListJobs", "StreamLogs", "StreamLog", "ReadLog"])
def test_viewer_answers_undecodable_bytes_invalid_argument(viewer: InProcessViewer, method: str) -> None:
    with grpc.insecure_channel(viewer.address) as channel:
        # A string field (job_id, 1) holding bytes that are not UTF-8.
        err = _call(channel, "Viewer", method, b"\x0a\x02\xc3\x28")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert bad_request_fields(err) == ["request"]


def test_errors_quote_at_most_200_characters_and_stay_small(
    conductor: InProcessConductor, viewer: InProcessViewer
) -> None:
    long = "Q" * 5000 + "Z" * 5000
    cases: list[tuple[grpc.Channel, str, str, Any]] = []
    with grpc.insecure_channel(conductor.address) as c, grpc.insecure_channel(viewer.address) as v:
        for req in (
            pb.SubmitJobRequest(spec_yaml=f"name: {long}\ncommand: 'true'\n"),
            pb.SubmitJobRequest(spec_yaml=f"name: a\ncommand: 'true'\n{long}: 1\n"),
            pb.SubmitJobRequest(spec_yaml=f"name: a\ncommand: 'true'\nenv: {{{long}: 1}}\n"),
            pb.SubmitJobRequest(spec_yaml=f"name: a\ncommand: 'true'\nmax_duration: {long}\n"),
            pb.SubmitJobRequest(spec_yaml=f"name: a\ncommand: 'true'\npause: {{signal: {long}}}\n"),
            pb.SubmitJobRequest(spec_yaml=f"name: a\ncommand: 'true'\nresources: {{memory: {long}}}\n"),
            pb.SubmitJobRequest(
                spec_yaml="name: a\nsteps:\n" + "".join(f"  - {{name: {long}{i}}}\n" for i in range(50))
            ),
            pb.SubmitJobRequest(spec_yaml="name: a\ncommand: 'true'\n", resume_from=long),
        ):
            cases.append((c, "Conductor", "SubmitJob", req))
        cases.append((c, "Conductor", "GetJob", pb.GetJobRequest(job_id=long)))
        cases.append((v, "Viewer", "GetJob", vpb.ViewerGetJobRequest(job_id=long)))
        cases.append((v, "Viewer", "ListJobRuns", vpb.ListJobRunsRequest(project=long, group="g", name="n")))
        cases.append(
            (
                v,
                "Viewer",
                "GetCheckpoint",
                vpb.GetCheckpointRequest(project="p", group="g", name="n", suffix=long),
            )
        )
        for channel, service, method, req in cases:
            err = _call(channel, service, method, req)
            assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), err.details()
            assert_small(err, long)


def test_an_unforeseen_failure_is_internal_with_an_error_id_its_log_line_carries(
    conductor: InProcessConductor, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert conductor.running is not None

    def broken(*args: Any) -> Any:
        secret = "value-read-from-a-file"  # noqa: F841  (a local a traceback must not print)
        raise RuntimeError("injected")

    monkeypatch.setattr(conductor.running.lifecycle.book, "counts", broken)
    with capture_logs() as captured, pytest.raises(grpc.RpcError) as err:
        conductor.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    info = error_info(err.value)
    error_id = info.metadata["error_id"]
    assert error_id and error_id in (err.value.details() or "")
    assert "injected" not in (err.value.details() or ""), "the failure's text stays in the log"
    lines = [e for e in captured if e.get("error_id") == error_id]
    assert len(lines) == 1 and lines[0]["log_level"] == "error" and lines[0]["exc_info"], captured


def test_logged_tracebacks_never_print_local_values(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure()
    try:
        try:
            secret = "value-read-from-a-file"
            raise RuntimeError("failed" + "!" * (len(secret) > 0))
        except RuntimeError as exc:
            structlog.get_logger("t").error("rpc_failed", error_id="e1", exc_info=exc)
        out = capsys.readouterr().err
        record = json.loads(out.strip().splitlines()[-1])
        assert record["error_id"] == "e1" and record["exception"], record
        assert "value-read-from-a-file" not in out, "a traceback printed a local's value"
    finally:
        # Back to what tests/conftest.py sets.
        structlog.reset_defaults()
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__))

"""Guards people expect (issue 12, item 9), through real servers.

ClearJobs with no filter at all is refused unless the request says `all`, so
an empty request (a script with an unset variable, a bare `baton clear`)
never deletes every ended job by accident; `dry_run` shows what would go.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2

from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from tests.checks import bad_request_fields, error_info_reason
from tests.harness import InProcessConductor
from tests.services import spec

# ------------------------------------------------------------------ ClearJobs


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err  # type: ignore[attr-defined]
    return err


def listed(conductor: InProcessConductor) -> set[str]:
    return {j.id for j in conductor.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs}


def test_clear_jobs_wants_a_filter_or_all_and_previews_with_dry_run(
    conductor: InProcessConductor, tmp_path: Path
) -> None:
    stub = conductor.stub
    gate = tmp_path / "gate"
    ok = conductor.wait_ended(conductor.submit(spec("ok", "true", project="p1")).id)
    bad = conductor.wait_ended(conductor.submit(spec("bad", "exit 1", project="p2")).id)
    busy = conductor.submit(spec("busy", f"while [ ! -e {gate} ]; do sleep 0.05; done"))
    conductor.wait_for(busy.id, "RUNNING")
    everyone = {ok.id, bad.id, busy.id}

    # No filter: an empty project, and an age of zero, narrow nothing either.
    for request in (
        pb.ClearJobsRequest(),
        pb.ClearJobsRequest(project="", group="", name=""),
        pb.ClearJobsRequest(older_than=duration_pb2.Duration()),
        pb.ClearJobsRequest(dry_run=True),
    ):
        err = refused(lambda r=request: stub.ClearJobs(r, timeout=10))
        assert bad_request_fields(err) == ["all"], request
        assert error_info_reason(err) == "CLEAR_FILTER_REQUIRED"
        assert "all" in err.details()  # type: ignore[attr-defined]
    assert listed(conductor) == everyone

    # A dry run answers as the real call would, and deletes nothing.
    preview = stub.ClearJobs(pb.ClearJobsRequest(all=True, dry_run=True), timeout=10)
    assert set(preview.job_ids) == {ok.id, bad.id}
    assert preview.deleted_count == 2
    preview = stub.ClearJobs(pb.ClearJobsRequest(project="p1", dry_run=True), timeout=10)
    assert list(preview.job_ids) == [ok.id] and preview.deleted_count == 1
    # With `all`, a filter still decides ("all the failed ones").
    preview = stub.ClearJobs(
        pb.ClearJobsRequest(all=True, states=[job_pb2.JOB_STATE_FAILED], dry_run=True), timeout=10
    )
    assert list(preview.job_ids) == [bad.id]
    assert listed(conductor) == everyone
    assert Path(ok.run_dir).is_dir() and Path(bad.run_dir).is_dir()

    # `all` does not let a running job go: states are still checked.
    err = refused(
        lambda: stub.ClearJobs(pb.ClearJobsRequest(all=True, states=[job_pb2.JOB_STATE_RUNNING]), timeout=10)
    )
    assert bad_request_fields(err) == ["states[0]"]

    done = stub.ClearJobs(pb.ClearJobsRequest(all=True), timeout=30)
    assert set(done.job_ids) == {ok.id, bad.id} and done.deleted_count == 2
    assert listed(conductor) == {busy.id}
    gate.touch()
    conductor.wait_ended(busy.id)

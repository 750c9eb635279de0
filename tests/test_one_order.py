"""Both services list the same jobs in the same order: newest submission first.

The viewer used to sort by start time and the conductor by submission, so a
job that waited in the queue sat in different places in the two lists.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from baton.v1 import conductor_pb2 as cpb
from baton.v1 import viewer_pb2 as vpb
from baton.v1 import viewer_pb2_grpc
from tests.services import Stack, spec, stack


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Stack]:
    with stack(tmp_path / "home", max_running=1) as s:
        yield s


def test_both_services_list_jobs_newest_submission_first(services: Stack, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    hold = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    # One slot: the first holds it and the rest wait QUEUED, so start times
    # and submission times differ; one is cancelled before it ever starts.
    ids = []
    for name in ("first", "second", "third", "fourth"):
        command = hold if name == "first" else "true"
        ids.append(services.conductor.submit(spec(name, command, project="order")).id)
        time.sleep(0.01)  # distinct submission times
    services.conductor.stub.CancelJob(cpb.CancelJobRequest(job_id=ids[2]), timeout=10)
    gate.touch()
    done = {job_id: services.conductor.wait_ended(job_id) for job_id in ids}
    assert not done[ids[2]].HasField("start_time")

    newest_submission_first = ids[::-1]
    listed = services.conductor.stub.ListJobs(cpb.ListJobsRequest(project="order"), timeout=10)
    assert [j.id for j in listed.jobs] == newest_submission_first

    with grpc.insecure_channel(services.viewer_address) as channel:
        viewer = viewer_pb2_grpc.ViewerStub(channel)
        deadline = time.monotonic() + 10
        while True:
            seen = viewer.ListJobs(vpb.ViewerListJobsRequest(project="order"), timeout=10)
            if len(seen.jobs) == 4 and all(j.state == done[j.id].state for j in seen.jobs):
                break
            assert time.monotonic() < deadline, "the viewer did not catch up"
            time.sleep(0.05)
        assert [j.id for j in seen.jobs] == newest_submission_first
        recent = viewer.ListRecentJobs(vpb.ListRecentJobsRequest(project="order"), timeout=10)
        assert [j.id for j in recent.jobs] == newest_submission_first

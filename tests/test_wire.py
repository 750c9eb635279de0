"""Wire form put together by hand (common/wire.py, the snapshot's framing in
conductor/snapshots.py) parses to exactly what protobuf's own messages are."""

from __future__ import annotations

import pytest

from baton.common.wire import decode_jobs, varint
from baton.conductor import snapshots
from baton.conductor.snapshots import SnapshotBatches
from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2

S = job_pb2


def _job(i: int, extra: int = 0) -> job_pb2.Job:
    job = job_pb2.Job(id=f"job-{i}", project="p", name="n", state=S.JOB_STATE_SUCCEEDED, revision=i)
    job.reason = "x" * extra
    return job


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16_383, 16_384, 2**21, 2**35, 2**63 - 1])
def test_varint_is_protobufs_own(value: int) -> None:
    # A uint64 field's encoding is its tag, then the varint.
    encoded = job_pb2.JobEvent(revision=value).SerializeToString()
    assert encoded == b"\x08" + varint(value) if value else encoded == b""


def test_a_page_decodes_in_one_parse_and_a_bad_blob_makes_the_caller_look_closer() -> None:
    jobs = [_job(i, extra=i * 7_000) for i in range(5)]  # lengths past two varint bytes too
    blobs = [j.SerializeToString() for j in jobs]
    assert decode_jobs(blobs) == jobs
    assert decode_jobs([]) == []
    assert decode_jobs([*blobs[:2], b"\xff" * 40, *blobs[2:]]) is None


def test_snapshot_batches_parse_to_the_events_protobuf_would_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshots, "WATCH_BATCH_EVENTS", 4)
    monkeypatch.setattr(snapshots, "WATCH_BATCH_BYTES", 60_000)
    jobs = [_job(i, extra=35_000 if i in (5, 6) else 10) for i in range(11)]
    batches = SnapshotBatches(revision=9_999)
    sent = batches.add([j.SerializeToString() for j in jobs[:3]], flush=True)
    sent += batches.add([j.SerializeToString() for j in jobs[3:]])
    sent += batches.end()
    responses = [pb.WatchJobsResponse.FromString(r.data) for r in sent]
    assert all(r.type_name == "baton.v1.WatchJobsResponse" for r in sent)
    events = [e for r in responses for e in r.events]
    assert [e.job for e in events[:-1]] == jobs
    assert {(e.revision, e.type) for e in events[:-1]} == {(9_999, S.JOB_EVENT_TYPE_SNAPSHOT)}
    assert (events[-1].revision, events[-1].type, events[-1].HasField("job")) == (
        9_999, S.JOB_EVENT_TYPE_SNAPSHOT_END, False,
    )  # fmt: skip
    # Flushed after the first page; then cut at 4 events or before 60,000 bytes; the end closes the last.
    assert [len(r.events) for r in responses] == [3, 3, 4, 2]
    assert all(len(r.data) <= 60_000 for r in sent)

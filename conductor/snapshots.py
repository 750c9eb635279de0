"""A WatchJobs snapshot in wire form: SNAPSHOT events framed around the registry's stored Job bytes.

A snapshot's jobs go out as the registry stores them, never decoded and
encoded again: each page of stored bytes is framed as SNAPSHOT events
(``common.wire``) and cut into WatchJobsResponses of at most
WATCH_BATCH_EVENTS events or about WATCH_BATCH_BYTES, the last one closed by
SNAPSHOT_END. The framing runs wherever the pages are read (a registry reader
process, or a worker thread), never on the event loop.
"""

from __future__ import annotations

from typing import NamedTuple

from baton.common.wire import Encoded, length_delimited, varint_field
from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2

S = job_pb2
# The most events, and about the most bytes, one WatchJobsResponse carries.
WATCH_BATCH_EVENTS = 1_000
WATCH_BATCH_BYTES = 1 << 20
# Jobs read from the registry per trip while a snapshot is sent; the first
# trip is short, so the first events go out at once however large the history.
SNAPSHOT_PAGE = 1_000
SNAPSHOT_FIRST_PAGE = 100


class BatchLimits(NamedTuple):
    events: int
    size: int


def batch_limits() -> BatchLimits:
    """The limits in force now (read at each use: a test may set them lower)."""
    return BatchLimits(WATCH_BATCH_EVENTS, WATCH_BATCH_BYTES)


_EVENTS = pb.WatchJobsResponse.DESCRIPTOR.fields_by_name["events"].number
_EVENT = job_pb2.JobEvent.DESCRIPTOR.fields_by_name


class SnapshotBatches:
    """A snapshot's WatchJobsResponses in wire form, framed around stored Job bytes.

    Events at one revision are added a page at a time (``add`` blocks for a
    page's worth of bytes: call it in a worker thread) and cut into responses
    at WATCH_BATCH_EVENTS or WATCH_BATCH_BYTES; ``end`` closes the last one
    with the SNAPSHOT_END.
    """

    def __init__(self, revision: int, limits: BatchLimits | None = None) -> None:
        self._revision = revision
        # Given by a conductor to its reader process, so both cut at the same place.
        self._limits = limits or batch_limits()
        self._head = varint_field(_EVENT["revision"].number, revision) + varint_field(
            _EVENT["type"].number, S.JOB_EVENT_TYPE_SNAPSHOT
        )
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, blobs: list[bytes], flush: bool = False) -> list[Encoded]:
        """SNAPSHOT events for the serialized Jobs ``blobs``; the responses filled
        so far (with ``flush``, the one being filled too)."""
        out: list[Encoded] = []
        job_field = _EVENT["job"].number
        for blob in blobs:
            event = length_delimited(_EVENTS, self._head + length_delimited(job_field, blob))
            if self._parts and (
                len(self._parts) >= self._limits.events or self._size + len(event) > self._limits.size
            ):
                out.append(self._take())
            self._parts.append(event)
            self._size += len(event)
        if flush and self._parts:
            out.append(self._take())
        return out

    def end(self) -> list[Encoded]:
        """The rest, closed by the SNAPSHOT_END event."""
        end = job_pb2.JobEvent(revision=self._revision, type=S.JOB_EVENT_TYPE_SNAPSHOT_END)
        out = [self._take()] if len(self._parts) >= self._limits.events else []
        self._parts.append(length_delimited(_EVENTS, end.SerializeToString()))
        return [*out, self._take()]

    def _take(self) -> Encoded:
        response = Encoded(pb.WatchJobsResponse, b"".join(self._parts))
        self._parts, self._size = [], 0
        return response

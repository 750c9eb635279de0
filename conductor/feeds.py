"""The conductor's live feeds: job logs (StreamLogs) and job changes (WatchJobs).

Logs come from the follow both services share (``common.logfollow``), woken
by inotify for new bytes and by the lifecycle when the job changes state; a
followed log ends with a ``complete`` chunk carrying the job's outcome, or
NOT_FOUND when the job is deleted while it is read.

Changes come from one shared, bounded history of durable events (the newest
``ring_size`` in memory, older ones from the registry). Each subscriber keeps
only a cursor into it: a subscriber that stops reading costs nothing more than
its own stream's transport buffer, never slows the others, and when its
cursor falls out of the history it gets OUT_OF_RANGE telling it to take a new
snapshot. A watch sends what is ready together, many events per response:
one message per job would make a large snapshot as slow as the transport's
per-message cost. A snapshot's responses are framed around the registry's
stored bytes where the registry reads them (``conductor.snapshots``), never
decoded and encoded again on the event loop.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator
from pathlib import Path

from baton.common.errors import OutOfRange, invalid_field
from baton.common.filewatch import FileWatcher
from baton.common.jobs import JobFilter
from baton.common.layout import LOG_FILE
from baton.common.logfollow import log_chunks
from baton.common.metrics import ServiceMetrics
from baton.common.wire import Encoded
from baton.conductor import snapshots
from baton.conductor.lifecycle import Lifecycle
from baton.conductor.registry import Registry
from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2

S = job_pb2
DEFAULT_RING = 10_000
# Events fetched from the registry per trip when a subscriber catches up from disk.
CATCH_UP_BATCH = 1_000


class _Batch:
    """The WatchJobsResponse being filled, cut at WATCH_BATCH_EVENTS or WATCH_BATCH_BYTES."""

    def __init__(self) -> None:
        self.response = pb.WatchJobsResponse()
        self._bytes = 0

    def __bool__(self) -> bool:
        return len(self.response.events) > 0

    def add(self) -> job_pb2.JobEvent:
        return self.response.events.add()

    def full(self, last: job_pb2.JobEvent) -> bool:
        """Count ``last`` (just added); True when the batch should go now."""
        self._bytes += last.ByteSize()
        limit = snapshots.batch_limits()
        return len(self.response.events) >= limit.events or self._bytes >= limit.size

    def take(self) -> pb.WatchJobsResponse:
        response, self.response, self._bytes = self.response, pb.WatchJobsResponse(), 0
        return response


class Feeds:
    def __init__(
        self,
        lifecycle: Lifecycle,
        registry: Registry,
        *,
        heartbeat: float = 5.0,
        ring_size: int = DEFAULT_RING,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._lc = lifecycle
        self._log_bytes = metrics.log_bytes if metrics is not None else None
        self._registry = registry
        self._heartbeat = heartbeat
        self.watcher = FileWatcher()
        self._ring_size = ring_size
        self._ring: list[job_pb2.JobEvent] = []
        self._ring_revs: list[int] = []
        self._durable = lifecycle.book.revision
        self._changed = asyncio.Event()
        self._job_wakers: dict[str, set[asyncio.Event]] = {}
        # The newest version (None: deleted) of each job whose log is followed.
        self._followed: dict[str, job_pb2.Job | None] = {}
        self.active_log_streams = 0
        self.active_watches = 0
        lifecycle.add_listener(self._on_event)

    def close(self) -> None:
        self._lc.remove_listener(self._on_event)
        self.watcher.close()

    # ------------------------------------------------------------------ events

    def _on_event(self, event: job_pb2.JobEvent) -> None:
        # An event without a job settles its revision with nothing to send.
        if event.HasField("job"):
            self._ring.append(event)
            self._ring_revs.append(event.revision)
            if len(self._ring) > 2 * self._ring_size:
                del self._ring[: -self._ring_size]
                del self._ring_revs[: -self._ring_size]
        self._durable = max(self._durable, event.revision)
        # Wake every watcher at once: they each read the shared history.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if event.HasField("job"):
            wakers = self._job_wakers.get(event.job.id)
            if wakers:
                # A followed job may leave memory once ended: its last word is kept here.
                deleted = event.type == S.JOB_EVENT_TYPE_DELETED
                self._followed[event.job.id] = None if deleted else event.job
                for wake in wakers:
                    wake.set()

    async def _events_after(self, cursor: int) -> list[job_pb2.JobEvent]:
        """Durable events after ``cursor``, from memory or, when older, from disk."""
        if self._ring_revs and cursor >= self._ring_revs[0] - 1:
            i = bisect.bisect_right(self._ring_revs, cursor)
            return self._ring[i:]
        if cursor >= self._durable:
            return []
        oldest = await self._registry.oldest_revision()
        if oldest == 0:
            # Nothing logged at all: the revisions after the cursor carried no change.
            return []
        if cursor < oldest - 1:
            raise OutOfRange(
                f"revision {cursor} is no longer kept (oldest kept: {oldest}); "
                "watch again with since_revision 0 to take a new snapshot",
                reason="REVISION_COMPACTED",
                metadata={"oldest_revision": str(oldest)},
            )
        stored = await self._registry.events_after(cursor, CATCH_UP_BATCH)
        return [
            # A damaged row comes back as an empty Job: its revision goes out without one.
            job_pb2.JobEvent(revision=e.revision, job=e.job if e.job.id else None, type=e.type)  # type: ignore[arg-type]
            for e in stored
            if e.revision <= self._durable
        ]

    async def watch(self, since: int, flt: JobFilter) -> AsyncIterator[pb.WatchJobsResponse | Encoded]:
        """Changes after ``since`` in revision order, in batches; ``since`` 0 starts with a snapshot.

        Each response carries the events that are ready together (see
        WatchJobsResponse in conductor.proto): a snapshot in batches closed by
        SNAPSHOT_END, changes as they become durable, a HEARTBEAT alone when
        the stream has been quiet.
        """
        if since < 0:
            raise invalid_field("since_revision", "must not be negative")
        if since > self._lc.revision:
            raise OutOfRange(
                f"since_revision {since} is ahead of this conductor (revision {self._lc.revision}); "
                "watch again with since_revision 0",
                reason="REVISION_AHEAD",
            )
        self.active_watches += 1
        try:
            cursor = since
            if since == 0:
                # One consistent view of the registry, read a page at a time
                # off the event loop: it stands at one revision, and the
                # changes after it follow from the history, none lost or twice.
                snap = await self._registry.snapshot(flt)
                try:
                    cursor = snap.revision
                    # Framed around the stored bytes off the event loop: the
                    # loop only hands the finished responses to the transport.
                    async for response in snap.responses():
                        yield response
                finally:
                    await snap.close()
            loop = asyncio.get_running_loop()
            last_sent = loop.time()
            while True:
                changed = self._changed
                settled = self._durable
                events = await self._events_after(cursor)
                if events:
                    # Every change ready now goes out together, in batches.
                    batch = _Batch()
                    for ev in events:
                        cursor = ev.revision
                        if flt.matches(ev.job):
                            batch.response.events.append(ev)
                            if batch.full(ev):
                                last_sent = loop.time()
                                yield batch.take()
                    if batch:
                        last_sent = loop.time()
                        yield batch.take()
                    continue
                # Every durable change after the cursor has been sent: what is
                # left up to the durable revision settled with nothing to show
                # (a submission that storage refused), and is stepped over.
                cursor = max(cursor, settled)
                wait = last_sent + self._heartbeat - loop.time()
                if wait > 0:
                    try:
                        await asyncio.wait_for(changed.wait(), wait)
                        continue
                    except TimeoutError:
                        pass
                if self._durable > cursor:
                    continue  # changes arrived as the wait ended: they go first
                last_sent = loop.time()
                # Never ahead of what was sent: a client resumes from this revision.
                yield pb.WatchJobsResponse(
                    events=[job_pb2.JobEvent(revision=cursor, type=S.JOB_EVENT_TYPE_HEARTBEAT)]
                )
        finally:
            self.active_watches -= 1

    # ------------------------------------------------------------------ logs

    def _current(self, job_id: str, first: job_pb2.Job) -> job_pb2.Job | None:
        """A followed job as it stands: from memory, else its last event, else as the stream began."""
        job = self._lc.jobs_by_id(job_id)
        if job is not None:
            return job
        return self._followed.get(job_id, first)

    async def logs(
        self, job_id: str, offset: int, tail_lines: int, follow: bool
    ) -> AsyncIterator[job_pb2.LogChunk]:
        """A job's output.log as chunks; a followed log ends with a ``complete`` chunk or NOT_FOUND."""
        job = await self._lc.get(job_id)
        wake = asyncio.Event()
        self._job_wakers.setdefault(job_id, set()).add(wake)
        self.active_log_streams += 1
        try:
            async for chunk in log_chunks(
                Path(job.run_dir) / LOG_FILE,
                root=self._lc.layout.status_dir,
                offset=offset,
                tail_lines=tail_lines,
                follow=follow,
                watcher=self.watcher,
                wake=wake,
                heartbeat=self._heartbeat,
                current=lambda: self._current(job_id, job),
                subject=f"job {job_id}",
                metadata={"job_id": job_id},
            ):
                if self._log_bytes is not None:
                    self._log_bytes.inc(len(chunk.data))
                yield chunk
        finally:
            self.active_log_streams -= 1
            wakers = self._job_wakers.get(job_id)
            if wakers is not None:
                wakers.discard(wake)
                if not wakers:
                    del self._job_wakers[job_id]
                    self._followed.pop(job_id, None)

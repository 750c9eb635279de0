"""A job's log as a stream of LogChunks: the one answer behind the conductor's
StreamLogs and the viewer's StreamLogs.

The services differ only in how they find the job and what wakes a reader when
it changes; they pass those in. Everything else is decided here, once: the
start position (an offset or the last lines, refused with INVALID_ARGUMENT
naming the field when negative), the chunks from ``common.tailer``, and how a
followed log ends. It ends with the ``complete`` chunk carrying the job's
outcome, or, when the job is deleted while it is read, with NOT_FOUND and the
reason JOB_DELETED; never with a bare OK, which a client cannot tell from a
cut connection. That holds however far behind the reader is: the file may
vanish under a reader still sending older bytes, so the job's presence is
asked again before every batch and once more at the end. A log that leads
out of its tree (``root``) through a link is refused with FAILED_PRECONDITION
(reason PATH_OUTSIDE_TREE), even when the link appears mid-stream. An unfollowed read
promises no end: it sends the bytes there are and ends OK (after the
``complete`` chunk when the job has ended).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from baton.common.errors import NotFound, invalid_field
from baton.common.filewatch import FileWatcher
from baton.common.jobs import FINAL_STATES, complete_chunk
from baton.common.safeopen import UnsafePath, refusal
from baton.common.tailer import offset_of_last_lines, tail
from baton.v1 import job_pb2

JOB_DELETED = "JOB_DELETED"


async def log_chunks(
    path: Path,
    *,
    root: Path,
    offset: int,
    tail_lines: int,
    follow: bool,
    watcher: FileWatcher,
    wake: asyncio.Event,
    heartbeat: float,
    current: Callable[[], job_pb2.Job | None],
    subject: str,
    metadata: Mapping[str, str],
) -> AsyncIterator[job_pb2.LogChunk]:
    """The log at ``path`` (inside ``root``) from ``offset`` (or its last ``tail_lines`` lines).

    ``current`` reports the job as it stands now, None once it is gone; ``wake``
    is set by the caller whenever the job changes. ``subject`` ("job X", "run
    P/G/N/R") and ``metadata`` describe the job in the NOT_FOUND of a deletion.
    """
    if offset < 0:
        raise invalid_field("offset", "must not be negative")
    if tail_lines < 0:
        raise invalid_field("tail_lines", "must not be negative")
    if tail_lines > 0:
        try:
            offset = await asyncio.to_thread(offset_of_last_lines, path, root, tail_lines)
        except UnsafePath as exc:
            raise refusal(exc) from None

    def deleted() -> NotFound:
        return NotFound(
            f"{subject} was deleted while its log was read", reason=JOB_DELETED, metadata=dict(metadata)
        )

    gone = False

    async def ended() -> bool:
        nonlocal gone
        job = current()
        gone = job is None
        return job is None or job.state in FINAL_STATES

    pieces = tail(
        path, offset, root=root, follow=follow, watcher=watcher, ended=ended, wake=wake, heartbeat=heartbeat
    )
    try:
        async for piece in pieces:
            # The tailer may still hold the unlinked file open: stop rather than send a deleted job's bytes.
            if gone:
                raise deleted()
            yield job_pb2.LogChunk(offset=piece.offset, data=piece.data, truncated=piece.truncated)
            offset = piece.offset + len(piece.data)
    except UnsafePath as exc:
        raise refusal(exc) from None
    # A followed tail returns only once the job has ended or gone; ended jobs never run again.
    job = current()
    if job is None:
        if follow:
            raise deleted()
        return
    if job.state in FINAL_STATES:
        yield complete_chunk(offset, job)

"""Server streams that survive a dropped connection.

A ``ResumableStream`` remembers where it stands (a log's next byte, a watch's
last revision) and, when the connection drops (UNAVAILABLE, a connection cut,
no message at all for ``idle_timeout``, or a followed log that ends without
its ``complete`` chunk), reopens the stream from there with backoff. The
caller sees every byte and every event once: heartbeats are consumed here
(a watch hands them over only when asked, with ``progress``), overlapping
bytes are trimmed and repeated revisions skipped. Like Armada's
resilient event stream, but exact.

It gives up with ``Unavailable`` once the service has been unreachable for
``RetryPolicy.reconnect_for`` seconds, and raises any other error as it
comes (``NotFound`` for a job deleted meanwhile, ``OutOfRange`` for a watch
whose revision is no longer kept).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

import grpc

from baton.client.connection import Connection
from baton.client.errors import Unavailable, unreachable_message
from baton.v1 import job_pb2

T = TypeVar("T")

# Codes after which a stream is opened again from where it stood. CANCELLED
# comes from a server that stopped mid-stream (our own cancellations never
# reach here: they raise asyncio.CancelledError).
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}


class ResumableStream(Generic[T]):
    """An async iterator over a server stream that reconnects by itself.

    Use it with ``async for``, and ``aclose()`` (or ``async with``) to stop
    early. ``reconnects`` counts the times it had to reopen the stream.
    """

    def __init__(self, conn: Connection, method: str) -> None:
        self._conn = conn
        self._method = method
        self._call: Any = None
        self._pending: deque[T] = deque()
        self._finished = False
        self._failing_since: float | None = None
        self._waits: Iterator[float] = conn.settings.retry.backoffs()
        self.reconnects = 0

    # What a kind of stream decides.
    def _request(self) -> Any:
        """The request that opens the stream from where it stands now."""
        raise NotImplementedError

    def _accept(self, message: Any) -> list[T]:
        """Take one message in; return what the caller should see of it."""
        raise NotImplementedError

    def _ends_cleanly(self) -> bool:
        """Whether a stream that ended without error has really finished."""
        return False

    def _restart(self) -> None:
        """Forget what a broken connection left half done (before reopening)."""

    # The iterator.
    def __aiter__(self) -> ResumableStream[T]:
        return self

    async def __aenter__(self) -> ResumableStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def __anext__(self) -> T:
        while not self._pending:
            if self._finished:
                raise StopAsyncIteration
            message = await self._read()
            if message is None:
                if self._ends_cleanly():
                    self._finished = True
                else:
                    await self._reconnect("the stream ended early")
                continue
            self._pending.extend(self._accept(message))
        return self._pending.popleft()

    async def aclose(self) -> None:
        """Stop reading and cancel the call."""
        self._finished = True
        self._pending.clear()
        self._cancel()

    def _cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def _read(self) -> Any:
        """The next message, or None at a clean end; transient failures are ridden out."""
        while True:
            if self._call is None:
                self._call = getattr(self._conn.stub, self._method)(
                    self._request(), metadata=self._conn.metadata
                )
            try:
                message = await asyncio.wait_for(self._call.read(), self._conn.settings.idle_timeout)
            except TimeoutError:
                await self._reconnect(f"no message for {self._conn.settings.idle_timeout:g} s")
                continue
            except grpc.aio.AioRpcError as err:
                if err.code() not in _TRANSIENT:
                    self._call = None
                    raise self._conn.error(err) from None
                await self._reconnect(err.details() or err.code().name)
                continue
            if message is grpc.aio.EOF:
                self._call = None
                return None
            self._failing_since = None
            self._waits = self._conn.settings.retry.backoffs()
            return message

    async def _reconnect(self, why: str) -> None:
        """Drop the call, wait a backoff, and let the next read reopen it (or give up)."""
        self._cancel()
        self._restart()
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since > self._conn.settings.retry.reconnect_for:
            raise Unavailable(
                unreachable_message(self._conn.SERVICE, self._conn.address, why),
                code=grpc.StatusCode.UNAVAILABLE,
                address=self._conn.address,
                service=self._conn.SERVICE,
            )
        self.reconnects += 1
        await asyncio.sleep(next(self._waits))


class LogStream(ResumableStream[job_pb2.LogChunk]):
    """A job's log as ``LogChunk``s: data chunks in order, each byte once.

    Also yielded: a chunk with ``truncated`` set when the log shrank under the
    reader (reading goes on from its ``offset``), and, last, the ``complete``
    chunk with the job's final state, exit code and signal (kept in
    ``result``). Heartbeats are not yielded. ``offset`` is the next byte to come.
    """

    def __init__(
        self,
        conn: Connection,
        method: str,
        request_type: Any,
        ref: Mapping[str, Any],
        *,
        offset: int = 0,
        tail_lines: int = 0,
        follow: bool = False,
    ) -> None:
        super().__init__(conn, method)
        self._request_type = request_type
        self._ref = ref
        self._tail_lines = tail_lines
        self._follow = follow
        self._positioned = tail_lines <= 0
        self.offset = offset
        self.result: job_pb2.LogChunk | None = None

    def _request(self) -> Any:
        if self._positioned:
            return self._request_type(**self._ref, offset=self.offset, follow=self._follow)
        return self._request_type(**self._ref, tail_lines=self._tail_lines, follow=self._follow)

    def _ends_cleanly(self) -> bool:
        # A followed log is over only when its `complete` chunk came.
        return not self._follow

    def _accept(self, chunk: job_pb2.LogChunk) -> list[job_pb2.LogChunk]:
        if chunk.complete:
            self.result = chunk
            self._finished = True
            return [chunk]
        if chunk.truncated or not self._positioned:
            # Where the reading (re)starts; the first answer to a tail request says it.
            self.offset = chunk.offset
            self._positioned = True
            if chunk.truncated:
                return [chunk]
        if not chunk.data:
            return []  # a heartbeat
        end = chunk.offset + len(chunk.data)
        if end <= self.offset:
            return []  # sent before the reconnect already
        if chunk.offset < self.offset:
            trimmed = job_pb2.LogChunk()
            trimmed.CopyFrom(chunk)
            trimmed.data = chunk.data[self.offset - chunk.offset :]
            trimmed.offset = self.offset
            chunk = trimmed
        self.offset = end
        return [chunk]


class WatchStream(ResumableStream[job_pb2.JobEvent]):
    """Job changes as ``JobEvent``s in revision order, each once.

    The server sends events in batches (``WatchJobsResponse``); they are
    handed over one by one. From revision 0 the watch begins with a snapshot:
    one SNAPSHOT event per matching job, handed over whole once the server
    has sent all of it (its SNAPSHOT_END came), so a reconnect in the middle
    never repeats a job; ``snapshot_done`` is then true. Then UPDATED and
    DELETED events follow. ``revision`` is the last revision seen, from any
    event, heartbeats and the snapshot's end included; reconnects resume
    after it. SNAPSHOT_END and HEARTBEAT events (no job) are yielded only
    with ``progress``.
    """

    def __init__(
        self,
        conn: Connection,
        method: str,
        request_type: Any,
        filters: dict[str, str],
        since_revision: int,
        *,
        progress: bool = False,
    ) -> None:
        super().__init__(conn, method)
        self._request_type = request_type
        self._filters = filters
        self._progress = progress
        self.revision = since_revision
        self.snapshot_done = since_revision > 0
        self._snapshot: list[job_pb2.JobEvent] = []

    def _request(self) -> Any:
        since = self.revision if self.snapshot_done else 0
        return self._request_type(since_revision=since, **self._filters)

    def _restart(self) -> None:
        self._snapshot.clear()

    def _accept(self, response: Any) -> list[job_pb2.JobEvent]:
        out: list[job_pb2.JobEvent] = []
        for event in response.events:
            out.extend(self._event(event))
        return out

    def _event(self, event: job_pb2.JobEvent) -> list[job_pb2.JobEvent]:
        kind = event.type
        if kind == job_pb2.JOB_EVENT_TYPE_SNAPSHOT:
            if not self.snapshot_done:
                self._snapshot.append(event)
            return []
        if kind == job_pb2.JOB_EVENT_TYPE_SNAPSHOT_END:
            if self.snapshot_done:
                return []
            self.snapshot_done = True
            self.revision = event.revision
            snapshot, self._snapshot = self._snapshot, []
            return [*snapshot, event] if self._progress else snapshot
        if kind == job_pb2.JOB_EVENT_TYPE_HEARTBEAT:
            self.revision = max(self.revision, event.revision)
            return [event] if self._progress else []
        if kind not in (job_pb2.JOB_EVENT_TYPE_UPDATED, job_pb2.JOB_EVENT_TYPE_DELETED):
            return []  # a kind this client does not know: nothing to act on
        if not self.snapshot_done or event.revision <= self.revision:
            return []  # seen before the reconnect
        self.revision = event.revision
        return [event]


async def drain(stream: ResumableStream[T]) -> list[T]:
    """Everything a stream yields, in a list (for streams that end by themselves)."""
    items: list[T] = []
    try:
        async for item in stream:
            items.append(item)
    finally:
        with contextlib.suppress(Exception):
            await stream.aclose()
    return items

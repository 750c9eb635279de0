"""Server-sent events (and NDJSON) for the streaming RPCs.

How a stream is framed depends only on the message it carries, so any RPC
that streams ``LogChunk`` or ``WatchJobsResponse`` behaves the same way:

- ``LogChunk``: one event per chunk with data; ``data`` is the chunk in proto3
  JSON (its bytes base64) and ``id`` the byte offset after it, so
  ``Last-Event-ID`` resumes exactly there. Heartbeats become SSE comments. The
  closing chunk is ``event: end``, after which the gateway closes the stream.
- ``WatchJobsResponse``: one event per JobEvent, ``id`` its revision. SNAPSHOT
  events carry no ``id``: they share the snapshot's revision, and a browser
  that reconnected in the middle of a snapshot must start a new one rather
  than resume after a snapshot it never finished. HEARTBEATs are comments.

A reconnecting browser resends its URL; ``Last-Event-ID`` then wins over the
URL's ``offset``/``tail_lines`` or ``since_revision`` (``resume``).
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf import message

from baton.common.errors import invalid_field
from baton.gateway.transcode import dumps
from baton.v1 import conductor_pb2, job_pb2

CONTENT_TYPE = "text/event-stream"


def frame(data: str, *, event_id: str | None = None, event: str | None = None) -> bytes:
    """One SSE event. ``data`` is one line of JSON, so it needs one ``data:`` field."""
    head = (f"event: {event}\n" if event else "") + (f"id: {event_id}\n" if event_id is not None else "")
    return f"{head}data: {data}\n\n".encode()


def comment(text: str) -> bytes:
    """An SSE comment: keeps proxies and browsers from timing a quiet stream out."""
    return f": {text}\n\n".encode()


def resume(request: message.Message, last_event_id: str) -> None:
    """Point ``request`` just after the event ``last_event_id`` names."""
    try:
        position = int(last_event_id)
        if position < 0:
            raise ValueError
    except ValueError:
        problem = f"must be a byte offset or a revision, not {last_event_id[:64]!r}"
        raise invalid_field("Last-Event-ID", problem) from None
    fields = request.DESCRIPTOR.fields_by_name
    if "since_revision" in fields:
        request.since_revision = position  # type: ignore[attr-defined]
    elif "offset" in fields:
        request.offset = position  # type: ignore[attr-defined]
        if "tail_lines" in fields:
            request.tail_lines = 0  # type: ignore[attr-defined]


class Framer:
    """Turns the messages of one stream into SSE bytes; ``done`` once the stream's last event is out."""

    def __init__(self) -> None:
        self.done = False

    def events(self, msg: message.Message) -> Iterator[bytes]:
        if isinstance(msg, job_pb2.LogChunk):
            yield from self._log(msg)
        elif isinstance(msg, conductor_pb2.WatchJobsResponse):
            yield from self._watch(msg)
        else:
            yield frame(dumps(msg))

    def _log(self, chunk: job_pb2.LogChunk) -> Iterator[bytes]:
        if chunk.complete:
            self.done = True
            yield frame(dumps(chunk), event="end", event_id=str(chunk.offset))
        elif chunk.data or chunk.truncated:
            yield frame(dumps(chunk), event_id=str(chunk.offset + len(chunk.data)))
        else:
            yield comment(f"heartbeat offset={chunk.offset}")

    def _watch(self, response: conductor_pb2.WatchJobsResponse) -> Iterator[bytes]:
        for event in response.events:
            if event.type == job_pb2.JOB_EVENT_TYPE_HEARTBEAT:
                yield comment(f"heartbeat revision={event.revision}")
            elif event.type == job_pb2.JOB_EVENT_TYPE_SNAPSHOT:
                yield frame(dumps(event))
            else:
                yield frame(dumps(event), event_id=str(event.revision))

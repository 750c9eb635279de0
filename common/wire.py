"""Protobuf wire form put together by hand, where it saves a parse and a copy per message.

The registry stores each Job as its serialized bytes. Turning a page of them
into messages one ``FromString`` at a time costs about four times what one
parse of the whole page does, and a WatchJobs snapshot that decodes each job,
copies it into an event and serializes the response again spends most of its
time undoing and redoing the same bytes. Two shortcuts, both exact:

- ``decode_jobs`` parses a page of stored Jobs in one call, by framing them as
  the repeated ``jobs`` field of a ListJobsResponse;
- ``Encoded`` carries a response already in wire form (snapshot events framed
  around the stored bytes, in a worker thread), which ``common.rpc``'s
  serializer sends as it is.

Both rely only on the wire format's rule that a length-delimited field is a
tag, a varint length and the bytes, and that repeated fields concatenate.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import message

from baton.v1 import conductor_pb2, job_pb2

_LEN = 2  # the wire type of a length-delimited field
_VARINT = 0


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Every one- and two-byte varint, made once: lengths and tags are nearly all
# below 16,384, and a lookup costs a tenth of the loop above.
_SMALL = [_varint(i) for i in range(1 << 14)]


def varint(value: int) -> bytes:
    """``value`` (≥ 0) as a base-128 varint."""
    return _SMALL[value] if value < len(_SMALL) else _varint(value)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    """Field ``number`` holding ``payload`` (a message, bytes or a string)."""
    return tag(number, _LEN) + varint(len(payload)) + payload


def varint_field(number: int, value: int) -> bytes:
    return tag(number, _VARINT) + varint(value)


_JOBS_FIELD = conductor_pb2.ListJobsResponse.DESCRIPTOR.fields_by_name["jobs"].number


def decode_jobs(blobs: Sequence[bytes]) -> list[job_pb2.Job] | None:
    """Each of ``blobs`` as a Job, parsed in one call; None when any does not decode.

    On None the caller decodes them one by one to find the bad one: one bad
    blob must not hide the others.
    """
    frame = tag(_JOBS_FIELD, _LEN)
    try:
        page = conductor_pb2.ListJobsResponse.FromString(
            b"".join(frame + varint(len(b)) + b for b in blobs)
        )
    except message.DecodeError:
        return None
    return list(page.jobs)


class Encoded:
    """A response message already in wire form, sent as it is by ``common.rpc``'s serializer."""

    __slots__ = ("data", "type_name")

    def __init__(self, cls: type[message.Message], data: bytes) -> None:
        self.type_name = cls.DESCRIPTOR.full_name
        self.data = data
